"""The update supervisor: rolling updates and rollbacks (SwarmKit's updater).

One Updater per service replaces the service's out-of-date slots, `Parallelism` at a
time (0: all at once), waiting `Delay` between them, in `stop-first` or `start-first`
order. A new task that fails before it runs, or within `Monitor` after, counts as a
failure; when failures / slots exceed `MaxFailureRatio`, `FailureAction` applies:
pause, continue, or rollback (a failing rollback pauses). After the last slot the
updater watches one more `Monitor` period, then marks the update completed.

The updater never polls: a watcher on tasks feeds it the changes of the tasks it made
(reaching RUNNING, failing), and every wait (Delay, Monitor) is a timer on the clock.
See docs/update.md.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

import msgspec

from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.log import get_logger
from shoal.manager.loops import MAX_EVENTS_PER_ROUND, LoopStats, log_failure, next_backoff
from shoal.manager.orchestrator.task import Slot, create_task, is_runnable, set_desired
from shoal.manager.store import Event, Store, Tx, Watcher, WatcherClosed
from shoal.types.base import format_time, now_ns
from shoal.types.service import Service, UpdateConfig, UpdateStatus
from shoal.types.task import Task, TaskState

DEFAULT_PARALLELISM = 1
DEFAULT_DELAY_NS = 0
DEFAULT_MONITOR_NS = 5_000_000_000
DEFAULT_FAILURE_ACTION = "pause"
DEFAULT_MAX_FAILURE_RATIO = 0.0
DEFAULT_ORDER = "stop-first"

UPDATING = "updating"
PAUSED = "paused"
COMPLETED = "completed"
ROLLBACK_STARTED = "rollback_started"
ROLLBACK_PAUSED = "rollback_paused"
ROLLBACK_COMPLETED = "rollback_completed"
IN_PROGRESS = (UPDATING, ROLLBACK_STARTED)

# Writes one new task for a slot in a transaction, with the desired state given.
MakeTask = Callable[[Tx, Service, Slot, TaskState], Task]

log = get_logger("shoal.manager.update")


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
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._store = store
        self._clock = clock
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
        self._monitor_s = (self.config.monitor or 0) / 1e9
        self.failed_tasks: list[str] = []
        # new task id -> monotonic time it reached RUNNING (None: not yet)
        self._new_tasks: dict[str, float | None] = {}
        # new task id -> set once it reached RUNNING, ended, or went away
        self._settled: dict[str, asyncio.Event] = {}
        # set once failures / slots crossed MaxFailureRatio (never with "continue")
        self._exceeded = asyncio.Event()
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
        # Watch before reading: no change of a task it made can slip between the two.
        watcher = self._store.watch("task")
        follow = asyncio.get_running_loop().create_task(
            self._follow(watcher), name=f"updater-watch-{self.service.id}"
        )
        try:
            await self._run(follow)
        finally:
            follow.cancel()
            await asyncio.gather(follow, return_exceptions=True)
            watcher.close()

    async def _run(self, follow: asyncio.Task[None]) -> None:
        resumed = self._resumed()
        for tid in resumed:
            self._watch_new(tid)
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

        async def worker() -> None:
            while not queue.empty() and not self._exceeded.is_set():
                await self._update_slot(queue.get_nowait())
                if self._exceeded.is_set():
                    return
                if self.config.delay:
                    await self._clock.sleep(self.config.delay / 1e9)

        # As SwarmKit's: the failure action applies as soon as a failure crosses the
        # ratio (its event arrives), not once the workers are done with their delay.
        rollout = asyncio.gather(
            *(self._wait_running(tid) for tid in resumed),
            *(worker() for _ in range(max(1, parallelism))),
        )
        exceeded: asyncio.Future[Any] = asyncio.ensure_future(self._exceeded.wait())
        waits: set[asyncio.Future[Any]] = {rollout, exceeded, follow}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if follow.done():  # it only ends by raising: without it nothing would wake us
                follow.result()
                raise RuntimeError("the updater's task watch ended")
            if rollout.done():
                rollout.result()  # a worker's exception ends this run (the supervisor retries)
                await self._monitor()
        finally:
            exceeded.cancel()
            if not rollout.done():
                rollout.cancel()
                await asyncio.gather(rollout, return_exceptions=True)
        if self._exceeded.is_set():
            await self._on_failure()
            return
        if self.rollback:
            await self._set_status(ROLLBACK_COMPLETED, "rollback completed", done=True)
        else:
            await self._set_status(COMPLETED, "update completed", done=True)

    async def _monitor(self) -> None:
        """Keep watching the new tasks for one more monitor period (SwarmKit: or
        Delay+1s), ending early on a failure that crosses the ratio."""
        try:
            await self._clock.wait_for(self._exceeded.wait(), self._monitor_s)
        except TimeoutError:
            pass

    # following the new tasks ----------------------------------------------------------
    def _watch_new(self, task_id: str) -> None:
        self._new_tasks.setdefault(task_id, None)
        self._settled.setdefault(task_id, asyncio.Event())
        self._observe(task_id, self._store.view().get_task(task_id))

    async def _follow(self, watcher: Watcher) -> None:
        """Feed the changes of the tasks this update made to `_observe`; cost follows
        the number of task changes. A watcher that fell behind is replaced and the
        tasks are read again."""
        while True:
            try:
                events = await watcher.__anext__()
            except WatcherClosed:
                watcher.close()
                watcher = self._store.watch("task")
                view = self._store.view()
                for tid in list(self._new_tasks):
                    self._observe(tid, view.get_task(tid))
                continue
            events.extend(watcher.get_nowait_all(MAX_EVENTS_PER_ROUND))
            self._on_events(events)

    def _on_events(self, events: list[Event]) -> None:
        for ev in events:
            if ev.obj.id in self._new_tasks:
                self._observe(ev.obj.id, None if ev.action == "remove" else ev.obj)

    def _observe(self, task_id: str, t: Task | None) -> None:
        """One committed value of a new task: note when it reached RUNNING, and count
        it failed if it ended before, or within the monitor period after (unless it was
        told to stop: a scale-down or a newer update is no failure)."""
        settled = self._settled[task_id]
        if t is None:
            settled.set()
            return
        if t.state < TaskState.RUNNING:
            return
        running_since = self._new_tasks[task_id]
        if t.state == TaskState.RUNNING:
            if running_since is None:
                self._new_tasks[task_id] = self._clock.monotonic()
            settled.set()
            return
        # ended
        if running_since is None:
            self._record_failure(task_id)
        elif (
            t.desired <= TaskState.RUNNING
            and running_since is not None
            and self._clock.monotonic() - running_since <= self._monitor_s
        ):
            self._record_failure(task_id)
        settled.set()

    async def _wait_running(self, task_id: str) -> None:
        """Until the new task reached RUNNING, ended or went away (its events say)."""
        await self._settled[task_id].wait()

    # one slot ----------------------------------------------------------------------------
    async def _update_slot(self, slot: Slot) -> None:
        order = self.config.order
        view = self._store.view()
        service = view.get_service(self.service.id)
        if service is None or view.service_meta(service.id).spec_version != self.spec_version:
            return
        old = [t for t in slot if is_runnable(t)]
        if order == "start-first":

            def start(tx: Tx) -> Task | None:
                if old and not self._still_runnable(tx, old):
                    return None
                return self._make_task(tx, service, slot, TaskState.RUNNING)

            created = await self._store.update(start)
            if created is None:
                return
            self._watch_new(created.id)
            await self._wait_running(created.id)
            cur = self._store.view().get_task(created.id)
            # Only a new task that runs replaces the old ones (SwarmKit's too): the
            # service never has fewer running tasks than replicas.
            if cur is not None and cur.state == TaskState.RUNNING:
                await self._store.update(lambda tx: self._shutdown(tx, old))
        else:

            def swap(tx: Tx) -> Task | None:
                if old and not self._still_runnable(tx, old):
                    return None
                created = self._make_task(tx, service, slot, TaskState.READY)
                self._shutdown(tx, old)
                return created

            # The restart supervisor starts the held task once the old one stopped.
            swapped = await self._store.update(swap)
            if swapped is None:
                return
            self._watch_new(swapped.id)
            await self._wait_running(swapped.id)

    @staticmethod
    def _still_runnable(tx: Tx, tasks: list[Task]) -> bool:
        """Is any of the slot's tasks, as the updater found them, still to run? If the
        orchestrator shut them all down meanwhile (their node went down, they failed),
        it also made the slot's replacement, from the current spec: the updater adds
        none beside it (SwarmKit: "already shut down when reached by updater")."""
        for t in tasks:
            cur = tx.get_task(t.id)
            if cur is not None and is_runnable(cur):
                return True
        return False

    @staticmethod
    def _shutdown(tx: Tx, tasks: list[Task]) -> None:
        for t in tasks:
            cur = tx.get_task(t.id)
            if cur is not None and is_runnable(cur):
                tx.update(set_desired(cur, TaskState.SHUTDOWN))

    # failures ----------------------------------------------------------------------------
    def _record_failure(self, task_id: str) -> None:
        if task_id not in self.failed_tasks:
            self.failed_tasks.append(task_id)
            if self._failure_exceeded():
                self._exceeded.set()

    def _failure_exceeded(self) -> bool:
        if self.config.failure_action == "continue" or not self.failed_tasks:
            return False
        ratio = self.config.max_failure_ratio or 0.0
        return len(self.failed_tasks) / max(1, self._total) > ratio

    async def _on_failure(self) -> None:
        task = self.failed_tasks[0]
        reason = f"due to failure or early termination of task {task}"
        if self.rollback:
            await self._set_status(ROLLBACK_PAUSED, f"rollback paused {reason}")
        elif self.config.failure_action == "rollback":
            now = self._clock.time_ns()
            await self._store.update(
                lambda tx: rollback_service(
                    tx, self.service.id, f"update rolled back {reason}", now
                )
            )
        else:
            await self._set_status(PAUSED, f"update paused {reason}")

    async def _set_status(
        self, state: str, message: str, start: bool = False, done: bool = False
    ) -> None:
        now = format_time(self._clock.time_ns())

        def write(tx: Tx) -> None:
            s = tx.get_service(self.service.id)
            if s is None or tx.service_meta(s.id).spec_version != self.spec_version:
                return
            prev = s.update_status or UpdateStatus()
            status = UpdateStatus(
                state=state,
                started_at=now if start or not prev.started_at else prev.started_at,
                completed_at=now if done else None,
                message=message,
            )
            if status != s.update_status:
                tx.update(msgspec.structs.replace(s, update_status=status))

        await self._store.update(write)


def rollback_service(
    tx: Tx, service_id: str, message: str, now: int | None = None
) -> Service | None:
    """Swap Spec and PreviousSpec and mark the service rolling back (also used by the
    API's `?rollback=previous`). `now`: wall time in ns (default: the system's)."""
    s = tx.get_service(service_id)
    if s is None or s.previous_spec is None:
        return None
    started = format_time(now_ns() if now is None else now)
    status = UpdateStatus(state=ROLLBACK_STARTED, started_at=started, message=message)
    return tx.update(
        msgspec.structs.replace(
            s, spec=s.previous_spec, previous_spec=s.spec, update_status=status
        ),
        msgspec.structs.replace(tx.service_meta(s.id), spec_version=tx.index),
    )


class UpdateSupervisor:
    """Runs at most one Updater per service; a newer spec cancels the running one.

    An updater that raises is logged and counted, and run again (from what the store
    says: slots already replaced are skipped) after a backoff that doubles while it
    keeps failing; a newer spec, a removal or `stop()` ends the retries."""

    def __init__(self, store: Store, clock: Clock = SYSTEM_CLOCK) -> None:
        self._store = store
        self._clock = clock
        self._running: dict[str, tuple[int, asyncio.Task[None]]] = {}
        self._stats = LoopStats()

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
        task = asyncio.get_running_loop().create_task(
            self._supervise(service, spec_version, slots, make_task), name=f"updater-{service.id}"
        )
        task.add_done_callback(log_failure)
        self._running[service.id] = (spec_version, task)
        task.add_done_callback(functools.partial(self._done, service.id))

    async def _supervise(
        self, service: Service, spec_version: int, slots: list[Slot], make_task: MakeTask
    ) -> None:
        backoff = 0.0
        while True:
            try:
                updater = Updater(self._store, service, spec_version, slots, make_task, self._clock)
                await updater.run()
                self._stats.rounds += 1
                return
            except Exception:
                self._stats.failures += 1
                log.exception("updater failed; retrying", loop=f"updater-{service.id}")
            backoff = next_backoff(backoff)
            await self._clock.sleep(backoff)
            view = self._store.view()
            cur = view.get_service(service.id)
            if cur is None or view.service_meta(cur.id).spec_version != spec_version:
                return
            service = cur
            slots = [_still_dirty(self._store, service.id, spec_version, slot) for slot in slots]
            slots = [slot for slot in slots if slot]

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
        return {"updates_running": len(self._running), **self._stats.as_dict()}


def _still_dirty(store: Store, service_id: str, spec_version: int, slot: Slot) -> Slot:
    """`slot`'s tasks as the store has them now, or [] when the slot already has a
    runnable task of `spec_version` (an earlier attempt replaced it)."""
    if not slot:
        return slot
    sample = slot[0]
    view = store.view()
    tasks = [
        t
        for t in view.tasks_of_service(service_id)
        if t.slot == sample.slot and (sample.slot is not None or t.node_id == sample.node_id)
    ]
    if any(is_runnable(t) and view.task_meta(t.id).spec_version == spec_version for t in tasks):
        return []
    return [t for t in tasks if is_runnable(t)] or slot


def default_make_task(tx: Tx, service: Service, slot: Slot, desired: TaskState) -> Task:
    """Write a replacement task for a replicated slot, or a global task's node."""
    sample = slot[0] if slot else None
    if sample is not None and sample.slot is None:
        return create_task(tx, service, None, sample.node_id, desired)
    return create_task(tx, service, sample.slot if sample else None, desired=desired)
