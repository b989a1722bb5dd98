"""The update supervisor: rolling updates and rollbacks (SwarmKit's updater).

One Updater per service replaces the service's out-of-date slots, `Parallelism` at a
time (0: all at once), waiting `Delay` between them, in `stop-first` or `start-first`
order. A new task that fails before it runs, or within `Monitor` after, counts as a
failure; when failures / slots exceed `MaxFailureRatio`, `FailureAction` applies:
pause, continue, or rollback (a failing rollback pauses). After the last slot the
updater watches one more `Monitor` period, then marks the update completed.
See docs/update.md.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable

import msgspec

from shoal.manager.loops import log_failure
from shoal.manager.orchestrator.task import Slot, create_task, is_runnable, set_desired
from shoal.manager.store import Store, Tx
from shoal.types.base import format_time, now_ns
from shoal.types.service import Service, UpdateConfig, UpdateStatus
from shoal.types.task import Task, TaskState

DEFAULT_PARALLELISM = 1
DEFAULT_DELAY_NS = 0
DEFAULT_MONITOR_NS = 5_000_000_000
DEFAULT_FAILURE_ACTION = "pause"
DEFAULT_MAX_FAILURE_RATIO = 0.0
DEFAULT_ORDER = "stop-first"
# How often the updater re-reads task states while it waits on them.
POLL_S = 0.05

UPDATING = "updating"
PAUSED = "paused"
COMPLETED = "completed"
ROLLBACK_STARTED = "rollback_started"
ROLLBACK_PAUSED = "rollback_paused"
ROLLBACK_COMPLETED = "rollback_completed"
IN_PROGRESS = (UPDATING, ROLLBACK_STARTED)

# Writes one new task for a slot in a transaction, with the desired state given.
MakeTask = Callable[[Tx, Service, Slot, TaskState], Task]


def effective_config(cfg: UpdateConfig | None) -> UpdateConfig:
    cfg = cfg or UpdateConfig()
    return UpdateConfig(
        parallelism=DEFAULT_PARALLELISM if cfg.parallelism is None else cfg.parallelism,
        delay=cfg.delay or DEFAULT_DELAY_NS,
        failure_action=cfg.failure_action or DEFAULT_FAILURE_ACTION,
        monitor=DEFAULT_MONITOR_NS if cfg.monitor is None else cfg.monitor,
        max_failure_ratio=cfg.max_failure_ratio or DEFAULT_MAX_FAILURE_RATIO,
        order=cfg.order or DEFAULT_ORDER,
    )


class Updater:
    """Brings the dirty slots of one service to its current spec version."""

    def __init__(
        self,
        store: Store,
        service: Service,
        spec_version: int,
        slots: list[Slot],
        make_task: MakeTask,
    ) -> None:
        self._store = store
        self.service = service
        self.spec_version = spec_version
        self.slots = slots
        self._make_task = make_task
        rollback = (
            service.update_status is not None and service.update_status.state == ROLLBACK_STARTED
        )
        self.rollback = rollback
        self.config = effective_config(
            service.spec.rollback_config if rollback else service.spec.update_config
        )
        self.failed_tasks: list[str] = []
        # new task id -> monotonic time it reached RUNNING (None: not yet)
        self._new_tasks: dict[str, float | None] = {}
        # slots this update replaces, with those an interrupted run already replaced
        self._total = len(slots)

    def _resumed(self) -> list[str]:
        """The new tasks an earlier run of this update made before the daemon stopped
        (made from this spec version since the update started, still desired): this run
        watches them as its own."""
        status = self.service.update_status
        if status is None or not status.started_at or status.state not in IN_PROGRESS:
            return []
        view = self._store.view()
        return [
            t.id
            for t in view.tasks_of_service(self.service.id)
            if view.task_meta(t.id).spec_version == self.spec_version
            and is_runnable(t)
            and t.created_at >= status.started_at
        ]

    async def run(self) -> None:
        resumed = self._resumed()
        for tid in resumed:
            self._new_tasks[tid] = None
        self._total += len(resumed)
        await self._set_status(
            ROLLBACK_STARTED if self.rollback else UPDATING,
            "rollback in progress" if self.rollback else "update in progress",
            start=not resumed,
        )
        parallelism = self.config.parallelism or len(self.slots)
        queue: asyncio.Queue[Slot] = asyncio.Queue()
        for s in self.slots:
            queue.put_nowait(s)
        stop = asyncio.Event()

        async def worker() -> None:
            while not queue.empty() and not stop.is_set():
                slot = queue.get_nowait()
                await self._update_slot(slot)
                if self._failure_exceeded():
                    stop.set()
                    return
                if self.config.delay:
                    await asyncio.sleep(self.config.delay / 1e9)

        await asyncio.gather(
            *(self._wait_running(tid) for tid in resumed),
            *(worker() for _ in range(max(1, parallelism))),
        )
        if not stop.is_set():
            # keep watching the new tasks for one monitor period (SwarmKit: or Delay+1s)
            monitor_s = (self.config.monitor or 0) / 1e9
            deadline = time.monotonic() + monitor_s
            while time.monotonic() < deadline and not self._failure_exceeded():  # noqa: ASYNC110
                await asyncio.sleep(min(POLL_S * 4, max(0.0, deadline - time.monotonic())))
        if self._failure_exceeded():
            await self._on_failure()
            return
        if self.rollback:
            await self._set_status(ROLLBACK_COMPLETED, "rollback completed", done=True)
        else:
            await self._set_status(COMPLETED, "update completed", done=True)

    # one slot ----------------------------------------------------------------------------
    async def _update_slot(self, slot: Slot) -> None:
        order = self.config.order
        view = self._store.view()
        service = view.get_service(self.service.id)
        if service is None or view.service_meta(service.id).spec_version != self.spec_version:
            return
        old = [t for t in slot if is_runnable(t)]
        if order == "start-first":
            new = await self._store.update(
                lambda tx: self._make_task(tx, service, slot, TaskState.RUNNING)
            )
            self._new_tasks[new.id] = None
            await self._wait_running(new.id)
            await self._store.update(lambda tx: self._shutdown(tx, old))
        else:

            def swap(tx: Tx) -> Task:
                created = self._make_task(tx, service, slot, TaskState.READY)
                self._shutdown(tx, old)
                return created

            # The restart supervisor starts the held task once the old one stopped.
            created = await self._store.update(swap)
            self._new_tasks[created.id] = None
            await self._wait_running(created.id)

    @staticmethod
    def _shutdown(tx: Tx, tasks: list[Task]) -> None:
        for t in tasks:
            cur = tx.get_task(t.id)
            if cur is not None and is_runnable(cur):
                tx.update(set_desired(cur, TaskState.SHUTDOWN))

    async def _wait_running(self, task_id: str) -> None:
        while True:
            t = self._store.view().get_task(task_id)
            if t is None:
                return
            if t.state == TaskState.RUNNING:
                self._new_tasks[task_id] = time.monotonic()
                return
            if t.state > TaskState.RUNNING:
                self._record_failure(task_id)
                return
            await asyncio.sleep(POLL_S)

    # failures ----------------------------------------------------------------------------
    def _record_failure(self, task_id: str) -> None:
        if task_id not in self.failed_tasks:
            self.failed_tasks.append(task_id)

    def _scan_failures(self) -> None:
        monitor_s = (self.config.monitor or 0) / 1e9
        view = self._store.view()
        now = time.monotonic()
        for tid, running_since in self._new_tasks.items():
            t = view.get_task(tid)
            if t is None or t.state <= TaskState.RUNNING or t.desired > TaskState.RUNNING:
                continue
            if running_since is None or now - running_since <= monitor_s:
                self._record_failure(tid)

    def _failure_exceeded(self) -> bool:
        if self.config.failure_action == "continue":
            return False
        self._scan_failures()
        if not self.failed_tasks:
            return False
        ratio = self.config.max_failure_ratio or 0.0
        return len(self.failed_tasks) / max(1, self._total) > ratio

    async def _on_failure(self) -> None:
        task = self.failed_tasks[0]
        reason = f"due to failure or early termination of task {task}"
        if self.rollback:
            await self._set_status(ROLLBACK_PAUSED, f"rollback paused {reason}")
        elif self.config.failure_action == "rollback":
            await self._store.update(
                lambda tx: rollback_service(tx, self.service.id, f"update rolled back {reason}")
            )
        else:
            await self._set_status(PAUSED, f"update paused {reason}")

    async def _set_status(
        self, state: str, message: str, start: bool = False, done: bool = False
    ) -> None:
        def write(tx: Tx) -> None:
            s = tx.get_service(self.service.id)
            if s is None or tx.service_meta(s.id).spec_version != self.spec_version:
                return
            prev = s.update_status or UpdateStatus()
            now = format_time(now_ns())
            status = UpdateStatus(
                state=state,
                started_at=now if start or not prev.started_at else prev.started_at,
                completed_at=now if done else None,
                message=message,
            )
            if status != s.update_status:
                tx.update(msgspec.structs.replace(s, update_status=status))

        await self._store.update(write)


def rollback_service(tx: Tx, service_id: str, message: str) -> Service | None:
    """Swap Spec and PreviousSpec and mark the service rolling back (also used by the
    API's `?rollback=previous`)."""
    s = tx.get_service(service_id)
    if s is None or s.previous_spec is None:
        return None
    status = UpdateStatus(state=ROLLBACK_STARTED, started_at=format_time(now_ns()), message=message)
    return tx.update(
        msgspec.structs.replace(
            s, spec=s.previous_spec, previous_spec=s.spec, update_status=status
        ),
        msgspec.structs.replace(tx.service_meta(s.id), spec_version=tx.index),
    )


class UpdateSupervisor:
    """Runs at most one Updater per service; a newer spec cancels the running one."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._running: dict[str, tuple[int, asyncio.Task[None]]] = {}

    def update(
        self, service: Service, spec_version: int, slots: list[Slot], make_task: MakeTask
    ) -> None:
        """Run `service`'s updater for `spec_version` (its spec version in the store)."""
        current = self._running.get(service.id)
        if current is not None:
            version, task = current
            if version == spec_version and not task.done():
                return
            task.cancel()
        status = service.update_status.state if service.update_status else None
        if status in (PAUSED, ROLLBACK_PAUSED):
            return
        updater = Updater(self._store, service, spec_version, slots, make_task)
        task = asyncio.get_running_loop().create_task(updater.run(), name=f"updater-{service.id}")
        task.add_done_callback(log_failure)
        self._running[service.id] = (spec_version, task)
        task.add_done_callback(functools.partial(self._done, service.id))

    def _done(self, service_id: str, task: asyncio.Task[None]) -> None:
        cur = self._running.get(service_id)
        if cur is not None and cur[1] is task:
            del self._running[service_id]

    def is_updating(self, service_id: str) -> bool:
        return service_id in self._running

    def interrupted(self, service: Service) -> bool:
        """The service says an update (or rollback) is in progress but no updater runs
        it: the daemon stopped during it. Reconciling resumes it, even when no slot is
        left out of date (the last new tasks may still wait to start)."""
        status = service.update_status.state if service.update_status else None
        return status in IN_PROGRESS and not self.is_updating(service.id)

    def cancel(self, service_id: str) -> None:
        cur = self._running.pop(service_id, None)
        if cur is not None:
            cur[1].cancel()

    def stop(self) -> None:
        for _, t in self._running.values():
            t.cancel()
        self._running.clear()

    def statistics(self) -> dict[str, int]:
        return {"updates_running": len(self._running)}


def default_make_task(tx: Tx, service: Service, slot: Slot, desired: TaskState) -> Task:
    """Write a replacement task for a replicated slot, or a global task's node."""
    sample = slot[0] if slot else None
    if sample is not None and sample.slot is None:
        return create_task(tx, service, None, sample.node_id, desired)
    return create_task(tx, service, sample.slot if sample else None, desired=desired)
