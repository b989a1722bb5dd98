"""Every write loop is bounded in the work one transaction or one turn of the event loop
does (issue 15): a huge service is built in chunks, batches yield between their
transactions, a reconcile round takes a bounded number of events."""

from __future__ import annotations

import asyncio

import msgspec

from shoal.manager.loops import MAX_EVENTS_PER_ROUND
from shoal.manager.orchestrator.replicated import MAX_TASKS_PER_RECONCILE, ReplicatedOrchestrator
from shoal.manager.orchestrator.restart import RestartSupervisor
from shoal.manager.orchestrator.update import UpdateSupervisor
from shoal.manager.store import MemoryBackend, Store, Tx
from shoal.manager.store.memory import MAX_CHANGES_PER_BATCH
from shoal.types.node import Node, NodeSpec, NodeStatus

from .test_store_contract import service

WAIT_S = 10.0


def node(i: int) -> Node:
    return Node(
        id=f"n{i}",
        spec=NodeSpec(role="worker", availability="active"),
        status=NodeStatus(state="ready"),
    )


def test_a_huge_service_is_built_in_bounded_transactions_the_loop_free_between() -> None:
    replicas = 3 * MAX_TASKS_PER_RECONCILE + 7

    async def main() -> None:
        store = Store(MemoryBackend())
        await store.update(lambda tx: tx.create(service("big", replicas)))
        watcher = store.watch("task")
        orch = ReplicatedOrchestrator(store, RestartSupervisor(store), UpdateSupervisor(store))
        ticks = 0
        created: list[int] = []  # tasks created by each transaction, in order
        ticks_at: list[int] = []  # the probe's ticks when each was published

        async def probe() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        async def count() -> None:
            while sum(created) < replicas:
                events = await watcher.__anext__()
                created.append(sum(1 for e in events if e.action == "create"))
                ticks_at.append(ticks)

        prober = asyncio.create_task(probe())
        loop = asyncio.create_task(orch.run())
        try:
            await asyncio.wait_for(count(), WAIT_S)
        finally:
            orch.stop()
            loop.cancel()
            prober.cancel()
            await asyncio.gather(loop, prober, return_exceptions=True)
        assert sum(created) == replicas == len(store.view().tasks())
        assert max(created) <= MAX_TASKS_PER_RECONCILE
        assert len(created) >= 4
        # the probe ran between every two chunks
        assert all(b > a for a, b in zip(ticks_at, ticks_at[1:], strict=False))
        slots = sorted(t.slot or 0 for t in store.view().tasks())
        assert slots == list(range(1, replicas + 1))

    asyncio.run(main())


def test_services_created_together_share_one_bound_per_transaction() -> None:
    """Each service alone is below the bound, together far above it: a round (one
    transaction) still creates at most MAX_TASKS_PER_RECONCILE tasks, and every service
    is built whole."""
    per_service = MAX_TASKS_PER_RECONCILE // 2 + 3
    names = [f"s{i}" for i in range(6)]

    async def main() -> None:
        store = Store(MemoryBackend())
        for name in names:
            await store.update(lambda tx, name=name: tx.create(service(name, per_service)))
        watcher = store.watch("task")
        orch = ReplicatedOrchestrator(store, RestartSupervisor(store), UpdateSupervisor(store))
        created: list[int] = []

        async def count() -> None:
            while sum(created) < len(names) * per_service:
                events = await watcher.__anext__()
                created.append(sum(1 for e in events if e.action == "create"))

        loop = asyncio.create_task(orch.run())
        try:
            await asyncio.wait_for(count(), WAIT_S)
        finally:
            orch.stop()
            loop.cancel()
            await asyncio.gather(loop, return_exceptions=True)
        assert max(created) <= MAX_TASKS_PER_RECONCILE
        assert len(created) >= len(names) * per_service // MAX_TASKS_PER_RECONCILE
        for name in names:
            slots = sorted(t.slot or 0 for t in store.view().tasks_of_service(name))
            assert slots == list(range(1, per_service + 1))

    asyncio.run(main())


def test_a_build_interrupted_by_a_scale_down_is_reconciled_in_full() -> None:
    async def main() -> None:
        store = Store(MemoryBackend())
        svc = await store.update(lambda tx: tx.create(service("big", 3 * MAX_TASKS_PER_RECONCILE)))
        orch = ReplicatedOrchestrator(store, RestartSupervisor(store), UpdateSupervisor(store))
        await store.update(lambda tx: orch.reconcile(tx, svc))
        assert orch.unfinished() == {"big"}

        def scale(tx: Tx) -> None:
            current = tx.get_service("big")
            assert current is not None
            tx.update(msgspec.structs.replace(service("big", 5), version=current.version))

        await store.update(scale)
        await store.update(lambda tx: orch._handle(tx, []))
        assert orch.unfinished() == set()
        live = [t for t in store.view().tasks() if t.desired_state == "running"]
        assert len(live) == 5

    asyncio.run(main())


