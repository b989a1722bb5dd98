"""The restart supervisor: decides whether a finished task is replaced, and when.

As SwarmKit's: inside the orchestrator's transaction the old task is told to shut down
and, if the policy allows, a replacement is created in the same slot with desired state
READY. A held task (desired READY) is started by a timer armed after commit, driven by
the committed events, and again by a sweep of the store at start-up: what it waits for
is derived from the store alone (`hold_of`), so a daemon that dies while a task waits
out its restart delay, or while a stop-first update waits for the old task to stop,
re-arms it when it comes back. A held task waiting for its predecessor is woken by
the events of that task (or of its node), never by polling. Restart history is kept in
memory and in the store.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass

from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.manager.loops import MAX_EVENTS_PER_ROUND, LoopStats, log_failure, supervise
from shoal.manager.orchestrator.task import create_task, set_desired
from shoal.manager.store import Event, ReadTx, Store, Tx
from shoal.types.base import format_time, now_ns, parse_time
from shoal.types.service import Service, TaskSpec
from shoal.types.task import Task, TaskState

DEFAULT_RESTART_DELAY_NS = 5_000_000_000
DEFAULT_RESTART_CONDITION = "any"
# How long a held task waits for its predecessor to stop, from the held task's creation.
OLD_TASK_TIMEOUT_NS = 60_000_000_000


@dataclass(slots=True)
class _History:
    # monotonic times of restarts of this slot (or node, for global services)
    times: deque[float]


def restart_condition(service: Service) -> str:
    policy = service.spec.task_template.restart_policy if service.spec.task_template else None
    return policy.condition if policy and policy.condition else DEFAULT_RESTART_CONDITION


def run_state(task: Task) -> TaskState:
    """The desired state that runs `task`: a job's task runs to COMPLETE (SwarmKit)."""
    return TaskState.COMPLETE if task.job_iteration is not None else TaskState.RUNNING


def restart_delay_ns(spec: TaskSpec | None) -> int:
    policy = spec.restart_policy if spec else None
    return policy.delay if policy and policy.delay is not None else DEFAULT_RESTART_DELAY_NS


@dataclass(frozen=True, slots=True)
class Hold:
    """What a held task (desired READY) waits for before it is moved to RUNNING: the
    wall-clock time `start_at_ns` (at most `delay_ns` from now, whatever the clocks say)
    and, when `old_task_id` is set, that task no longer running (or `old_deadline_ns`)."""

    start_at_ns: int
    delay_ns: int
    old_task_id: str | None
    old_deadline_ns: int

    def remaining_s(self, now: int) -> float:
        """Seconds left before the start time; never more than the delay itself, so a
        clock that jumped back (or another node's skewed timestamp) cannot hold a task
        longer than its policy says (SwarmKit's InitTasks caps it the same way)."""
        return max(0, min(self.start_at_ns - now, self.delay_ns)) / 1e9


def slot_key(task: Task) -> tuple[object, ...]:
    """What tasks of one service share with the tasks of their slot (or node, for a
    global service) and job run."""
    return (task.slot, task.node_id if task.slot is None else None, task.job_iteration)


def predecessor(tx: ReadTx, task: Task, candidates: Iterable[Task] | None = None) -> Task | None:
    """The task `task` replaced: the latest task of the same slot (or node, for a
    global service) created before it and no longer desired to run. `candidates`: the
    tasks to look among (those of its slot, when the caller has them by slot_key), by
    default every task of its service."""
    if candidates is None:
        candidates = tx.tasks_of_service(task.service_id)
    older = [
        t
        for t in candidates
        if t.id != task.id
        and t.slot == task.slot
        and (task.slot is not None or t.node_id == task.node_id)
        and t.job_iteration == task.job_iteration
        and t.desired > run_state(t)
        and (t.created_at, t.id) < (task.created_at, task.id)
    ]
    return max(older, key=lambda t: (t.created_at, t.id), default=None)


def hold_of(tx: ReadTx, task: Task, candidates: Iterable[Task] | None = None) -> Hold:
    """What the held `task` waits for, read from the store only.

    - Its predecessor had ended when it was made (a restart after an exit or a
      failure): the restart delay, counted from the predecessor's final status time.
    - Its predecessor still ran and has the same spec version (a restart forced by the
      predecessor's node going away): the restart delay from the task's creation, and
      the predecessor stopped.
    - Its predecessor still ran with an older spec (a stop-first update): no delay, only
      the predecessor stopped.
    """
    created = parse_time(task.created_at) if task.created_at else now_ns()
    deadline = created + OLD_TASK_TIMEOUT_NS
    old = predecessor(tx, task, candidates)
    delay = restart_delay_ns(task.spec)
    if old is None:
        return Hold(created + delay, delay, None, deadline)
    ended_at = parse_time(old.status.timestamp) if old.status.timestamp else created
    if old.state > TaskState.RUNNING and ended_at <= created:
        return Hold(ended_at + delay, delay, None, deadline)
    if tx.task_meta(old.id).spec_version == tx.task_meta(task.id).spec_version:
        return Hold(created + delay, delay, old.id, deadline)
    return Hold(created, 0, old.id, deadline)


