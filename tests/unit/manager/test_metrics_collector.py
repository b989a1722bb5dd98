"""The manager's gauges (shoal/manager/metrics.py) on a real in-memory store: nodes by
state and availability, services by mode, tasks by service and state (from the store's
own index, which must follow every write, delete and rolled-back transaction as a walk
over the tasks would), zeros included; and the store's commit counters."""

from __future__ import annotations

import random
from collections import Counter

import msgspec
import pytest

from shoal.manager.metrics import TASK_STATES, ManagerCollector
from shoal.manager.store import MemoryBackend, Store, Tx
from shoal.metrics import Metrics
from shoal.types.meta import TaskMeta
from shoal.types.node import Node, NodeSpec, NodeStatus
from shoal.types.service import GlobalService, ServiceMode
from shoal.types.task import Task, TaskState

from ..storeutil import commit
from .test_store import make_service, make_task


class _Manager:
    """What ManagerCollector reads of a manager: its store and its loops' statistics."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def statistics(self) -> dict[str, dict[str, int]]:
        return {
            "dispatcher": {"sessions": 2, "loop_failures": 1},
            "scheduler": {"pending": 5, "failures": 0},
            "store": self.store.statistics(),
        }


def scrape(store: Store) -> Metrics:
    metrics = Metrics()
    metrics.register(ManagerCollector(lambda: _Manager(store)))
    return metrics


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def node(node_id: str, state: str, availability: str) -> Node:
    return Node(
        id=node_id,
        spec=NodeSpec(role="worker", availability=availability),
        status=NodeStatus(state=state),
    )


def in_state(task: Task, state: TaskState) -> Task:
    return msgspec.structs.replace(
        task, status=msgspec.structs.replace(task.status, state=state.wire)
    )


def test_nodes_by_state_and_availability_with_zeros() -> None:
    store = Store(MemoryBackend())

    def write(tx: Tx) -> None:
        tx.create(node("n1", "ready", "active"))
        tx.create(node("n2", "ready", "active"))
        tx.create(node("n3", "down", "drain"))
        tx.create(node("n4", "ready", "pause"))

    commit(store, write)
    m = scrape(store)
    assert value(m, "shoal_nodes", state="ready", availability="active") == 2
    assert value(m, "shoal_nodes", state="down", availability="drain") == 1
    assert value(m, "shoal_nodes", state="ready", availability="pause") == 1
    assert value(m, "shoal_nodes", state="down", availability="active") == 0
    assert value(m, "shoal_nodes", state="disconnected", availability="drain") == 0


def test_services_by_mode() -> None:
    store = Store(MemoryBackend())
    glob = make_service("s2", "agent")
    glob = msgspec.structs.replace(
        glob, spec=msgspec.structs.replace(glob.spec, mode=ServiceMode(global_=GlobalService()))
    )

    def write(tx: Tx) -> None:
        tx.create(make_service("s1", "web"))
        tx.create(glob)
        tx.create(make_service("s3", "api"))

    commit(store, write)
    m = scrape(store)
    assert value(m, "shoal_services", mode="replicated") == 2
    assert value(m, "shoal_services", mode="global") == 1
    assert value(m, "shoal_services", mode="replicated-job") == 0


def test_tasks_by_service_and_state_follow_writes_and_deletes() -> None:
    store = Store(MemoryBackend())
    meta = TaskMeta(service_name="web")

    def write(tx: Tx) -> None:
        tx.create(make_service("s1", "web"))
        tx.create(make_service("s2", "db"))
        for i in range(3):
            tx.create(make_task(f"t{i}", "s1"), meta)

    commit(store, write)
    m = scrape(store)
    assert value(m, "shoal_tasks", service_id="s1", service="web", state="pending") == 3
    # every state of every service has a sample, zeros too
    for state in TASK_STATES:
        assert value(m, "shoal_tasks", service_id="s2", service="db", state=state) == 0
    view = store.view()

    def progress(tx: Tx) -> None:
        t0, t1 = view.get_task("t0"), view.get_task("t1")
        assert t0 is not None and t1 is not None
        tx.update(in_state(t0, TaskState.RUNNING))
        tx.update(in_state(t1, TaskState.RUNNING))
        tx.delete("task", "t2")

    commit(store, progress)
    m = scrape(store)
    assert value(m, "shoal_tasks", service_id="s1", service="web", state="running") == 2
    assert value(m, "shoal_tasks", service_id="s1", service="web", state="pending") == 0


def test_a_removed_services_tasks_keep_their_name_from_the_task_meta() -> None:
    store = Store(MemoryBackend())

    def write(tx: Tx) -> None:
        tx.create(make_service("s1", "web"))
        tx.create(in_state(make_task("t1", "s1"), TaskState.RUNNING), TaskMeta(service_name="web"))

    commit(store, write)
    commit(store, lambda tx: tx.delete("service", "s1"))
    m = scrape(store)
    assert value(m, "shoal_tasks", service_id="s1", service="web", state="running") == 1
    # only the states its tasks are in: the service is gone, nothing else to show
    assert value(m, "shoal_tasks", service_id="s1", service="web", state="pending") is None


def test_a_rolled_back_transaction_leaves_the_counts_as_they_were() -> None:
    store = Store(MemoryBackend())
    commit(store, lambda tx: tx.create(make_task("t1", "s1")))

    def fails(tx: Tx) -> None:
        t1 = tx.get_task("t1")
        assert t1 is not None
        tx.update(in_state(t1, TaskState.RUNNING))
        tx.create(make_task("t2", "s1"))
        raise RuntimeError("abort")

    with pytest.raises(RuntimeError):
        commit(store, fails)
    assert store.view().task_states() == {"s1": {"pending": 1}}


def test_the_index_matches_a_walk_over_the_tasks_after_random_writes() -> None:
    rng = random.Random(12)
    store = Store(MemoryBackend())
    states = list(TaskState)
    for _round in range(40):

        def write(tx: Tx) -> None:
            for _ in range(10):
                tid = f"t{rng.randrange(30)}"
                old = tx.get_task(tid)
                op = rng.random()
                if old is None:
                    tx.create(in_state(make_task(tid, f"s{rng.randrange(3)}"), rng.choice(states)))
                elif op < 0.2:
                    tx.delete("task", tid)
                else:
                    tx.update(in_state(old, rng.choice(states)))

        commit(store, write)
        walked: dict[str, Counter[str]] = {}
        for t in store.view().tasks():
            walked.setdefault(t.service_id, Counter())[t.status.state] += 1
        assert store.view().task_states() == {s: dict(c) for s, c in walked.items()}


def test_loop_gauges_and_counters_come_from_the_managers_statistics() -> None:
    m = scrape(Store(MemoryBackend()))
    assert value(m, "shoal_dispatcher_sessions") == 2
    assert value(m, "shoal_scheduler_pending_tasks") == 5
    assert value(m, "shoal_manager_loop_failures_total", loop="dispatcher") == 1
    assert value(m, "shoal_manager_loop_failures_total", loop="scheduler") == 0


def test_no_manager_no_manager_metrics() -> None:
    metrics = Metrics()
    metrics.register(ManagerCollector(lambda: None))
    text = metrics.exposition().decode()
    assert "shoal_nodes" not in text and "shoal_tasks" not in text
    assert "shoal_store_commits_total 0.0" in text  # the instruments are there, at zero


def test_store_commits_are_counted_and_timed() -> None:
    metrics = Metrics()
    store = Store(MemoryBackend(), metrics=metrics)
    for i in range(3):
        commit(store, lambda tx, i=i: tx.create(make_task(f"t{i}")))
    commit(store, lambda tx: None)  # writes nothing: nothing to commit
    assert value(metrics, "shoal_store_commits_total") == store.commits == 3
    assert value(metrics, "shoal_store_group_commits_total") == store.group_commits
    assert value(metrics, "shoal_store_commit_duration_seconds_count") == store.group_commits


def test_every_metric_is_named_shoal() -> None:
    metrics = Metrics(process=True)
    metrics.register(ManagerCollector(lambda: _Manager(Store(MemoryBackend()))))
    names = {m.name for m in metrics.registry.collect()}
    assert names and all(n.startswith("shoal_") for n in names), names


def test_two_daemons_in_one_process_count_apart() -> None:
    a, b = Metrics(), Metrics()
    a.heartbeats.inc(3)
    assert value(a, "shoal_dispatcher_heartbeats_total") == 3
    assert value(b, "shoal_dispatcher_heartbeats_total") == 0
