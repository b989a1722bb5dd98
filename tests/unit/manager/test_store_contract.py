"""The store's contract as the control loops rely on it: a write is acknowledged only
once durable, concurrent writes share commits, a transaction that raises leaves no
trace (not in the tables, not in the effects that follow a commit), a foreign commit
reaches the tables and the watchers, and a slow watcher is closed, not waited for."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from shoal.manager.loops import LoopStats, reconcile_loop
from shoal.manager.manager import Manager
from shoal.manager.orchestrator.replicated import ReplicatedOrchestrator
from shoal.manager.orchestrator.restart import RestartSupervisor
from shoal.manager.orchestrator.update import UpdateSupervisor
from shoal.manager.store import RUNNING_TOPIC, MemoryBackend, Record, Store, Tx, WatcherClosed
from shoal.manager.store.memory import WATCH_QUEUE, encode_record
from shoal.types.meta import ServiceMeta, TaskMeta
from shoal.types.node import Node, NodeSpec, NodeStatus
from shoal.types.service import (
    ContainerSpec,
    ReplicatedService,
    Service,
    ServiceMode,
    ServiceSpec,
    TaskSpec,
)
from shoal.types.task import Task, TaskState, TaskStatus

WAIT_S = 5.0


def node(node_id: str) -> Node:
    return Node(
        id=node_id,
        spec=NodeSpec(role="worker", availability="active"),
        status=NodeStatus(state="ready"),
    )


def service(service_id: str, replicas: int = 1) -> Service:
    spec = ServiceSpec(
        name=service_id,
        mode=ServiceMode(replicated=ReplicatedService(replicas=replicas)),
        task_template=TaskSpec(container_spec=ContainerSpec(image="busybox")),
    )
    return Service(id=service_id, spec=spec)


def task(task_id: str, svc: Service, slot: int, state: TaskState) -> Task:
    return Task(
        id=task_id,
        service_id=svc.id,
        slot=slot,
        node_id="n1",
        spec=svc.spec.task_template or TaskSpec(),
        status=TaskStatus(timestamp="2026-01-01T00:00:00Z", state=state.wire, message=""),
        desired_state=TaskState.RUNNING.wire,
    )


# --------------------------------------------------------------------------- durability


def test_a_write_is_acknowledged_only_once_durable() -> None:
    async def main() -> None:
        backend = MemoryBackend()
        store = Store(backend)
        watcher = store.watch("node")
        backend.hold()
        write = asyncio.create_task(store.update(lambda tx: tx.create(node("n1"))))
        for _ in range(10):
            await asyncio.sleep(0)
        # applied (reads see it), not durable, not acknowledged, not published
        assert store.view().get_node("n1") is not None
        assert not write.done()
        assert backend.objects == {}
        assert watcher.queue.empty()
        backend.release()
        created = await asyncio.wait_for(write, WAIT_S)
        assert ("node", "n1") in backend.objects
        assert [e.obj for e in await watcher.__anext__()] == [created]

    asyncio.run(main())


def test_concurrent_writes_share_commits() -> None:
    async def main() -> None:
        backend = MemoryBackend()
        store = Store(backend)
        writes = [store.update(lambda tx, i=i: tx.create(node(f"n{i}"))) for i in range(50)]
        await asyncio.gather(*writes)
        assert store.commits == 50
        # all 50 were applied before the first commit ran: they share it
        assert backend.commits == store.group_commits == 1
        assert store.durable_index == store.index == 50

    asyncio.run(main())


def test_a_failed_commit_acknowledges_nothing_more() -> None:
    class Broken(MemoryBackend):
        async def commit(self, index: int, records: list[Record]) -> None:
            raise OSError("disk full")

    async def main() -> None:
        store = Store(Broken())
        with pytest.raises(Exception, match="cannot commit"):
            await store.update(lambda tx: tx.create(node("n1")))
        with pytest.raises(Exception, match="cannot commit"):
            await store.update(lambda tx: tx.create(node("n2")))

    asyncio.run(main())


def test_a_read_waits_for_the_writes_to_what_it_shows_only() -> None:
    """settled(topics): a read of services does not wait behind a commit of task writes
    in flight; a read of tasks does, and so does one naming nothing in particular."""

    async def main() -> None:
        backend = MemoryBackend()
        store = Store(backend)
        svc = service("s1")
        await store.update(lambda tx: tx.create(svc))
        backend.hold()
        write = asyncio.create_task(
            store.update(lambda tx: tx.create(task("t1", svc, 1, TaskState.PENDING)))
        )
        await asyncio.sleep(0)
        await asyncio.wait_for(store.settled(["service", "node", RUNNING_TOPIC]), WAIT_S)
        await asyncio.wait_for(store.settled([]), WAIT_S)
        reads = [asyncio.create_task(store.settled(t)) for t in (["task"], None)]
        for _ in range(10):
            await asyncio.sleep(0)
        assert not any(r.done() for r in reads) and not write.done()
        backend.release()
        await asyncio.wait_for(asyncio.gather(write, *reads), WAIT_S)

    asyncio.run(main())


def test_a_task_that_starts_or_stops_running_is_waited_for_by_running_counts() -> None:
    async def main() -> None:
        backend = MemoryBackend()
        store = Store(backend)
        svc = service("s1")
        await store.update(lambda tx: tx.create(svc))
        created = await store.update(lambda tx: tx.create(task("t1", svc, 1, TaskState.PENDING)))
        backend.hold()
        running = msgspec.structs.replace(
            created, status=msgspec.structs.replace(created.status, state="running")
        )
        write = asyncio.create_task(store.update(lambda tx: tx.update(running)))
        await asyncio.sleep(0)
        read = asyncio.create_task(store.settled([RUNNING_TOPIC]))
        for _ in range(10):
            await asyncio.sleep(0)
        assert not read.done()
        backend.release()
        await asyncio.wait_for(asyncio.gather(write, read), WAIT_S)
        assert store._last_write == {}  # nothing kept once durable

    asyncio.run(main())


def test_durable_running_counts_follow_commits_not_writes() -> None:
    """ReadTx.durable_running counts what is durable: a task that came to run counts
    once its write is committed, not while the commit is in flight; a move to another
    node, a stop and a removal are followed the same way; a restarted store counts what
    it loaded; the nodes named are left out."""

    async def main() -> None:
        backend = MemoryBackend()
        store = Store(backend)
        svc = service("s1", replicas=3)
        await store.update(lambda tx: tx.create(svc))
        made = await store.update(
            lambda tx: [tx.create(task(f"t{i}", svc, i, TaskState.PENDING)) for i in range(3)]
        )
        backend.hold()

        def run_all(tx: Tx) -> None:
            for t in made:
                cur = tx.get_task(t.id)
                assert cur is not None
                status = msgspec.structs.replace(cur.status, state=TaskState.RUNNING.wire)
                node_id = "n2" if t.id == "t2" else cur.node_id
                tx.update(msgspec.structs.replace(cur, status=status, node_id=node_id))

        write = asyncio.create_task(store.update(run_all))
        await asyncio.sleep(0)
        assert store.view().running_by_node("s1") == {"n1": 2, "n2": 1}  # applied
        assert store.view().durable_running("s1") == 0  # not durable yet
        backend.release()
        await asyncio.wait_for(write, WAIT_S)
        view = store.view()
        assert view.durable_running("s1") == 3
        assert view.durable_running("s1", {"n2"}) == 2
        assert view.durable_running("s1", {"n1", "n2", "n9"}) == 0
        assert view.durable_running("nope") == 0
        assert Store(backend).view().durable_running("s1", {"n2"}) == 2

        def stop_one_remove_one(tx: Tx) -> None:
            t0 = tx.get_task("t0")
            assert t0 is not None
            done = msgspec.structs.replace(t0.status, state=TaskState.COMPLETE.wire)
            tx.update(msgspec.structs.replace(t0, status=done))
            tx.delete("task", "t2")

        await store.update(stop_one_remove_one)
        assert store.view().durable_running("s1") == 1
        assert store._tables.durable_running == store._tables.running

    asyncio.run(main())


# --------------------------------------------------------------------------- purity


def test_a_transaction_that_raises_leaves_no_trace() -> None:
    """The orchestrator's round both restarts a failed task and starts an updater for an
    out-of-date slot, then raises: no task is written, no updater runs, no restart is
    counted, no held task is armed. The next round (a fresh sweep) does it all once."""

    async def main() -> None:
        store = Store(MemoryBackend())
        svc = service("web", replicas=2)

        def seed(tx: Tx) -> None:
            tx.create(node("n1"))
            tx.create(svc, ServiceMeta(spec_version=2))
            tx.create(task("failed", svc, 1, TaskState.FAILED), TaskMeta(spec_version=2))
            tx.create(task("stale", svc, 2, TaskState.RUNNING), TaskMeta(spec_version=1))

        await store.update(seed)
        before = store.index
        restarts, updates = RestartSupervisor(store), UpdateSupervisor(store)
        orch = ReplicatedOrchestrator(store, restarts, updates)
        real = orch.reconcile
        failed = asyncio.Event()

        def reconcile_then_fail(tx: Tx, s: Service) -> None:
            real(tx, s)
            if not failed.is_set():
                failed.set()
                raise RuntimeError("injected")

        orch.reconcile = reconcile_then_fail  # type: ignore[method-assign]
        stats = LoopStats()
        stopped = asyncio.Event()
        started = asyncio.Event()

        async def after() -> None:
            await orch._after_commit()
            started.set()

        loop = asyncio.create_task(
            reconcile_loop(
                store,
                ("service", "task", "node"),
                orch._fresh(orch._check_all),
                orch._fresh(orch._handle),
                stopped,
                "test",
                stats,
                after,
            )  # fmt: skip
        )
        try:
            await asyncio.wait_for(failed.wait(), WAIT_S)
            assert stats.failures == 1  # counted as it raised, before the loop yielded
            # the failed round: nothing written, nothing started, nothing counted
            assert store.index == before
            assert updates.statistics()["updates_running"] == 0
            assert restarts.restarts == 0
            assert {t.id for t in store.view().tasks()} == {"failed", "stale"}
            # the loop resyncs (after its backoff) and does it once
            await asyncio.wait_for(started.wait(), WAIT_S)
            assert updates.statistics()["updates_running"] == 1
            assert restarts.restarts == 1
            assert len(store.view().tasks()) == 3
        finally:
            stopped.set()
            updates.stop()
            loop.cancel()
            await asyncio.gather(loop, return_exceptions=True)

    asyncio.run(main())


# --------------------------------------------------------------------------- foreign commits


def test_a_foreign_commit_reaches_the_tables_the_watchers_and_the_orchestrator() -> None:
    """A service created by "another manager" (a commit the backend feeds in) is in the
    tables, published to watchers, and reconciled: its task is made and scheduled."""

    async def main() -> None:
        backend = MemoryBackend()
        store = Store(backend)
        await store.update(lambda tx: tx.create(node("n1")))
        manager = Manager(store)
        watcher = store.watch("service")
        tasks = store.watch("task")
        manager.start()
        try:
            await asyncio.sleep(0)
            svc = service("elsewhere")
            commit = backend.inject([encode_record("service", svc, ServiceMeta(spec_version=1))])
            events = await asyncio.wait_for(watcher.__anext__(), WAIT_S)
            assert [(e.action, e.obj.id) for e in events] == [("create", "elsewhere")]
            assert store.view().get_service("elsewhere") == svc
            assert store.durable_index >= commit.index

            async def scheduled() -> Task:
                async for events in tasks:
                    for e in events:
                        if e.obj.service_id == "elsewhere" and e.obj.node_id == "n1":
                            return e.obj  # type: ignore[no-any-return]
                raise AssertionError("the watch ended")

            t = await asyncio.wait_for(scheduled(), WAIT_S)
            assert t.slot == 1 and t.state >= TaskState.ASSIGNED
        finally:
            watcher.close()
            tasks.close()
            await manager.stop()

    asyncio.run(main())


# --------------------------------------------------------------------------- watchers


def test_a_watcher_that_falls_behind_is_closed_with_a_reason() -> None:
    async def main() -> None:
        store = Store(MemoryBackend())
        slow = store.watch("node")
        for i in range(WATCH_QUEUE + 1):
            await store.update(lambda tx, i=i: tx.create(node(f"n{i}")))
        assert slow.closed_reason == f"fell {WATCH_QUEUE} transactions behind"
        drained = 0
        with pytest.raises(WatcherClosed):
            while True:
                await slow.__anext__()
                drained += 1
        assert drained == WATCH_QUEUE
        # the store goes on without it
        await store.update(lambda tx: tx.create(node("late")))
        assert store.statistics()["watchers"] == 0

    asyncio.run(main())


def test_a_closed_watcher_read_as_the_loops_read_it_raises_instead_of_waiting() -> None:
    """The loops take a round as one transaction (`__anext__`) and what else is queued
    (`get_nowait_all`), which takes the closed watcher's wake-up with the rest: the next
    `__anext__` must raise, not wait for events that will never come (a scheduler that
    waited so left tasks pending for good after a failure wave, issue 14)."""

    async def main() -> None:
        store = Store(MemoryBackend())
        slow = store.watch("node")
        for i in range(WATCH_QUEUE + 1):
            await store.update(lambda tx, i=i: tx.create(node(f"n{i}")))
        assert slow.closed_reason is not None
        with pytest.raises(WatcherClosed):
            while True:
                events = await asyncio.wait_for(slow.__anext__(), 5)
                events.extend(slow.get_nowait_all(500))

    asyncio.run(main())


def test_a_view_cannot_write() -> None:
    store = Store(MemoryBackend())
    view = store.view()
    for write in ("create", "update", "delete"):
        assert not hasattr(view, write), write


# --------------------------------------------------------------------------- restarts


def test_the_sweep_removes_the_tasks_of_a_service_removed_before_a_crash() -> None:
    """The service's removal was committed but the manager was killed before the
    orchestrator handled its event: at start, the sweep finds its tasks and sets them to
    be removed, as the remove event would have."""

    async def main() -> None:
        backend = MemoryBackend()
        store = Store(backend)
        svc = service("gone", replicas=1)
        kept = service("kept", replicas=1)

        def seed(tx: Tx) -> None:
            tx.create(node("n1"))
            tx.create(kept, ServiceMeta(spec_version=1))
            tx.create(task("orphan", svc, 1, TaskState.RUNNING), TaskMeta(spec_version=1))
            tx.create(task("mine", kept, 1, TaskState.RUNNING), TaskMeta(spec_version=1))

        await store.update(seed)  # the state a crash left: a task, no service
        restarts, updates = RestartSupervisor(store), UpdateSupervisor(store)
        orch = ReplicatedOrchestrator(store, restarts, updates)
        await store.update(orch._fresh(orch._check_all))
        orphan, mine = store.view().get_task("orphan"), store.view().get_task("mine")
        assert orphan is not None and orphan.desired == TaskState.REMOVE
        assert mine is not None and mine.desired == TaskState.RUNNING
        updates.stop()

    asyncio.run(main())