class RestartSupervisor:
    """Shared by the replicated and global orchestrators (one per manager)."""

    def __init__(self, store: Store, clock: Clock = SYSTEM_CLOCK) -> None:
        self._store = store
        self._clock = clock
        self._history: dict[tuple[str, object], _History] = defaultdict(lambda: _History(deque()))
        self._delayed: dict[str, asyncio.Task[None]] = {}
        # predecessor task id -> the events its held successors wait on
        self._waiting: dict[str, set[asyncio.Event]] = {}
        self._stopped = asyncio.Event()
        self.restarts = 0
        self._stats = LoopStats()

    @staticmethod
    def _key(task: Task) -> tuple[str, object]:
        return (task.service_id, task.slot if task.slot is not None else task.node_id)

    def should_restart(
        self, tx: ReadTx, task: Task, service: Service, slot_tasks: list[Task] | None = None
    ) -> bool:
        """Whether the policy restarts `task`. Attempts are counted both in memory and
        from the slot's history in the store (`slot_tasks`: tasks of the same spec
        version beyond the first are restarts), so a daemon restart forgets nothing
        the task history still shows."""
        condition = restart_condition(service)
        if condition == "none":
            return False
        if condition == "on-failure" and task.state == TaskState.COMPLETE:
            return False
        mode = service.spec.mode.kind if service.spec.mode else "replicated"
        if mode.endswith("-job") and task.state == TaskState.COMPLETE:
            return False
        policy = service.spec.task_template.restart_policy if service.spec.task_template else None
        max_attempts = policy.max_attempts if policy and policy.max_attempts else 0
        if not max_attempts:
            return True
        window_s = (policy.window or 0) / 1e9 if policy else 0.0
        hist = self._history[self._key(task)].times
        cutoff = self._clock.monotonic() - window_s
        in_memory = sum(1 for t in hist if not window_s or t >= cutoff)
        in_store = 0
        if slot_tasks:
            version = tx.task_meta(task.id).spec_version
            same = sorted(
                (t for t in slot_tasks if tx.task_meta(t.id).spec_version == version),
                key=lambda t: (t.created_at, t.id),
            )[1:]
            wall_cutoff = (
                format_time(self._clock.time_ns() - int(window_s * 1e9)) if window_s else ""
            )
            in_store = sum(1 for t in same if t.created_at >= wall_cutoff)
        return max(in_memory, in_store) < max_attempts

    def restart(self, tx: Tx, service: Service, task: Task, force: bool = False) -> Task | None:
        """Shut `task` down and, if the policy allows (or `force`: its node is gone),
        create its replacement, held at READY until its delay has passed."""
        if task.desired > TaskState.COMPLETE:
            return None  # already handled by an earlier call
        tx.update(set_desired(task, TaskState.SHUTDOWN))
        if not force and not self.should_restart(tx, task, service, self._slot(tx, task)):
            return None
        node_id = task.node_id if task.slot is None else None  # global tasks stay on their node
        # Its timer is armed after commit, by run(), from the committed event; the
        # caller records the restart after commit too (`record`).
        return create_task(
            tx,
            service,
            task.slot,
            node_id,
            desired=TaskState.READY,
            job_iteration=task.job_iteration,
        )

    def record(self, task: Task) -> None:
        """After commit: `task` was restarted by the policy (counted for max attempts)."""
        self._history[self._key(task)].times.append(self._clock.monotonic())
        self.restarts += 1

    @staticmethod
    def _slot(tx: ReadTx, task: Task) -> list[Task]:
        """The tasks that share `task`'s slot (or node, for a global service)."""
        return [
            t
            for t in tx.tasks_of_service(task.service_id)
            if (t.slot, t.node_id if t.slot is None else None)
            == (task.slot, task.node_id if task.slot is None else None)
            and t.job_iteration == task.job_iteration
        ]

    # held tasks ------------------------------------------------------------------------
    async def run(self) -> None:
        await supervise("restarts", self._run_once, self._stopped, self._stats, self._clock)

    async def _run_once(self) -> None:
        """Arm a timer for every held task: each one in the store at start (the timers
        of a daemon that died are gone with it; after a failed round, those already
        armed stay), then each one a transaction commits. Wake the held tasks whose
        predecessor (or its node) changed."""
        watcher = self._store.watch("task", "node")
        try:
            view = self._store.view()
            self._arm_many(view, [t.id for t in view.tasks() if t.desired == TaskState.READY])
            self._wake_all()  # a predecessor may have stopped while no watcher ran
            while not self._stopped.is_set():
                events = await watcher.__anext__()
                events.extend(watcher.get_nowait_all(MAX_EVENTS_PER_ROUND))
                self._handle(events)
                self._stats.rounds += 1
        finally:
            watcher.close()

    def _handle(self, events: list[Event]) -> None:
        view = self._store.view()
        held: list[str] = []
        for ev in events:
            if ev.kind == "node":
                if self._waiting:
                    self._wake_on_node(view, ev.obj.id)
                continue
            self._wake(ev.obj.id)
            if ev.action != "remove" and ev.obj.desired == TaskState.READY:
                held.append(ev.obj.id)
        self._arm_many(view, held)

    def _arm_many(self, view: ReadTx, task_ids: list[str]) -> None:
        """Arm the held tasks of one round, each service's tasks grouped by slot once
        (a failure wave holds thousands: looking for each one's predecessor among all
        its service's tasks cost seconds of the event loop)."""
        by_service: dict[str, list[Task]] = defaultdict(list)
        for task_id in task_ids:
            task = view.get_task(task_id)
            if (
                task is not None
                and task.desired == TaskState.READY
                and task_id not in self._delayed
            ):
                by_service[task.service_id].append(task)
        for service_id, tasks in by_service.items():
            slots: dict[tuple[object, ...], list[Task]] = defaultdict(list)
            for t in view.tasks_of_service(service_id):
                slots[slot_key(t)].append(t)
            for task in tasks:
                if task.id not in self._delayed:
                    self._arm(view, task.id, slots[slot_key(task)])

    def _wake(self, task_id: str) -> None:
        for waiter in self._waiting.get(task_id, ()):
            waiter.set()

    def _wake_all(self) -> None:
        for waiters in self._waiting.values():
            for waiter in waiters:
                waiter.set()

    def _wake_on_node(self, view: ReadTx, node_id: str) -> None:
        """A node went down (or away): held tasks whose predecessor ran there stop
        waiting for it. Costs the number of held tasks that wait, not of tasks."""
        for old_id in list(self._waiting):
            old = view.get_task(old_id)
            if old is None or old.node_id == node_id:
                self._wake(old_id)

    def _arm(self, view: ReadTx, task_id: str, candidates: list[Task] | None = None) -> None:
        task = view.get_task(task_id)
        if task is None or task.desired != TaskState.READY or task_id in self._delayed:
            return
        hold = hold_of(view, task, candidates)
        timer = asyncio.get_running_loop().create_task(
            self._start_after(task_id, hold), name=f"delay-start-{task_id}"
        )
        timer.add_done_callback(log_failure)
        self._delayed[task_id] = timer

    def is_delayed(self, task_id: str) -> bool:
        return task_id in self._delayed

    def _old_running(self, old_task_id: str | None, deadline_ns: int) -> bool:
        """Whether a held task must still wait for its predecessor: it runs (or is
        about to), on a node that can still report it stopping, before the deadline."""
        if old_task_id is None or self._clock.time_ns() >= deadline_ns:
            return False
        view = self._store.view()
        old = view.get_task(old_task_id)
        if old is None or old.state > TaskState.RUNNING or old.state < TaskState.ASSIGNED:
            return False
        node = view.get_node(old.node_id) if old.node_id else None
        return node is not None and node.status.state != "down"

    async def _wait_old(self, hold: Hold) -> None:
        """Until the predecessor stopped (its events wake this) or the deadline."""
        assert hold.old_task_id is not None
        waiter = asyncio.Event()
        waiting = self._waiting.setdefault(hold.old_task_id, set())
        waiting.add(waiter)
        try:
            while self._old_running(hold.old_task_id, hold.old_deadline_ns):
                waiter.clear()
                left_s = (hold.old_deadline_ns - self._clock.time_ns()) / 1e9
                try:
                    await self._clock.wait_for(waiter.wait(), left_s)
                except TimeoutError:
                    return
        finally:
            waiting.discard(waiter)
            if not waiting and self._waiting.get(hold.old_task_id) is waiting:
                del self._waiting[hold.old_task_id]

    async def _start_after(self, task_id: str, hold: Hold) -> None:
        try:
            await self._clock.sleep(hold.remaining_s(self._clock.time_ns()))
            if hold.old_task_id is not None:
                await self._wait_old(hold)

            def start(tx: Tx) -> None:
                t = tx.get_task(task_id)
                if t is not None and t.desired == TaskState.READY:
                    tx.update(set_desired(t, run_state(t)))

            await self._store.update(start)
        finally:
            self._delayed.pop(task_id, None)

    def clear_service(self, service_id: str) -> None:
        for key in [k for k in self._history if k[0] == service_id]:
            del self._history[key]

    def stop(self) -> None:
        self._stopped.set()
        for t in self._delayed.values():
            t.cancel()
        self._delayed.clear()

    def statistics(self) -> dict[str, int]:
        return {
            "restarts": self.restarts,
            "delayed": len(self._delayed),
            "waiting_on_predecessor": sum(len(w) for w in self._waiting.values()),
            **self._stats.as_dict(),
        }
