"""The store: one global index, all-or-nothing transactions, watches, batches, SQLite.

Every test that does not depend on durability runs against both backends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from shoal.errors import OutOfSequence
from shoal.manager.store import Event, MemoryBackend, Store, Tx
from shoal.manager.store.memory import MAX_CHANGES_PER_BATCH
from shoal.manager.store.sqlite import SQLiteBackend
from shoal.types.node import Node, NodeSpec, NodeStatus
from shoal.types.service import ReplicatedService, Service, ServiceMode, ServiceSpec
from shoal.types.swarm import Cluster
from shoal.types.task import Task, TaskState, TaskStatus

from ..storeutil import commit, commit_batch


def make_node(node_id: str) -> Node:
    return Node(
        id=node_id,
        spec=NodeSpec(role="worker", availability="active"),
        status=NodeStatus(state="ready"),
    )


def make_service(service_id: str, name: str = "web") -> Service:
    spec = ServiceSpec(name=name, mode=ServiceMode(replicated=ReplicatedService(replicas=1)))
    return Service(id=service_id, spec=spec)


def make_task(task_id: str, service_id: str = "s1", node_id: str | None = None) -> Task:
    return Task(
        id=task_id,
        service_id=service_id,
        node_id=node_id,
        status=TaskStatus(timestamp="", state=TaskState.PENDING.wire, message="pending"),
        desired_state=TaskState.RUNNING.wire,
    )


def make_cluster() -> Cluster:
    return Cluster(id="c1", subnet_size=24, data_path_port=4789)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    backend = MemoryBackend() if request.param == "memory" else SQLiteBackend(tmp_path / "s.db")
    s = Store(backend)
    yield s
    s.close()


def ids(objs: list[Task]) -> set[str]:
    return {o.id for o in objs}


def snapshot(store: Store) -> dict[str, object]:
    """Everything a reader can see, for before/after comparisons."""
    view = store.view()
    tasks = view.tasks()
    return {
        "index": store.index,
        "nodes": sorted(view.nodes(), key=lambda n: n.id),
        "services": sorted(view.services(), key=lambda s: s.id),
        "tasks": sorted(tasks, key=lambda t: t.id),
        "cluster": view.cluster(),
        "by_service": {s: ids(view.tasks_of_service(s)) for s in {t.service_id for t in tasks}},
        "by_node": {n: ids(view.tasks_on_node(n)) for n in ("n1", "n2", "n3")},
    }


# ---------------------------------------------------------------------------------- index


def test_a_new_store_starts_at_index_zero(store: Store) -> None:
    assert store.index == 0
    assert store.view().nodes() == []


def test_every_write_bumps_one_index_shared_by_all_kinds(store: Store) -> None:
    node = commit(store, lambda tx: tx.create(make_node("n1")))
    assert (store.index, node.version.index) == (1, 1)
    service = commit(store, lambda tx: tx.create(make_service("s1")))
    assert (store.index, service.version.index) == (2, 2)
    task = commit(store, lambda tx: tx.create(make_task("t1", "s1", "n1")))
    assert (store.index, task.version.index) == (3, 3)
    cluster = commit(store, lambda tx: tx.create(make_cluster()))
    assert (store.index, cluster.version.index) == (4, 4)

    node2 = commit(
        store, lambda tx: tx.update(msgspec.structs.replace(node, description=node.description))
    )
    assert (store.index, node2.version.index) == (5, 5)
    commit(store, lambda tx: tx.delete("task", "t1"))
    assert store.index == 6

    view = store.view()
    assert view.get_node("n1") == node2
    assert view.get_service("s1") == service
    assert view.get_task("t1") is None
    assert view.cluster() == cluster


def test_objects_are_stamped_with_times(store: Store) -> None:
    created = commit(store, lambda tx: tx.create(make_node("n1")))
    assert created.created_at and created.created_at == created.updated_at
    updated = commit(store, lambda tx: tx.update(created))
    assert updated.created_at == created.created_at
    assert updated.updated_at > created.updated_at  # RFC 3339, fixed width: sorts as time


def test_all_writes_of_one_transaction_share_one_index(store: Store) -> None:
    commit(store, lambda tx: tx.create(make_node("n1")))

    def many(tx: Tx) -> list[object]:
        node = tx.get_node("n1")
        assert node is not None
        return [
            tx.create(make_service("s1")),
            tx.create(make_task("t1", "s1", "n1")),
            tx.create(make_task("t2", "s1")),
            tx.update(node),
        ]

    written = commit(store, many)
    assert store.index == 2
    assert [o.version.index for o in written] == [2, 2, 2, 2]  # type: ignore[attr-defined]
    assert len({o.updated_at for o in written}) == 1  # type: ignore[attr-defined]


def test_a_transaction_without_writes_commits_nothing(store: Store) -> None:
    commit(store, lambda tx: tx.create(make_node("n1")))
    watcher = store.watch()
    assert commit(store, lambda tx: len(tx.nodes())) == 1
    commit(store, lambda tx: tx.delete("node", "missing"))  # deleting nothing is no write
    assert store.index == 1
    assert watcher.queue.empty()


def test_transactions_do_not_nest(store: Store) -> None:
    with pytest.raises(RuntimeError, match="nested"):
        # (driving the inner update by hand: a transaction function cannot await one)
        commit(
            store, lambda tx: store.update(lambda inner: inner.create(make_node("n1"))).send(None)
        )
    assert store.index == 0
    assert store.view().nodes() == []
    commit(store, lambda tx: tx.create(make_node("n1")))  # the store is usable again
    assert store.index == 1


# ------------------------------------------------------------------- optimistic concurrency


def test_update_with_a_stale_version_is_out_of_sequence(store: Store) -> None:
    v1 = commit(store, lambda tx: tx.create(make_service("s1")))
    v2 = commit(
        store, lambda tx: tx.update(msgspec.structs.replace(v1, spec=ServiceSpec(name="a")))
    )
    with pytest.raises(OutOfSequence) as caught:
        commit(store, lambda tx: tx.update(msgspec.structs.replace(v1, spec=ServiceSpec(name="b"))))
    # dockerd's words and status for `service update --version` with a stale N
    assert caught.value.message == "rpc error: code = Unknown desc = update out of sequence"
    assert caught.value.status == 500
    assert store.index == 2
    assert store.view().get_service("s1") == v2


def test_update_with_a_version_from_the_future_is_out_of_sequence(store: Store) -> None:
    v1 = commit(store, lambda tx: tx.create(make_node("n1")))
    future = msgspec.structs.replace(v1, version=msgspec.structs.replace(v1.version, index=99))
    with pytest.raises(OutOfSequence):
        commit(store, lambda tx: tx.update(future))


def test_create_twice_and_update_of_a_missing_object_fail(store: Store) -> None:
    commit(store, lambda tx: tx.create(make_node("n1")))
    with pytest.raises(KeyError):
        commit(store, lambda tx: tx.create(make_node("n1")))
    with pytest.raises(KeyError):
        commit(store, lambda tx: tx.update(make_node("n2")))
    assert store.index == 1


# ------------------------------------------------------------------------------- rollback


def populate(store: Store) -> None:
    def fill(tx: Tx) -> None:
        for n in ("n1", "n2", "n3"):
            tx.create(make_node(n))
        tx.create(make_service("s1"))
        tx.create(make_service("s2", "db"))
        tx.create(make_task("t1", "s1", "n1"))
        tx.create(make_task("t2", "s1", "n2"))
        tx.create(make_task("t3", "s2", "n2"))
        tx.create(make_task("t4", "s2"))

    commit(store, fill)


class Boom(Exception):
    pass


def fail(tx: Tx) -> None:
    raise Boom()


def create_task(tx: Tx, i: int) -> None:
    tx.create(make_task(f"t{i}"))


def mess_everything_up(tx: Tx) -> None:
    """Writes of every kind, including task moves that touch both indexes."""
    tx.create(make_node("n9"))
    tx.create(make_service("s3", "new"))
    tx.create(make_task("t5", "s3", "n3"))  # new service, new node entry
    t1 = tx.get_task("t1")
    assert t1 is not None
    tx.update(msgspec.structs.replace(t1, node_id="n3"))  # moves n1 -> n3
    t4 = tx.get_task("t4")
    assert t4 is not None
    tx.update(msgspec.structs.replace(t4, node_id="n1"))  # unassigned -> n1
    tx.delete("task", "t3")  # s2 and n2 lose one
    tx.delete("task", "t2")  # n2 left empty
    moved = tx.get_task("t5")
    assert moved is not None
    tx.update(msgspec.structs.replace(moved, node_id="n2"))  # written twice in one tx
    tx.delete("node", "n1")
    s1 = tx.get_service("s1")
    assert s1 is not None
    tx.update(msgspec.structs.replace(s1, spec=ServiceSpec(name="renamed")))
    tx.delete("service", "s2")
    tx.create(make_cluster())


@pytest.mark.parametrize(
    "failure",
    ["exception", "stale-version"],
)
def test_a_failing_transaction_rolls_back_every_write(store: Store, failure: str) -> None:
    populate(store)
    before = snapshot(store)
    assert before["by_node"] == {"n1": {"t1"}, "n2": {"t2", "t3"}, "n3": set()}
    assert before["by_service"] == {"s1": {"t1", "t2"}, "s2": {"t3", "t4"}}
    watcher = store.watch()

    def fn(tx: Tx) -> None:
        mess_everything_up(tx)
        if failure == "exception":
            raise Boom()
        stale = make_node("n2")  # version 0, stored is 1
        tx.update(stale)

    with pytest.raises(Boom if failure == "exception" else OutOfSequence):
        commit(store, fn)
    assert snapshot(store) == before
    assert watcher.queue.empty()


def test_the_rolled_back_state_is_what_a_reload_sees(tmp_path: Path) -> None:
    store = Store(SQLiteBackend(tmp_path / "s.db"))
    populate(store)
    before = snapshot(store)
    with pytest.raises(Boom):
        commit(store, lambda tx: (mess_everything_up(tx), fail(tx)))
    store.close()
    reopened = Store(SQLiteBackend(tmp_path / "s.db"))
    try:
        assert snapshot(reopened) == before
    finally:
        reopened.close()


def test_a_committed_move_updates_both_indexes(store: Store) -> None:
    populate(store)
    commit(store, mess_everything_up)
    view = store.view()
    assert ids(view.tasks_on_node("n1")) == {"t4"}
    assert ids(view.tasks_on_node("n2")) == {"t5"}
    assert ids(view.tasks_on_node("n3")) == {"t1"}
    assert ids(view.tasks_of_service("s1")) == {"t1"}
    assert ids(view.tasks_of_service("s2")) == {"t4"}
    assert ids(view.tasks_of_service("s3")) == {"t5"}
    assert view.get_node("n1") is None
    assert view.get_service("s2") is None
    assert {t.id: t.version.index for t in view.tasks()} == {"t1": 2, "t4": 2, "t5": 2}


# -------------------------------------------------------------------------------- watches


def test_watchers_get_one_list_per_transaction(store: Store) -> None:
    watcher = store.watch()
    commit(store, lambda tx: tx.create(make_node("n1")))

    def two(tx: Tx) -> None:
        tx.create(make_service("s1"))
        tx.create(make_task("t1", "s1", "n1"))

    commit(store, two)
    commit(store, lambda tx: tx.delete("node", "n1"))

    assert watcher.queue.qsize() == 3
    first = watcher.queue.get_nowait()
    second = watcher.queue.get_nowait()
    third = watcher.queue.get_nowait()
    assert [(e.action, e.kind, e.obj.id) for e in first] == [("create", "node", "n1")]
    assert [(e.action, e.kind, e.obj.id) for e in second] == [
        ("create", "service", "s1"),
        ("create", "task", "t1"),
    ]
    assert [(e.action, e.kind, e.obj.id) for e in third] == [("remove", "node", "n1")]
    # events carry the committed (stamped) objects
    assert first[0].obj.version.index == 1
    assert {e.obj.version.index for e in second} == {2}
    assert third[0].old == first[0].obj


def test_update_events_carry_the_old_value(store: Store) -> None:
    node = commit(store, lambda tx: tx.create(make_node("n1")))
    watcher = store.watch("node")
    new = commit(store, lambda tx: tx.update(node))
    [event] = watcher.queue.get_nowait()
    assert event == Event("update", "node", new, node)


def test_watchers_are_filtered_by_kind(store: Store) -> None:
    tasks = store.watch("task")
    nodes_and_services = store.watch("node", "service")
    everything = store.watch()
    commit(store, lambda tx: tx.create(make_node("n1")))  # no task: nothing for `tasks`

    def mixed(tx: Tx) -> None:
        tx.create(make_service("s1"))
        tx.create(make_task("t1", "s1"))
        tx.create(make_task("t2", "s1"))

    commit(store, mixed)

    assert tasks.queue.qsize() == 1
    assert [e.obj.id for e in tasks.queue.get_nowait()] == ["t1", "t2"]
    assert nodes_and_services.queue.qsize() == 2
    assert [e.kind for e in nodes_and_services.get_nowait_all()] == ["node", "service"]
    assert everything.queue.qsize() == 2
    assert len(everything.get_nowait_all()) == 4


def test_failed_transactions_publish_nothing(store: Store) -> None:
    watcher = store.watch()
    with pytest.raises(Boom):
        commit(store, lambda tx: (tx.create(make_node("n1")), fail(tx)))
    assert watcher.queue.empty()


def test_a_closed_watcher_gets_nothing(store: Store) -> None:
    watcher = store.watch()
    watcher.close()
    commit(store, lambda tx: tx.create(make_node("n1")))
    assert watcher.queue.empty()
    assert store.statistics()["watchers"] == 0


def test_a_watcher_is_an_async_iterator(store: Store) -> None:
    async def main() -> list[list[str]]:
        watcher = store.watch("node")
        got: list[list[str]] = []

        async def consume() -> None:
            async for events in watcher:
                got.append([e.obj.id for e in events])
                if len(got) == 2:
                    return

        consumer = asyncio.create_task(consume())
        await asyncio.sleep(0)  # the consumer now waits on an empty queue
        await store.update(lambda tx: tx.create(make_node("n1")))
        await store.update(lambda tx: (tx.create(make_node("n2")), tx.create(make_node("n3"))))
        await asyncio.wait_for(consumer, 5)
        watcher.close()
        return got

    assert asyncio.run(main()) == [["n1"], ["n2", "n3"]]


# -------------------------------------------------------------------------------- batches


def test_batch_splits_into_bounded_transactions(store: Store) -> None:
    watcher = store.watch("task")
    count = 2 * MAX_CHANGES_PER_BATCH + 7
    commits = store.commits
    commit_batch(store, range(count), create_task)

    assert store.commits - commits == 3
    sizes = []
    for _ in range(3):
        events = watcher.queue.get_nowait()
        sizes.append(len(events))
        assert len({e.obj.version.index for e in events}) == 1  # one transaction each
    assert sizes == [MAX_CHANGES_PER_BATCH, MAX_CHANGES_PER_BATCH, 7]
    assert watcher.queue.empty()
    assert store.index == 3
    assert len(store.view().tasks()) == count


def test_batch_of_an_exact_multiple_makes_no_empty_transaction(store: Store) -> None:
    commit_batch(store, range(MAX_CHANGES_PER_BATCH), create_task)
    assert store.index == 1
    commit_batch(store, [], lambda tx, i: None)
    assert store.index == 1


def test_batch_keeps_committed_chunks_when_a_later_one_fails(store: Store) -> None:
    fail_at = MAX_CHANGES_PER_BATCH + 10

    def write(tx: Tx, i: int) -> None:
        if i == fail_at:
            raise Boom()
        tx.create(make_task(f"t{i}"))

    with pytest.raises(Boom):
        commit_batch(store, range(2 * MAX_CHANGES_PER_BATCH), write)
    assert store.index == 1
    assert len(store.view().tasks()) == MAX_CHANGES_PER_BATCH


# --------------------------------------------------------------------------------- SQLite


def test_sqlite_store_reopens_with_the_same_objects_and_index(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    first = Store(SQLiteBackend(path))
    populate(first)
    commit(first, mess_everything_up)
    commit(first, lambda tx: tx.delete("task", "t4"))
    before = snapshot(first)
    first.close()

    second = Store(SQLiteBackend(path))
    try:
        assert snapshot(second) == before
        assert second.index == 3
        # and it carries on from there
        created = commit(second, lambda tx: tx.create(make_node("n7")))
        assert created.version.index == 4
    finally:
        second.close()

    third = Store(SQLiteBackend(path))
    try:
        assert third.index == 4
        assert third.view().get_node("n7") == created
    finally:
        third.close()


def test_memory_backend_reloads_too() -> None:
    backend = MemoryBackend()
    first = Store(backend)
    populate(first)
    before = snapshot(first)
    assert snapshot(Store(backend)) == before
