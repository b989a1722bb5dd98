"""A commit that finds the disk full takes back what it held, and the store goes on.

The transactions of the failed group were applied to the tables in order, and others
may have been applied on top of them while the commit was in flight: every one of them
is undone, newest first, so the tables are exactly what is durable; each of their
writers is told "no space left on device" (none was acknowledged); watchers saw none of
them and are closed, so their loops resync; and once the backend has room again, the
next write commits. A failure other than a full disk still stops the store (the
backend may be in doubt). The SQLite backend reports SQLITE_FULL as DiskFull (its page
limit stands in for a small disk here)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import msgspec
import pytest

from shoal.errors import Internal
from shoal.manager.dispatcher.dispatcher import Dispatcher
from shoal.manager.store import DiskFull, MemoryBackend, Record, Store, Tx, WatcherClosed
from shoal.manager.store.memory import MSG_DISK_FULL
from shoal.manager.store.sqlite import SQLiteBackend
from shoal.types.agent import TaskStatusUpdate
from shoal.types.node import Node, NodeSpec, NodeStatus
from shoal.types.task import TaskState, TaskStatus

from .test_store_contract import node, service, task

WAIT_S = 5.0


class FillingBackend(MemoryBackend):
    """A MemoryBackend whose disk is full while `full` is set: its commits then write
    nothing and raise DiskFull. `gate`, when set, holds each commit until released (a
    commit in flight while others apply on top of it)."""

    def __init__(self) -> None:
        super().__init__()
        self.full = False
        self.failed_commits = 0

    async def commit(self, index: int, records: list[Record]) -> None:
        await self._released.wait()
        if self.full:
            self.failed_commits += 1
            raise DiskFull("cannot write state.db on the disk mounted on /data (0 bytes free)")
        await super().commit(index, records)


def snapshot(store: Store) -> dict[str, dict[str, object]]:
    """Every table of the store, by kind then ID, with the metadata beside each object."""
    view = store.view()
    return {
        kind: {o.id: (o, view.meta(kind, o.id)) for o in view.all(kind)}
        for kind in ("node", "service", "task")
    }


def indexes(store: Store) -> tuple[object, ...]:
    t = store._tables
    return (
        {k: set(v) for k, v in t.tasks_by_service.items() if v},
        {k: set(v) for k, v in t.tasks_by_node.items() if v},
        {k: dict(v) for k, v in t.running.items()},
        {k: dict(v) for k, v in t.durable_running.items()},
    )


async def seeded(backend: FillingBackend) -> Store:
    store = Store(backend)
    svc = service("web", replicas=2)

    def seed(tx: Tx) -> None:
        tx.create(node("n1"))
        tx.create(svc)
        tx.create(task("t1", svc, 1, TaskState.RUNNING))
        tx.create(task("t2", svc, 2, TaskState.RUNNING))

    await store.update(seed)
    return store


def test_a_full_disk_takes_back_the_group_and_what_was_applied_on_top() -> None:
    async def main() -> None:
        backend = FillingBackend()
        store = await seeded(backend)
        before, before_indexes = snapshot(store), indexes(store)
        durable = store.durable_index
        watcher = store.watch()
        backend.full = True
        backend.hold()

        def first(tx: Tx) -> None:  # the group in flight
            t1 = tx.get_task("t1")
            assert t1 is not None
            failed = TaskStatus(timestamp="x", state=TaskState.FAILED.wire, message="boom")
            tx.update(msgspec.structs.replace(t1, status=failed))
            tx.delete("task", "t2")
            tx.create(node("n2"))

        def on_top(tx: Tx) -> None:  # applied while the first commit is in flight
            n2 = tx.get_node("n2")
            assert n2 is not None  # reads what `first` wrote
            tx.update(
                msgspec.structs.replace(n2, spec=NodeSpec(role="worker", availability="drain"))
            )
            tx.create(task("t3", service("web"), 3, TaskState.RUNNING))

        w1 = asyncio.create_task(store.update(first))
        for _ in range(5):
            await asyncio.sleep(0)
        assert store._flushing is not None  # the first commit is in flight, held
        w2 = asyncio.create_task(store.update(on_top))
        for _ in range(5):
            await asyncio.sleep(0)
        assert store.view().get_task("t3") is not None
        backend.release()

        for write in (w1, w2):
            with pytest.raises(Internal) as info:
                await asyncio.wait_for(write, WAIT_S)
            assert info.value.status == 500
            assert info.value.message.startswith(MSG_DISK_FULL)
            assert "/data" in info.value.message
        # The tables are what is durable again, indexes included.
        assert snapshot(store) == before
        assert indexes(store) == before_indexes
        assert store.durable_index == durable
        assert store.statistics()["rolled_back"] == 2
        # Watchers saw nothing of it, and are closed so their loops resync.
        with pytest.raises(WatcherClosed, match="disk full"):
            await asyncio.wait_for(watcher.__anext__(), WAIT_S)

        # Room again: the next write commits, with an index never handed out before.
        backend.full = False
        created = await store.update(lambda tx: tx.create(node("n3")))
        assert created.version.index > durable + 2
        assert store.durable_index == created.version.index
        assert ("node", "n3") in backend.objects and ("node", "n2") not in backend.objects
        # What a restarted store would load is what this one holds.
        assert snapshot(Store(backend)) == snapshot(store)

    asyncio.run(main())


def test_each_write_fails_alone_while_the_disk_stays_full() -> None:
    async def main() -> None:
        backend = FillingBackend()
        store = await seeded(backend)
        backend.full = True
        for i in range(3):
            with pytest.raises(Internal, match="no space left on device"):
                await store.update(lambda tx, i=i: tx.create(node(f"x{i}")))
        assert backend.failed_commits == 3
        assert store.view().get_node("x0") is None
        # reads that wait for what they see to be durable do not hang either
        await asyncio.wait_for(store.settled(), WAIT_S)
        backend.full = False
        await store.update(lambda tx: tx.create(node("x9")))
        assert ("node", "x9") in backend.objects

    asyncio.run(main())


def test_a_read_waiting_on_a_write_taken_back_goes_on_without_it() -> None:
    async def main() -> None:
        backend = FillingBackend()
        store = await seeded(backend)
        backend.full = True
        backend.hold()
        write = asyncio.create_task(store.update(lambda tx: tx.create(node("doomed"))))
        await asyncio.sleep(0)
        read = asyncio.create_task(store.settled())
        await asyncio.sleep(0)
        assert not read.done()
        backend.release()
        await asyncio.wait_for(read, WAIT_S)  # no error: the read shows what is durable
        assert store.view().get_node("doomed") is None
        with pytest.raises(Internal, match="no space left on device"):
            await write

    asyncio.run(main())


def test_a_batch_that_loses_a_chunk_fails() -> None:
    async def main() -> None:
        backend = FillingBackend()
        store = await seeded(backend)
        backend.full = True
        with pytest.raises(Internal, match="no space left on device"):
            await store.batch(range(3), lambda tx, i: tx.create(node(f"b{i}")))
        assert not any(store.view().get_node(f"b{i}") for i in range(3))

    asyncio.run(main())


def test_a_failure_other_than_a_full_disk_still_stops_the_store() -> None:
    class Broken(MemoryBackend):
        async def commit(self, index: int, records: list[Record]) -> None:
            raise OSError(5, "Input/output error")

    async def main() -> None:
        store = Store(Broken())
        with pytest.raises(Internal, match="cannot commit"):
            await store.update(lambda tx: tx.create(node("n1")))
        with pytest.raises(Internal, match="cannot commit"):
            await store.update(lambda tx: tx.create(node("n2")))

    asyncio.run(main())


def test_reports_not_written_are_written_by_a_later_round() -> None:
    """A task's RUNNING report that the store took back is kept by the dispatcher and
    written once the disk has room again."""

    async def main() -> None:
        backend = FillingBackend()
        store = Store(backend)
        svc = service("web")
        await store.update(
            lambda tx: (
                tx.create(node("n1")),
                tx.create(task("t1", svc, 1, TaskState.STARTING)),
            )
        )
        dispatcher = Dispatcher(store)
        backend.full = True
        running = TaskStatus(timestamp="x", state=TaskState.RUNNING.wire, message="started")
        await dispatcher.update_task_status("n1", [TaskStatusUpdate(task_id="t1", status=running)])
        with pytest.raises(Internal):
            await dispatcher._flush()
        assert store.view().get_task("t1").state == TaskState.STARTING  # type: ignore[union-attr]
        backend.full = False
        await dispatcher._flush()
        assert store.view().get_task("t1").state == TaskState.RUNNING  # type: ignore[union-attr]

    asyncio.run(main())


def test_sqlite_reports_a_full_disk_and_commits_again_once_there_is_room(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"

    async def main() -> None:
        backend = SQLiteBackend(path)
        store = Store(backend)
        await store.update(lambda tx: tx.create(node("kept")))
        pages = backend._db.execute("PRAGMA page_count").fetchone()[0]
        # A disk with room for a few pages more (SQLite answers SQLITE_FULL past it).
        backend._db.execute(f"PRAGMA max_page_count={pages + 2}")
        big = {"blob": "x" * 200_000}

        def bulky(tx: Tx) -> None:
            spec = NodeSpec(role="worker", availability="active", labels=big)
            tx.create(Node(id="big", spec=spec, status=NodeStatus(state="ready")))

        with pytest.raises(Internal) as info:
            await store.update(bulky)
        assert info.value.message.startswith(MSG_DISK_FULL), info.value.message
        assert str(path) in info.value.message
        assert store.view().get_node("big") is None
        backend._db.execute("PRAGMA max_page_count=1073741823")
        await store.update(bulky)
        store.close()

    asyncio.run(main())
    reopened = Store(SQLiteBackend(path))
    try:
        assert {n.id for n in reopened.view().nodes()} == {"kept", "big"}
    finally:
        reopened.close()


def test_sqlite_full_is_told_apart_from_other_errors() -> None:
    from shoal.manager.store.sqlite import _disk_full

    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
    other = sqlite3.OperationalError("disk I/O error")
    other.sqlite_errorcode = sqlite3.SQLITE_IOERR  # type: ignore[attr-defined]
    assert _disk_full(full)
    assert not _disk_full(other)
    assert _disk_full(OSError(28, "No space left on device"))
    assert not _disk_full(OSError(5, "Input/output error"))
