"""What a held task (desired READY) waits for, read back from the store alone, and the
start-up sweep that re-arms it: a daemon that died while a task waited out its restart
delay, or while a stop-first update waited for the old task, forgets nothing.

Times are given explicitly (a fake clock): no test here sleeps.
"""

from __future__ import annotations

import asyncio

from shoal.manager.orchestrator.restart import (
    DEFAULT_RESTART_DELAY_NS,
    OLD_TASK_TIMEOUT_NS,
    Hold,
    RestartSupervisor,
    hold_of,
    predecessor,
    slot_key,
)
from shoal.manager.store import MemoryBackend, Store
from shoal.manager.store.memory import encode_record
from shoal.types.base import format_time
from shoal.types.meta import TaskMeta
from shoal.types.node import Node, NodeSpec, NodeStatus
from shoal.types.service import RestartPolicy, TaskSpec
from shoal.types.task import Task, TaskState, TaskStatus

S = 1_000_000_000
T0 = 1_700_000_000 * S  # a fixed wall-clock origin
DELAY_15S = TaskSpec(restart_policy=RestartPolicy(delay=15 * S))


def task(
    task_id: str,
    *,
    created: int,
    state: TaskState,
    desired: TaskState,
    status_at: int | None = None,
    slot: int | None = 1,
    node_id: str | None = "n1",
    spec: TaskSpec = DELAY_15S,
) -> Task:
    return Task(
        id=task_id,
        service_id="svc",
        slot=slot,
        node_id=node_id,
        spec=spec,
        created_at=format_time(created),
        status=TaskStatus(
            timestamp=format_time(created if status_at is None else status_at),
            state=state.wire,
            message="",
        ),
        desired_state=desired.wire,
    )


def store_of(*tasks: Task, versions: dict[str, int] | None = None) -> Store:
    """A store loaded with these objects as they were committed (their own times kept),
    as a daemon finds them when it starts again. Tasks are of spec version 1 unless
    `versions` (task ID -> spec version) says otherwise."""
    versions = versions or {}
    backend = MemoryBackend()
    node = Node(
        id="n1",
        spec=NodeSpec(role="manager", availability="active"),
        status=NodeStatus(state="ready"),
    )
    records = [encode_record("node", node)]
    records += [
        encode_record("task", t, TaskMeta(spec_version=versions.get(t.id, 1))) for t in tasks
    ]
    backend.seed(1, records)
    return Store(backend)


def held(
    *,
    created: int = T0 + S // 10,
    slot: int | None = 1,
    spec: TaskSpec = DELAY_15S,
) -> Task:
    """The replacement "new", held at desired READY."""
    return task(
        "new",
        created=created,
        state=TaskState.ASSIGNED,
        desired=TaskState.READY,
        slot=slot,
        spec=spec,
    )


def test_restart_after_a_failure_waits_the_delay_from_the_failure() -> None:
    failed = task(
        "old",
        created=T0 - 60 * S,
        state=TaskState.FAILED,
        desired=TaskState.SHUTDOWN,
        status_at=T0,
    )
    new = held()
    hold = hold_of(store_of(failed, new).view(), new)
    assert hold == Hold(
        start_at_ns=T0 + 15 * S,
        delay_ns=15 * S,
        old_task_id=None,
        old_deadline_ns=T0 + S // 10 + 60 * S,
    )


def test_restart_delay_defaults_to_five_seconds() -> None:
    failed = task(
        "old", created=T0 - S, state=TaskState.COMPLETE, desired=TaskState.SHUTDOWN, status_at=T0
    )
    new = held(spec=TaskSpec())
    hold = hold_of(store_of(failed, new).view(), new)
    assert DEFAULT_RESTART_DELAY_NS == 5 * S
    assert (hold.start_at_ns, hold.delay_ns, hold.old_task_id) == (T0 + 5 * S, 5 * S, None)