def test_batch_yields_between_its_transactions() -> None:
    async def main() -> None:
        store = Store(MemoryBackend())
        ticks = 0

        async def probe() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        prober = asyncio.create_task(probe())
        await asyncio.sleep(0)
        before = ticks

        def write(tx: Tx, i: int) -> None:
            tx.create(node(i))

        await store.batch(range(3 * MAX_CHANGES_PER_BATCH), write)
        prober.cancel()
        assert ticks - before >= 2
        assert len(store.view().nodes()) == 3 * MAX_CHANGES_PER_BATCH

    asyncio.run(main())


def test_a_round_takes_whole_transactions_up_to_its_bound() -> None:
    async def main() -> None:
        store = Store(MemoryBackend())
        watcher = store.watch("node")
        per_tx = MAX_EVENTS_PER_ROUND // 4 + 1
        for k in range(8):
            await store.update(
                lambda tx, k=k: [tx.create(node(k * per_tx + i)) for i in range(per_tx)]
            )
        first = watcher.get_nowait_all(MAX_EVENTS_PER_ROUND)
        assert len(first) == 4 * per_tx  # whole transactions, just past the bound
        assert len(watcher.get_nowait_all()) == 4 * per_tx

    asyncio.run(main())


def test_a_huge_replicated_job_is_started_in_bounded_transactions() -> None:
    from shoal.manager.orchestrator.jobs import JobOrchestrator
    from shoal.types.service import ReplicatedJob, ServiceMode

    count = 2 * MAX_TASKS_PER_RECONCILE + 1
    job = msgspec.structs.replace(
        service("job"),
        spec=msgspec.structs.replace(
            service("job").spec,
            mode=ServiceMode(
                replicated_job=ReplicatedJob(max_concurrent=count, total_completions=count)
            ),
        ),
    )

    async def main() -> None:
        store = Store(MemoryBackend())
        svc = await store.update(lambda tx: tx.create(job))
        orch = JobOrchestrator(store, RestartSupervisor(store), UpdateSupervisor(store))
        sizes = []
        await store.update(lambda tx: orch.reconcile(tx, svc))
        sizes.append(len(store.view().tasks()))
        while orch.unfinished():
            await store.update(lambda tx: orch._handle(tx, []))
            sizes.append(len(store.view().tasks()))
        assert sizes == [MAX_TASKS_PER_RECONCILE, 2 * MAX_TASKS_PER_RECONCILE, count]

    asyncio.run(main())


def test_a_build_goes_on_only_once_its_loop_has_caught_up() -> None:
    """The orchestrator makes the next chunk of a huge service only in a round with no
    events queued behind it (its own tasks being allocated and scheduled): the build
    goes at the pace the loop digests them, so no watcher's queue keeps growing."""

    async def main() -> None:
        store = Store(MemoryBackend())
        svc = await store.update(lambda tx: tx.create(service("big", 3 * MAX_TASKS_PER_RECONCILE)))
        orch = ReplicatedOrchestrator(store, RestartSupervisor(store), UpdateSupervisor(store))
        await store.update(lambda tx: orch.reconcile(tx, svc))
        assert len(store.view().tasks()) == MAX_TASKS_PER_RECONCILE
        orch._stats.backlog = 1  # (reconcile_loop sets it before each round)
        await store.update(lambda tx: orch._handle(tx, []))
        assert len(store.view().tasks()) == MAX_TASKS_PER_RECONCILE
        assert orch.unfinished() == {"big"}
        orch._stats.backlog = 0
        await store.update(lambda tx: orch._handle(tx, []))
        assert len(store.view().tasks()) == 2 * MAX_TASKS_PER_RECONCILE

    asyncio.run(main())


def test_a_huge_service_removed_is_taken_down_in_bounded_transactions() -> None:
    from shoal.manager.orchestrator.base import MAX_REMOVALS_PER_ROUND
    from shoal.manager.store import Event
    from shoal.types.task import TaskState

    replicas = 2 * MAX_REMOVALS_PER_ROUND + 5

    async def main() -> None:
        store = Store(MemoryBackend())
        svc = await store.update(lambda tx: tx.create(service("big", replicas)))
        orch = ReplicatedOrchestrator(store, RestartSupervisor(store), UpdateSupervisor(store))
        await store.update(lambda tx: orch.reconcile(tx, svc))
        while orch.unfinished():
            await store.update(lambda tx: orch._handle(tx, []))
        watcher = store.watch("task")
        await store.update(lambda tx: tx.delete("service", "big"))
        removed = [Event("remove", "service", svc, svc)]
        await store.update(lambda tx: orch._handle(tx, removed))
        marked = [len(watcher.get_nowait_all())]  # tasks marked by each transaction
        while orch._removing:
            await store.update(lambda tx: orch._handle(tx, []))
            marked.append(len(watcher.get_nowait_all()))
        assert sum(marked) == replicas and max(marked) <= MAX_REMOVALS_PER_ROUND, marked
        assert all(t.desired == TaskState.REMOVE for t in store.view().tasks())

    asyncio.run(main())


