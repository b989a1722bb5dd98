"""Constraints and the scheduler's placement decisions, on a real in-memory store.

The scheduler is driven by hand, without its loop: `load(store.view())`, then
`schedule(tasks)` (decisions only) or `tick()` (decisions committed to the store).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from typing import Any

import msgspec
import pytest

from shoal.clock import FakeClock
from shoal.manager.scheduler import constraint
from shoal.manager.scheduler.constraint import ERR_OPERATOR, ConstraintError, parse
from shoal.manager.scheduler.scheduler import (
    COMMIT_DEBOUNCE_S,
    MAX_TASKS_PER_PASS,
    MSG_ASSIGNED,
    MSG_PENDING,
    MSG_PREASSIGNED,
    Decision,
    Scheduler,
)
from shoal.manager.store import Event, MemoryBackend, Store, Tx
from shoal.manager.store.memory import MAX_CHANGES_PER_BATCH
from shoal.types.meta import TaskMeta
from shoal.types.network import PortMapping
from shoal.types.node import (
    EngineDescription,
    EnginePlugin,
    Node,
    NodeDescription,
    NodeResources,
    NodeSpec,
    NodeStatus,
)
from shoal.types.service import (
    Placement,
    PlacementPreference,
    Platform,
    ResourceObject,
    Resources,
    SpreadOver,
    TaskSpec,
)
from shoal.types.task import Task, TaskState, TaskStatus

from ..storeutil import commit, run

CPU = 1_000_000_000
GIB = 1 << 30


def make_node(
    node_id: str,
    *,
    hostname: str | None = None,
    role: str = "worker",
    availability: str = "active",
    state: str = "ready",
    labels: dict[str, str] | None = None,
    engine_labels: dict[str, str] | None = None,
    os: str = "linux",
    arch: str = "x86_64",
    cpus: int = 4 * CPU,
    memory: int = 8 * GIB,
    addr: str = "10.0.0.1",
) -> Node:
    return Node(
        id=node_id,
        spec=NodeSpec(role=role, availability=availability, labels=labels or {}),
        description=NodeDescription(
            hostname=hostname or f"host-{node_id}",
            platform=Platform(os=os, architecture=arch),
            resources=NodeResources(nano_cpus=cpus, memory_bytes=memory),
            engine=EngineDescription(engine_version="20.10.24", labels=engine_labels),
        ),
        status=NodeStatus(state=state, addr=addr),
    )


def make_task(
    task_id: str,
    service_id: str = "svc",
    *,
    slot: int | None = None,
    node_id: str | None = None,
    state: TaskState = TaskState.PENDING,
    desired: TaskState = TaskState.RUNNING,
    constraints: list[str] | None = None,
    cpus: int | None = None,
    memory: int | None = None,
    max_replicas: int | None = None,
    spread: list[str] | None = None,
    platforms: list[Platform] | None = None,
) -> Task:
    placement = None
    if constraints or max_replicas or spread or platforms:
        placement = Placement(
            constraints=constraints,
            max_replicas=max_replicas,
            preferences=[
                PlacementPreference(spread=SpreadOver(spread_descriptor=s)) for s in spread
            ]
            if spread
            else None,
            platforms=platforms,
        )
    resources = None
    if cpus is not None or memory is not None:
        resources = Resources(reservations=ResourceObject(nano_cpus=cpus, memory_bytes=memory))
    return Task(
        id=task_id,
        service_id=service_id,
        slot=slot,
        node_id=node_id,
        spec=TaskSpec(placement=placement, resources=resources),
        status=TaskStatus(timestamp="", state=state.wire, message="pending"),
        desired_state=desired.wire,
    )


def replicas(n: int, service_id: str = "svc", **kw: Any) -> list[Task]:
    return [make_task(f"{service_id}.{i}", service_id, slot=i, **kw) for i in range(1, n + 1)]


def new_store(*objects: Node | Task) -> Store:
    store = Store(MemoryBackend())

    def create(tx: Tx) -> None:
        for obj in objects:
            tx.create(obj)

    commit(store, create)
    return store


def scheduler_for(store: Store) -> Scheduler:
    sched = Scheduler(store)
    sched.load(store.view())
    return sched


def stored(store: Store, task_id: str) -> Task:
    task = store.view().get_task(task_id)
    assert task is not None, task_id
    return task


def schedule(nodes: list[Node], tasks: list[Task], existing: Sequence[Task] = ()) -> list[Decision]:
    """The decisions of one pass over `tasks`, with `existing` tasks already in the store."""
    store = new_store(*nodes, *existing, *tasks)
    sched = scheduler_for(store)
    return sched.schedule([stored(store, t.id) for t in tasks])


def placed(decisions: list[Decision]) -> Counter[str]:
    return Counter(d.node_id for d in decisions if d.node_id is not None)


def errors(decisions: list[Decision]) -> list[str | None]:
    return [d.err for d in decisions if d.node_id is None]


# ------------------------------------------------------------------------ constraint parse


def test_parse_both_operators_and_trims_blanks() -> None:
    assert parse(["node.role==manager", " node.labels.foo != bar "]) == [
        constraint.Constraint("node.role", "==", "manager"),
        constraint.Constraint("node.labels.foo", "!=", "bar"),
    ]


def test_parse_nothing() -> None:
    assert parse([]) == []


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        # dockerd's answer to `docker service create --constraint node.role=manager`
        ("node.role=manager", ERR_OPERATOR),
        ("node.role", ERR_OPERATOR),
        ("node.role>=manager", ERR_OPERATOR),
        ("node.lab@ls==x", "key 'node.lab@ls' is invalid"),
        ("==x", "key '' is invalid"),
        ("node labels==x", "key 'node labels' is invalid"),
        # SwarmKit's key pattern is ^(?i)[a-z_][a-z0-9\-_.]+$: no leading digit or dot
        ("1node.role==manager", "key '1node.role' is invalid"),
        (".node.role==manager", "key '.node.role' is invalid"),
        ("node.role==", "value '' is invalid"),
        ("node.role==man=ager", "value 'man=ager' is invalid"),
        # SwarmKit splits at the first operator only (strings.SplitN(e, op, 2))
        ("node.labels.a==b==c", "value 'b==c' is invalid"),
    ],
)
def test_parse_errors_are_swarmkits(expr: str, message: str) -> None:
    with pytest.raises(ConstraintError) as caught:
        parse(["node.id==abc", expr])
    assert str(caught.value) == message


def test_operator_error_is_dockers_text() -> None:
    assert ERR_OPERATOR == "constraint expected one operator from ==, !="


# --------------------------------------------------------------------- constraint matching

NODE = make_node(
    "n1abc",
    hostname="Worker-1",
    role="manager",
    labels={"foo": "bar", "dc": "East", "Zone": "z1"},
    engine_labels={"storage": "SSD"},
    os="linux",
    arch="x86_64",
    addr="192.168.1.20",
)


def matches(*exprs: str) -> bool:
    return constraint.matches_all(parse(list(exprs)), NODE)


@pytest.mark.parametrize(
    "expr",
    [
        "node.id==n1abc",
        "node.hostname==Worker-1",
        "node.role==manager",
        "node.platform.os==linux",
        "node.platform.arch==x86_64",
        "node.labels.foo==bar",
        "engine.labels.storage==SSD",
        "node.ip==192.168.1.20",
        "node.ip==192.168.1.0/24",
        "node.role!=worker",
        "node.labels.foo!=baz",
        "node.labels.missing!=anything",
        "engine.labels.missing!=anything",
    ],
)
def test_constraint_holds(expr: str) -> None:
    assert matches(expr)


@pytest.mark.parametrize(
    "expr",
    [
        "node.id==n1",  # whole value, not a prefix
        "node.hostname==worker-2",
        "node.role==worker",
        "node.platform.os==windows",
        "node.platform.arch==arm64",
        "node.labels.foo==baz",
        "node.labels.missing==bar",
        "node.labels.zone==z1",  # label keys are case-sensitive
        "engine.labels.storage==hdd",
        "engine.labels.foo==bar",  # node labels are not engine labels
        "node.labels.storage==SSD",  # and the other way round
        "node.ip==192.168.2.0/24",
        "node.role!=manager",
        "node.labels.foo!=bar",
    ],
)
def test_constraint_fails(expr: str) -> None:
    assert not matches(expr)


@pytest.mark.parametrize(
    "expr",
    [
        "node.hostname==WORKER-1",
        "node.role==MANAGER",
        "node.platform.os==Linux",
        "node.labels.dc==east",
        "node.labels.dc==EAST",
        "engine.labels.storage==ssd",
        "node.id==N1ABC",
    ],
)
def test_values_compare_case_insensitively(expr: str) -> None:
    assert matches(expr)
    assert not matches(expr.replace("==", "!="))


@pytest.mark.parametrize("expr", ["NODE.ROLE==manager", "Node.Hostname==worker-1"])
def test_fixed_keys_compare_case_insensitively(expr: str) -> None:
    assert matches(expr)


def test_label_prefixes_compare_case_insensitively() -> None:
    # SwarmKit: strings.EqualFold(key[:len("node.labels.")], "node.labels."); the label
    # name after the prefix stays case-sensitive.
    assert matches("Node.Labels.foo==bar")
    assert matches("ENGINE.LABELS.storage==ssd")


def test_all_constraints_must_hold() -> None:
    assert matches("node.role==manager", "node.labels.foo==bar")
    assert not matches("node.role==manager", "node.labels.foo==nope")


@pytest.mark.parametrize("expr", ["node.unknown==x", "node.unknown!=x", "foo!=bar"])
def test_unknown_keys_match_no_node(expr: str) -> None:
    # SwarmKit's NodeMatches: "key doesn't match predefined syntax" -> false, whatever
    # the operator.
    assert not matches(expr)


# ------------------------------------------------------------------------------ spread


def test_spread_six_tasks_over_three_nodes() -> None:
    nodes = [make_node(n) for n in ("n1", "n2", "n3")]
    decisions = schedule(nodes, replicas(6))
    assert len(decisions) == 6
    assert placed(decisions) == {"n1": 2, "n2": 2, "n3": 2}
    assert {d.message for d in decisions} == {MSG_ASSIGNED}
    assert all(d.err is None for d in decisions)


def test_spread_counts_tasks_already_on_nodes() -> None:
    nodes = [make_node(n) for n in ("n1", "n2", "n3")]
    running = [
        make_task("old1", node_id="n1", state=TaskState.RUNNING),
        make_task("old2", node_id="n1", state=TaskState.RUNNING),
    ]
    assert placed(schedule(nodes, replicas(4), running)) == {"n2": 2, "n3": 2}


def test_spread_breaks_ties_on_all_tasks_of_a_node() -> None:
    nodes = [make_node(n) for n in ("n1", "n2", "n3")]
    other = [make_task(f"db{i}", "db", node_id="n2", state=TaskState.RUNNING) for i in range(3)]
    assert placed(schedule(nodes, replicas(2), other)) == {"n1": 1, "n3": 1}


def test_finished_tasks_do_not_count() -> None:
    nodes = [make_node(n) for n in ("n1", "n2")]
    done = [
        make_task(f"old{i}", node_id="n1", state=TaskState.SHUTDOWN, cpus=4 * CPU) for i in range(3)
    ]
    assert placed(schedule(nodes, replicas(2), done)) == {"n1": 1, "n2": 1}


# ------------------------------------------------------------------------------- filters


def test_constraint_places_only_on_matching_node() -> None:
    nodes = [
        make_node("n1"),
        make_node("n2", labels={"foo": "bar"}),
        make_node("n3", labels={"foo": "baz"}),
    ]
    decisions = schedule(nodes, replicas(3, constraints=["node.labels.foo==bar"]))
    assert placed(decisions) == {"n2": 3}


def test_constraint_no_node_matches() -> None:
    nodes = [make_node(n) for n in ("n1", "n2", "n3")]
    decisions = schedule(nodes, replicas(2, constraints=["node.labels.foo==bar"]))
    assert not placed(decisions)
    assert (
        errors(decisions)
        == ["no suitable node (scheduling constraints not satisfied on 3 nodes)"] * 2
    )


def test_reservations_bigger_than_any_node() -> None:
    nodes = [make_node(n, cpus=2 * CPU, memory=GIB) for n in ("n1", "n2", "n3")]
    for task_kw in ({"cpus": 3 * CPU}, {"memory": 2 * GIB}):
        decisions = schedule(nodes, replicas(2, **task_kw))
        assert not placed(decisions)
        assert errors(decisions) == ["no suitable node (insufficient resources on 3 nodes)"] * 2


def test_reservations_fill_nodes_then_stop() -> None:
    nodes = [make_node("n1", cpus=CPU), make_node("n2", cpus=CPU)]
    decisions = schedule(nodes, replicas(5, cpus=CPU // 2 - 1))
    assert placed(decisions) == {"n1": 2, "n2": 2}
    assert errors(decisions) == ["no suitable node (insufficient resources on 2 nodes)"]


def test_reservations_of_running_tasks_are_taken() -> None:
    nodes = [make_node("n1", cpus=2 * CPU), make_node("n2", cpus=2 * CPU)]
    running = [make_task("db1", "db", node_id="n1", state=TaskState.RUNNING, cpus=2 * CPU)]
    assert placed(schedule(nodes, replicas(2, cpus=CPU), running)) == {"n2": 2}


@pytest.mark.parametrize(
    "node_kw",
    [{"availability": "drain"}, {"availability": "pause"}, {"state": "down"}],
    ids=["drain", "pause", "down"],
)
def test_unavailable_node_gets_nothing(node_kw: dict[str, str]) -> None:
    nodes = [make_node("n1"), make_node("n2", **node_kw), make_node("n3")]
    assert placed(schedule(nodes, replicas(4))) == {"n1": 2, "n3": 2}

    decisions = schedule([make_node("n2", **node_kw)], replicas(1))
    assert errors(decisions) == ["no suitable node (1 node not available for new tasks)"]


def test_unavailable_nodes_are_counted() -> None:
    nodes = [
        make_node("n1", availability="drain"),
        make_node("n2", availability="pause"),
        make_node("n3", state="down"),
    ]
    decisions = schedule(nodes, replicas(1))
    assert errors(decisions) == ["no suitable node (3 nodes not available for new tasks)"]


def test_explanation_lists_filters_by_failure_count() -> None:
    nodes = [
        make_node("n1", availability="drain"),
        make_node("n2", cpus=CPU),
        make_node("n3", cpus=CPU),
    ]
    decisions = schedule(nodes, replicas(1, cpus=2 * CPU))
    assert errors(decisions) == [
        "no suitable node (insufficient resources on 2 nodes; 1 node not available for new tasks)"
    ]


def test_no_nodes_at_all() -> None:
    assert errors(schedule([], replicas(1))) == ["no suitable node"]


def test_max_replicas_per_node() -> None:
    nodes = [make_node(n) for n in ("n1", "n2", "n3")]
    decisions = schedule(nodes, replicas(5, max_replicas=1))
    assert placed(decisions) == {"n1": 1, "n2": 1, "n3": 1}
    assert errors(decisions) == ["no suitable node (max replicas per node limit exceed)"] * 2


def test_max_replicas_counts_running_tasks() -> None:
    nodes = [make_node(n) for n in ("n1", "n2")]
    running = [
        make_task(f"old{i}", node_id="n1", state=TaskState.RUNNING, max_replicas=2)
        for i in range(2)
    ]
    assert placed(schedule(nodes, replicas(3, max_replicas=2), running)) == {"n2": 2}


def test_platform_filter() -> None:
    nodes = [make_node("n1", arch="aarch64"), make_node("n2", arch="x86_64", os="linux")]
    decisions = schedule(nodes, replicas(2, platforms=[Platform(os="linux", architecture="amd64")]))
    assert placed(decisions) == {"n2": 2}


# --------------------------------------------------------------------- placement preferences


def test_spread_over_a_label_balances_branches_not_nodes() -> None:
    nodes = [
        make_node("a1", labels={"dc": "a"}),
        make_node("b1", labels={"dc": "b"}),
        make_node("b2", labels={"dc": "b"}),
    ]
    decisions = schedule(nodes, replicas(4, spread=["node.labels.dc"]))
    assert placed(decisions) == {"a1": 2, "b1": 1, "b2": 1}


def test_nodes_without_the_label_form_their_own_branch() -> None:
    nodes = [
        make_node("a1", labels={"dc": "a"}),
        make_node("a2", labels={"dc": "a"}),
        make_node("x1"),
    ]
    decisions = schedule(nodes, replicas(4, spread=["node.labels.dc"]))
    assert placed(decisions) == {"a1": 1, "a2": 1, "x1": 2}


# ------------------------------------------------------------------------------ preassigned


def test_preassigned_tasks_are_confirmed_on_their_node() -> None:
    nodes = [make_node(n) for n in ("n1", "n2", "n3")]
    tasks = [make_task(f"g.{n}", "g", node_id=n) for n in ("n1", "n2", "n3")]
    decisions = schedule(nodes, tasks)
    assert sorted((d.task_id, d.node_id, d.message) for d in decisions) == [
        ("g.n1", "n1", MSG_PREASSIGNED),
        ("g.n2", "n2", MSG_PREASSIGNED),
        ("g.n3", "n3", MSG_PREASSIGNED),
    ]


def test_preassigned_task_waits_when_its_node_does_not_fit() -> None:
    nodes = [make_node("n1", availability="drain"), make_node("n2", cpus=CPU)]
    decisions = schedule(
        nodes,
        [make_task("g.n1", "g", node_id="n1"), make_task("g.n2", "g", node_id="n2", cpus=2 * CPU)],
    )
    assert {d.task_id: (d.node_id, d.err) for d in decisions} == {
        "g.n1": (None, "no suitable node (1 node not available for new tasks)"),
        "g.n2": (None, "no suitable node (insufficient resources on 1 node)"),
    }


# -------------------------------------------------------------------------------- tick


def test_tick_commits_assignments_to_the_store() -> None:
    nodes = [make_node(n) for n in ("n1", "n2", "n3")]
    tasks = replicas(6)
    store = new_store(*nodes, *tasks)
    index = store.index
    watcher = store.watch("task")
    sched = scheduler_for(store)
    assert set(sched.pending) == {t.id for t in tasks}

    run(sched.tick())

    assert store.index == index + 1  # one transaction for the whole pass
    assert len(watcher.queue.get_nowait()) == 6
    view = store.view()
    stored = [view.get_task(t.id) for t in tasks]
    assert all(t is not None for t in stored)
    for t in stored:
        assert t is not None
        assert t.state is TaskState.ASSIGNED
        assert t.status.message == MSG_ASSIGNED
        assert t.status.err is None
        assert t.node_id in {"n1", "n2", "n3"}
        assert t.version.index == index + 1
    assert Counter(t.node_id for t in stored if t is not None) == {"n1": 2, "n2": 2, "n3": 2}
    assert {n: len(view.tasks_on_node(n)) for n in ("n1", "n2", "n3")} == {
        "n1": 2,
        "n2": 2,
        "n3": 2,
    }
    assert sched.pending == {}
    assert sched.statistics()["scheduled"] == 6

    # nothing left to do: a second pass writes nothing
    run(sched.tick())
    assert store.index == index + 1


def test_tick_confirms_preassigned_tasks() -> None:
    store = new_store(make_node("n1"), make_task("g.n1", "g", node_id="n1"))
    run(scheduler_for(store).tick())
    task = store.view().get_task("g.n1")
    assert task is not None
    assert (task.state, task.node_id) == (TaskState.ASSIGNED, "n1")
    assert task.status.message == MSG_PREASSIGNED


def test_tick_leaves_unplaceable_tasks_pending_with_the_reason() -> None:
    nodes = [make_node(n, cpus=CPU) for n in ("n1", "n2", "n3")]
    tasks = replicas(2, cpus=2 * CPU)
    store = new_store(*nodes, *tasks)
    sched = scheduler_for(store)
    run(sched.tick())
    for t in tasks:
        stored = store.view().get_task(t.id)
        assert stored is not None
        assert stored.state is TaskState.PENDING
        assert stored.node_id is None
        assert stored.status.message == MSG_PENDING
        assert stored.status.err == "no suitable node (insufficient resources on 3 nodes)"
    assert set(sched.parked) == {t.id for t in tasks}
    assert sched.statistics()["pending"] == 2

    # parked: not tried again, nor written again, until the nodes change
    index, passes = store.index, sched.passes
    run(sched.tick())
    assert (store.index, sched.passes) == (index, passes)
    sched.apply([Event("update", "node", nodes[0], nodes[0])])
    assert set(sched.pending) == {t.id for t in tasks}
    run(sched.tick())
    assert store.index == index  # the same verdict again is not written again


def test_a_large_backlog_is_placed_in_bounded_passes() -> None:
    tasks = replicas(2 * MAX_TASKS_PER_PASS + 1)
    store = new_store(make_node("n1"), *tasks)
    sched = scheduler_for(store)
    run(sched.tick())
    assert sched.passes == 3
    assert sched.scheduled == len(tasks)


def test_a_new_node_lets_pending_tasks_be_placed() -> None:
    store = new_store(make_node("n1", availability="drain"), *replicas(2))
    watcher = store.watch("task", "node")
    sched = scheduler_for(store)
    run(sched.tick())
    sched.apply(watcher.get_nowait_all())
    assert len(sched.parked) == 2
    assert all(stored(store, t).node_id is None for t in sched.parked)

    commit(store, lambda tx: tx.create(make_node("n2")))
    sched.apply(watcher.get_nowait_all())
    run(sched.tick())
    assert {stored(store, t.id).node_id for t in replicas(2)} == {"n2"}
    assert sched.pending == {}


def test_tasks_no_longer_pending_are_not_written() -> None:
    """A decision for a task that changed meanwhile (here: desired shutdown) is dropped."""
    store = new_store(make_node("n1"), *replicas(1))
    sched = scheduler_for(store)

    def shut_down(tx: Tx) -> None:
        task = tx.get_task("svc.1")
        assert task is not None
        tx.update(msgspec.structs.replace(task, desired_state=TaskState.SHUTDOWN.wire))

    commit(store, shut_down)
    index = store.index
    run(sched.tick())  # still in the scheduler's pending map, stale
    assert store.index == index
    task = store.view().get_task("svc.1")
    assert task is not None and task.state is TaskState.PENDING and task.node_id is None
    assert sched.nodes["n1"].active_count == 0  # the tentative placement was undone


def test_the_schedulers_own_commits_do_not_count_twice() -> None:
    nodes = [make_node(n) for n in ("n1", "n2", "n3")]
    store = new_store(*nodes, *replicas(3))
    watcher = store.watch("task", "node")
    sched = scheduler_for(store)
    run(sched.tick())
    sched.apply(watcher.get_nowait_all())  # its own ASSIGNED updates come back as events
    assert {n: info.active_count for n, info in sched.nodes.items()} == {"n1": 1, "n2": 1, "n3": 1}

    more = [make_task(f"svc.{i}", slot=i) for i in range(4, 7)]
    commit(store, lambda tx: [tx.create(t) for t in more])
    sched.apply(watcher.get_nowait_all())
    run(sched.tick())
    assert Counter(t.node_id for t in store.view().tasks_of_service("svc")) == {
        "n1": 2,
        "n2": 2,
        "n3": 2,
    }


def test_tick_batches_a_large_pass() -> None:
    """Decisions are written in bounded transactions, not one per task."""
    nodes = [make_node(f"n{i}") for i in range(10)]
    count = MAX_CHANGES_PER_BATCH + 1
    store = new_store(*nodes, *replicas(count))
    index = store.index
    run(scheduler_for(store).tick())
    assert store.index == index + 2
    per_node = sorted(len(store.view().tasks_on_node(n.id)) for n in nodes)
    even, extra = divmod(count, len(nodes))
    assert per_node == [even] * (len(nodes) - extra) + [even + 1] * extra


# ------------------------------------------------------------------------ log driver plugins


def with_log_plugins(node: Node, *names: str) -> Node:
    description = node.description
    engine = msgspec.structs.replace(
        description.engine, plugins=[EnginePlugin(type="Log", name=n) for n in names]
    )
    return msgspec.structs.replace(
        node, description=msgspec.structs.replace(description, engine=engine)
    )


def with_log_driver(task: Task, name: str) -> Task:
    spec = msgspec.structs.replace(task.spec, log_driver={"Name": name})
    return msgspec.structs.replace(task, spec=spec)


def test_a_log_driver_no_node_has_leaves_the_task_pending_as_swarm_says() -> None:
    nodes = [with_log_plugins(make_node(n), "json-file", "gelf") for n in ("n1", "n2")]
    decisions = schedule(nodes, [with_log_driver(t, "splunk") for t in replicas(1)])
    assert errors(decisions) == ["no suitable node (missing plugin on 2 nodes)"]


def test_log_drivers_place_on_the_nodes_that_have_them() -> None:
    nodes = [
        with_log_plugins(make_node("n1"), "json-file"),
        with_log_plugins(make_node("n2"), "json-file", "gelf"),
        make_node("n3"),  # reports no Log plugin at all: not turned away, as SwarmKit
    ]
    decisions = schedule(nodes, [with_log_driver(t, "gelf") for t in replicas(4)])
    assert set(placed(decisions)) == {"n2", "n3"}
    none = schedule(nodes[:1], [with_log_driver(t, "none") for t in replicas(1)])
    assert placed(none) == Counter({"n1": 1})


# ---------------------------------------------------------------------- host-mode ports


def _host_meta(*ports: tuple[str, int]) -> TaskMeta:
    return TaskMeta(
        host_ports=tuple(
            PortMapping(protocol=p, target=80, published=n, mode="host") for p, n in ports
        )
    )


def _store_with_meta(nodes: list[Node], tasks: list[tuple[Task, TaskMeta]]) -> Store:
    store = Store(MemoryBackend())

    def create(tx: Tx) -> None:
        for n in nodes:
            tx.create(n)
        for t, meta in tasks:
            tx.create(t, meta)

    commit(store, create)
    return store


def test_host_port_tasks_never_share_a_node_and_the_rest_wait_as_swarm_says() -> None:
    nodes = [make_node("n1"), make_node("n2")]
    web = _host_meta(("tcp", 8081))
    store = _store_with_meta(nodes, [(t, web) for t in replicas(3, "web")])
    sched = scheduler_for(store)
    run(sched.tick())
    tasks = [stored(store, f"web.{i}") for i in (1, 2, 3)]
    assert Counter(t.node_id for t in tasks if t.node_id) == {"n1": 1, "n2": 1}
    waiting = [t for t in tasks if t.node_id is None]
    assert len(waiting) == 1 and waiting[0].state is TaskState.PENDING
    assert waiting[0].status.err == "no suitable node (host-mode port already in use on 2 nodes)"


def test_host_port_held_by_a_running_task_of_another_service() -> None:
    nodes = [make_node("n1"), make_node("n2")]
    other = make_task("other.1", "other", node_id="n1", state=TaskState.RUNNING)
    meta = _host_meta(("tcp", 8081))
    store = _store_with_meta(nodes, [(other, meta), *((t, meta) for t in replicas(1, "web"))])
    run(scheduler_for(store).tick())
    assert stored(store, "web.1").node_id == "n2"


def test_host_ports_differ_by_protocol_and_number() -> None:
    nodes = [make_node("n1")]
    running = make_task("udp.1", "udp", node_id="n1", state=TaskState.RUNNING)
    store = _store_with_meta(
        nodes,
        [
            (running, _host_meta(("udp", 8081))),
            (make_task("tcp.1", "tcp", slot=1), _host_meta(("tcp", 8081))),
            (make_task("other.1", "other", slot=1), _host_meta(("udp", 8082))),
        ],
    )
    run(scheduler_for(store).tick())
    assert stored(store, "tcp.1").node_id == "n1"
    assert stored(store, "other.1").node_id == "n1"


def test_host_port_without_a_number_and_ingress_ports_do_not_filter() -> None:
    meta = TaskMeta(host_ports=(PortMapping(target=80, published=0, mode="host"),))
    store = _store_with_meta([make_node("n1")], [(t, meta) for t in replicas(3)])
    run(scheduler_for(store).tick())
    assert {stored(store, f"svc.{i}").node_id for i in (1, 2, 3)} == {"n1"}


def test_a_host_port_is_free_again_once_its_task_stopped() -> None:
    nodes = [make_node("n1")]
    meta = _host_meta(("tcp", 8081))
    old = make_task("old.1", "web", node_id="n1", state=TaskState.RUNNING)
    new = make_task("web.1", "web", slot=1)
    store = _store_with_meta(nodes, [(old, meta), (new, meta)])
    watcher = store.watch("task")
    sched = scheduler_for(store)
    run(sched.tick())
    assert stored(store, "web.1").node_id is None
    assert stored(store, "web.1").status.err == (
        "no suitable node (host-mode port already in use on 1 node)"
    )
    sched.apply(watcher.get_nowait_all())

    def stop(tx: Tx) -> None:
        t = tx.get_task("old.1")
        assert t is not None
        status = msgspec.structs.replace(t.status, state=TaskState.SHUTDOWN.wire)
        tx.update(msgspec.structs.replace(t, status=status))

    commit(store, stop)
    sched.apply(watcher.get_nowait_all())
    run(sched.tick())
    assert stored(store, "web.1").node_id == "n1"


def test_a_global_task_on_a_node_whose_host_port_is_taken_waits() -> None:
    meta = _host_meta(("tcp", 8081))
    running = make_task("a.n1", "a", node_id="n1", state=TaskState.RUNNING)
    store = _store_with_meta(
        [make_node("n1")], [(running, meta), (make_task("g.n1", "g", node_id="n1"), meta)]
    )
    run(scheduler_for(store).tick())
    t = stored(store, "g.n1")
    assert t.state is TaskState.PENDING
    assert t.status.err == "no suitable node (host-mode port already in use on 1 node)"


# ------------------------------------------------------------------------ the loop's leading edge
def test_the_loop_places_the_first_pending_task_at_once_and_debounces_a_burst_behind() -> None:
    """Leading edge (shoal/batching.py): on an idle scheduler a pending task is placed
    without the debounce; tasks pending right behind it wait for the burst to end."""

    async def main() -> None:
        clock = FakeClock()
        store = Store(MemoryBackend())
        await store.update(lambda tx: tx.create(make_node("n1")))
        sched = Scheduler(store, clock)
        loop = asyncio.create_task(sched.run())
        await clock.settle()

        def state(task_id: str) -> TaskState:
            return stored(store, task_id).state

        await store.update(lambda tx: tx.create(make_task("t1")))
        await clock.settle()
        assert state("t1") == TaskState.ASSIGNED  # no time passed: no debounce

        await clock.advance(COMMIT_DEBOUNCE_S / 5)
        await store.update(lambda tx: tx.create(make_task("t2")))
        await clock.settle()
        assert state("t2") == TaskState.PENDING  # right behind a pass: debounced
        await clock.advance(COMMIT_DEBOUNCE_S)
        assert state("t2") == TaskState.ASSIGNED

        await clock.advance(1.0)  # quiet again
        await store.update(lambda tx: tx.create(make_task("t3")))
        await clock.settle()
        assert state("t3") == TaskState.ASSIGNED
        sched.stop()
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)

    run(main())