def test_stop_first_update_waits_for_the_old_task_only() -> None:
    old = task("old", created=T0 - 60 * S, state=TaskState.RUNNING, desired=TaskState.SHUTDOWN)
    new = held()
    hold = hold_of(store_of(old, new, versions={"new": 2}).view(), new)
    assert (hold.start_at_ns, hold.delay_ns, hold.old_task_id) == (T0 + S // 10, 0, "old")
    assert hold.old_deadline_ns == T0 + S // 10 + OLD_TASK_TIMEOUT_NS


def test_update_whose_old_task_stopped_since_is_still_an_update() -> None:
    """The old task stopped after the new one was made (the daemon then died): no
    restart delay is owed."""
    old = task(
        "old",
        created=T0 - 60 * S,
        state=TaskState.SHUTDOWN,
        desired=TaskState.SHUTDOWN,
        status_at=T0 + 10 * S,
    )
    new = held()
    hold = hold_of(store_of(old, new, versions={"new": 2}).view(), new)
    assert (hold.start_at_ns, hold.delay_ns) == (T0 + S // 10, 0)


def test_restart_forced_off_a_lost_node_waits_the_delay_and_the_old_task() -> None:
    old = task("old", created=T0 - 60 * S, state=TaskState.RUNNING, desired=TaskState.SHUTDOWN)
    new = held()
    hold = hold_of(store_of(old, new).view(), new)
    assert (hold.start_at_ns, hold.delay_ns, hold.old_task_id) == (
        T0 + S // 10 + 15 * S,
        15 * S,
        "old",
    )


def test_predecessor_is_the_latest_older_task_of_the_same_slot_or_node() -> None:
    def gone(task_id: str, created: int, slot: int | None = 1, node_id: str = "n1") -> Task:
        return task(
            task_id,
            created=created,
            state=TaskState.FAILED,
            desired=TaskState.SHUTDOWN,
            slot=slot,
            node_id=node_id,
        )

    history = [
        gone("a", T0 - 30 * S),
        gone("b", T0 - 20 * S),
        gone("other-slot", T0 - 10 * S, slot=2),
        gone("later", T0 + 10 * S),
    ]
    new = held()
    view = store_of(*history, new).view()
    found = predecessor(view, new)
    assert found is not None and found.id == "b"
    # The same among the tasks of its slot alone (the restart supervisor groups a
    # round's held tasks by slot_key once per service).
    slot = [t for t in view.tasks_of_service(new.service_id) if slot_key(t) == slot_key(new)]
    assert {t.id for t in slot} == {"a", "b", "later", new.id}
    assert predecessor(view, new, slot) == found

    on_node = [
        gone("here", T0 - 20 * S, slot=None),
        gone("elsewhere", T0 - 10 * S, slot=None, node_id="n2"),
    ]
    new_global = held(slot=None)
    found = predecessor(store_of(*on_node, new_global).view(), new_global)
    assert found is not None and found.id == "here"
    assert predecessor(store_of(new).view(), new) is None


def test_remaining_time_on_a_fake_clock() -> None:
    hold = Hold(start_at_ns=T0 + 15 * S, delay_ns=15 * S, old_task_id=None, old_deadline_ns=0)
    assert hold.remaining_s(T0) == 15.0
    assert hold.remaining_s(T0 + 11 * S) == 4.0  # a daemon back 11 s after the failure
    assert hold.remaining_s(T0 + 20 * S) == 0.0  # already due: start at once
    # A clock that jumped back (or a skewed node's timestamp) never holds a task longer
    # than its delay.
    assert hold.remaining_s(T0 - 3600 * S) == 15.0


def test_start_up_sweep_starts_a_held_task_that_is_due() -> None:
    """A replacement whose delay passed while no daemon ran is started by the sweep."""

    async def main() -> Task:
        failed = task(
            "old",
            created=T0 - 60 * S,
            state=TaskState.FAILED,
            desired=TaskState.SHUTDOWN,
            status_at=T0,
        )
        store = store_of(failed, held(created=T0 + S // 10))
        watcher = store.watch("task")
        supervisor = RestartSupervisor(store)
        runner = asyncio.create_task(supervisor.run())
        try:
            events = await asyncio.wait_for(watcher.__anext__(), timeout=5)
        finally:
            supervisor.stop()
            runner.cancel()
        (event,) = events
        return event.obj

    started = asyncio.run(main())
    assert (started.id, started.desired) == ("new", TaskState.RUNNING)


def test_a_held_task_created_later_is_armed_from_its_commit() -> None:
    """Not only at start-up: a held task a transaction commits is armed after commit."""

    async def main() -> Task:
        failed = task(
            "old",
            created=T0 - 60 * S,
            state=TaskState.FAILED,
            desired=TaskState.SHUTDOWN,
            status_at=T0,
        )
        store = store_of(failed)
        supervisor = RestartSupervisor(store)
        runner = asyncio.create_task(supervisor.run())
        await asyncio.sleep(0)  # let it sweep (nothing held yet)
        watcher = store.watch("task")
        # created now, long after the failure: due at once (zero delay left)
        await store.update(
            lambda tx: tx.create(
                held(spec=TaskSpec(restart_policy=RestartPolicy(delay=0))),
                TaskMeta(spec_version=1),
            )
        )
        try:
            while True:
                (event,) = await asyncio.wait_for(watcher.__anext__(), timeout=5)
                if event.obj.desired == TaskState.RUNNING:
                    return event.obj
        finally:
            supervisor.stop()
            runner.cancel()

    started = asyncio.run(main())
    assert started.id == "new"
