"""The store's snapshot (shoal/manager/store/snapshot.py): what the API's front door
reads on its own thread. It shows what is durable and nothing applied but not yet
committed, every write acknowledged before it, and the running counts the service list
shows (down nodes left out), as the routes on the event loop count them."""

from __future__ import annotations

import asyncio

import msgspec

from shoal.manager.store import MemoryBackend, Store
from shoal.types.node import NodeStatus
from shoal.types.task import TaskState

from .test_store_contract import node, service, task


def test_the_snapshot_shows_what_is_durable_only() -> None:
    async def main() -> None:
        backend = MemoryBackend()
        store = Store(backend)
        assert store.snapshot.services == () and store.snapshot.nodes == ()
        svc = service("web", replicas=2)
        await store.update(lambda tx: tx.create(svc))
        # acknowledged, so in the snapshot
        assert [s.id for s in store.snapshot.services] == ["web"]
        first = store.snapshot
        # applied but not committed: not shown
        backend.hold()
        write = asyncio.create_task(
            store.update(lambda tx: tx.create(task("t1", svc, 1, TaskState.RUNNING)))
        )
        await asyncio.sleep(0)
        assert store.view().durable_running("web") == 0
        assert store.snapshot is first
        assert store.snapshot.running_tasks("web") == 0
        backend.release()
        await write
        assert store.snapshot.running_tasks("web") == 1
        assert store.snapshot.index == store.durable_index

    asyncio.run(main())


def test_running_counts_follow_starts_stops_moves_and_down_nodes() -> None:
    async def main() -> None:
        store = Store(MemoryBackend())
        svc = service("web", replicas=3)
        await store.update(
            lambda tx: (tx.create(svc), tx.create(node("n1")), tx.create(node("n2")))
        )
        t1 = task("t1", svc, 1, TaskState.RUNNING)
        t2 = msgspec.structs.replace(task("t2", svc, 2, TaskState.RUNNING), node_id="n2")
        t3 = task("t3", svc, 3, TaskState.ASSIGNED)
        await store.update(lambda tx: [tx.create(t) for t in (t1, t2, t3)])
        snap = store.snapshot
        assert snap.running_tasks("web") == 2
        assert [n.id for n in snap.nodes] == ["n1", "n2"]
        assert snap.services[0].version.index == store.view().get_service("web").version.index

        # n2 goes down: its task no longer counts (as ReadTx.durable_running(excluding))
        def down(tx: object) -> None:
            n2 = store.view().get_node("n2")
            assert n2 is not None
            tx.update(msgspec.structs.replace(n2, status=NodeStatus(state="down")))  # type: ignore[attr-defined]

        await store.update(down)
        assert store.snapshot.running_tasks("web") == 1
        assert store.view().durable_running("web", {"n2"}) == 1

        # a task stops, another is removed: the counts go to zero and the entry with them
        def stop(tx: object) -> None:
            t = store.view().get_task("t1")
            assert t is not None
            failed = msgspec.structs.replace(
                t, status=msgspec.structs.replace(t.status, state=TaskState.FAILED.wire)
            )
            tx.update(failed)  # type: ignore[attr-defined]
            tx.delete("task", "t2")  # type: ignore[attr-defined]

        await store.update(stop)
        assert store.snapshot.running_tasks("web") == 0
        assert "web" not in store.snapshot.running

        await store.update(lambda tx: tx.delete("service", "web"))
        assert store.snapshot.services == ()

    asyncio.run(main())


def test_a_restarted_store_starts_from_what_it_loads() -> None:
    async def main() -> None:
        backend = MemoryBackend()
        store = Store(backend)
        svc = service("web")
        await store.update(lambda tx: (tx.create(svc), tx.create(node("n1"))))
        await store.update(lambda tx: tx.create(task("t1", svc, 1, TaskState.RUNNING)))
        again = Store(backend)
        assert [s.id for s in again.snapshot.services] == ["web"]
        assert [n.id for n in again.snapshot.nodes] == ["n1"]
        assert again.snapshot.running_tasks("web") == 1
        assert again.snapshot.index == again.durable_index

    asyncio.run(main())
