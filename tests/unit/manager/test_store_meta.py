"""shoal's metadata beside services and tasks in the store: written with its object,
kept across updates unless replaced, carried by events, undone with a failed
transaction, durable in the same record, and never part of the Docker object."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from shoal.manager.store import Commit, Event, MemoryBackend, Store, Tx
from shoal.manager.store.memory import encode_record
from shoal.manager.store.sqlite import SQLiteBackend
from shoal.types.base import to_builtins
from shoal.types.meta import NO_SERVICE_META, NO_TASK_META, ServiceMeta, TaskMeta

from ..storeutil import commit
from .test_store import make_node, make_service, make_task

SMETA = ServiceMeta(spec_version=3, registry_auth="e30=")
TMETA = TaskMeta(spec_version=3, service_name="web", registry_auth="e30=")


def seeded(store: Store) -> None:
    def write(tx: Tx) -> None:
        tx.create(make_service("s1"), SMETA)
        tx.create(make_task("t1", "s1"), TMETA)

    commit(store, write)


def test_meta_is_read_beside_its_object_and_kept_by_updates() -> None:
    store = Store(MemoryBackend())
    seeded(store)
    view = store.view()
    assert (view.service_meta("s1"), view.task_meta("t1")) == (SMETA, TMETA)
    assert view.meta("task", "t1") == TMETA and view.meta("node", "n1") is None
    task = view.get_task("t1")
    assert task is not None
    commit(store, lambda tx: tx.update(msgspec.structs.replace(task, desired_state="shutdown")))
    assert store.view().task_meta("t1") == TMETA
    service = store.view().get_service("s1")
    assert service is not None
    newer = msgspec.structs.replace(SMETA, spec_version=9)
    commit(store, lambda tx: tx.update(service, newer))
    assert store.view().service_meta("s1") == newer


def test_objects_created_without_meta_get_the_empty_one_and_lose_it_when_removed() -> None:
    store = Store(MemoryBackend())
    commit(store, lambda tx: tx.create(make_task("t1")))
    assert store.view().task_meta("t1") is NO_TASK_META
    commit(store, lambda tx: tx.delete("task", "t1"))
    assert store.view().task_meta("t1") is NO_TASK_META
    assert store.view().service_meta("gone") is NO_SERVICE_META


def test_events_carry_the_meta() -> None:
    store = Store(MemoryBackend())
    watcher = store.watch("task")
    seeded(store)
    commit(store, lambda tx: tx.delete("task", "t1"))
    created, removed = watcher.get_nowait_all()
    assert (created.action, created.meta) == ("create", TMETA)
    assert (removed.action, removed.meta) == ("remove", TMETA)


def test_a_failed_transaction_restores_the_meta() -> None:
    store = Store(MemoryBackend())
    seeded(store)
    service = store.view().get_service("s1")
    assert service is not None

    def fail(tx: Tx) -> None:
        tx.update(service, ServiceMeta(spec_version=99))
        tx.delete("task", "t1")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        commit(store, fail)
    assert (store.view().service_meta("s1"), store.view().task_meta("t1")) == (SMETA, TMETA)


def test_meta_is_durable_in_the_objects_record(tmp_path: Path) -> None:
    store = Store(SQLiteBackend(tmp_path / "s.db"))
    seeded(store)
    store.close()
    again = Store(SQLiteBackend(tmp_path / "s.db"))
    assert (again.view().service_meta("s1"), again.view().task_meta("t1")) == (SMETA, TMETA)
    task = again.view().get_task("t1")
    assert task is not None
    # What the API encodes from the Docker object has none of it.
    assert not {"SpecVersion", "ServiceName", "RegistryAuth"} & set(to_builtins(task))
    again.close()


def test_foreign_commits_bring_their_meta() -> None:
    store = Store(MemoryBackend())
    watcher = store.watch()
    task = make_task("t9", "s1")
    store.apply_foreign(Commit(5, [encode_record("task", task, TMETA)]))
    assert store.view().task_meta("t9") == TMETA
    (event,) = watcher.get_nowait_all()
    assert event == Event("create", "task", task, None, TMETA)
    store.apply_foreign(Commit(6, [encode_record("node", make_node("n1"))]))
    assert store.view().get_node("n1") is not None