def test_a_batch_that_writes_nothing_still_yields_between_bounded_chunks() -> None:
    async def main() -> None:
        store = Store(MemoryBackend())
        seen: list[int] = []
        ticks = 0

        async def probe() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        prober = asyncio.create_task(probe())
        await asyncio.sleep(0)
        before = ticks
        await store.batch(range(3 * MAX_CHANGES_PER_BATCH), lambda tx, i: seen.append(i))
        prober.cancel()
        assert len(seen) == 3 * MAX_CHANGES_PER_BATCH
        assert ticks - before >= 2

    asyncio.run(main())


def test_a_scheduler_pass_over_tasks_that_fit_nowhere_yields_between_passes() -> None:
    from shoal.manager.orchestrator.task import set_status
    from shoal.manager.scheduler.scheduler import MAX_TASKS_PER_PASS, Scheduler
    from shoal.types.task import TaskState

    count = 3 * MAX_TASKS_PER_PASS

    async def main() -> None:
        store = Store(MemoryBackend())
        svc = await store.update(lambda tx: tx.create(service("big", count)))
        orch = ReplicatedOrchestrator(store, RestartSupervisor(store), UpdateSupervisor(store))
        await store.update(lambda tx: orch.reconcile(tx, svc))
        while orch.unfinished():
            await store.update(lambda tx: orch._handle(tx, []))

        def pend(tx: Tx, task_id: str) -> None:
            t = tx.get_task(task_id)
            assert t is not None
            tx.update(set_status(t, TaskState.PENDING, "pending task scheduling"))

        await store.batch([t.id for t in store.view().tasks()], pend)
        sched = Scheduler(store)  # no node: every task fits nowhere
        sched.load(store.view())
        await sched.tick()  # writes each task's "no suitable node"
        assert len(sched.parked) == count
        sched._unpark()  # (a node changed) every task is tried again: no write this time
        ticks = 0

        async def probe() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        prober = asyncio.create_task(probe())
        await asyncio.sleep(0)
        before = ticks
        index = store.index
        await sched.tick()
        prober.cancel()
        assert store.index == index and len(sched.parked) == count
        assert ticks - before >= 2

    asyncio.run(main())


def test_a_loop_with_a_backlog_lets_the_event_loop_turn_between_its_rounds() -> None:
    """A queue's get() returns at once when it holds something: without a turn in
    Watcher.__anext__, a loop behind by many transactions would take them all in one
    turn of the event loop."""

    async def main() -> None:
        store = Store(MemoryBackend())
        watcher = store.watch("node")
        for i in range(5):
            await store.update(lambda tx, i=i: tx.create(node(i)))
        ticks = 0

        async def probe() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        prober = asyncio.create_task(probe())
        await asyncio.sleep(0)
        seen = []
        for _ in range(5):
            await watcher.__anext__()
            seen.append(ticks)
        prober.cancel()
        assert all(b > a for a, b in zip(seen, seen[1:], strict=False)), seen

    asyncio.run(main())


def test_a_new_task_leaves_nothing_for_the_garbage_collector_to_walk() -> None:
    """The store holds 100k tasks: neither a task nor its meta may hold an object the
    collector tracks (a full collection walks every one, the event loop stopped)."""
    import gc

    from shoal.manager.orchestrator.task import new_task
    from shoal.types.meta import ServiceMeta

    task, meta = new_task(service("web"), ServiceMeta(spec_version=1), 1)
    for obj in (task, meta, task.status, meta.host_ports, task.labels):
        assert not gc.is_tracked(obj), obj


def test_what_waits_for_a_commit_or_a_watcher_is_not_walked_by_the_collector() -> None:
    """A transaction's events and records wait for the commit, and the events in every
    watcher's queue, long enough to reach the collector's oldest generation: they are
    not tracked (each full collection would walk them, the event loop stopped)."""
    import gc

    from shoal.manager.store import Event, Record

    async def main() -> None:
        store = Store(MemoryBackend())
        watcher = store.watch("node")
        backend_hold = store._backend
        assert isinstance(backend_hold, MemoryBackend)
        backend_hold.hold()
        write = asyncio.create_task(store.update(lambda tx: tx.create(node(1))))
        await asyncio.sleep(0)
        (applied,) = store._pending
        assert applied.records and not any(gc.is_tracked(r) for r in applied.records)
        backend_hold.release()
        await write
        (event,) = await watcher.__anext__()
        assert isinstance(event, Event) and not gc.is_tracked(event)
        assert not gc.is_tracked(Record("node", "n1", b"{}"))

    asyncio.run(main())
