"""The scheduler on three nodes (and a fourth and fifth that join later): spread,
constraints on every key, node availability, placement preferences, replicas per node,
resource reservations against node capacity, global services.

Where tasks run is checked twice: as the manager reports it (`docker service ps` NODE
column, the tasks' NodeID) and on the hosts themselves, by the task processes recorded
in each daemon's own data dir — exactly the service's running tasks, nothing stale."""

from __future__ import annotations

from collections import Counter

import pytest

from ..cluster_harness import RESOURCES_MEMORY_FLAG, Cluster, NodeFactory
from ..harness import holds_for

pytestmark = pytest.mark.integration

SLEEP = ("busybox", "sleep", "1000")
ALL = ("node-1", "node-2", "node-3")


def create(cluster: Cluster, name: str, *args: str) -> str:
    return cluster.manager.create_service(name, *args, *SLEEP)


def spread(*counts: int) -> dict[str, int]:
    return dict(zip(ALL, counts, strict=True))


# --------------------------------------------------------------------------- spread


def test_six_replicas_spread_two_per_node(cluster: Cluster) -> None:
    create(cluster, "six", "--replicas", "6")
    placed = cluster.wait_converged("six", 6, per_node=spread(2, 2, 2))
    assert {name: len(tasks) for name, tasks in placed.items()} == spread(2, 2, 2)
    assert cluster.ps_nodes("six") == Counter(spread(2, 2, 2))


def test_label_constraint_then_constraint_add_and_rm_move_the_tasks(cluster: Cluster) -> None:
    cluster.manager.docker("node", "update", "--label-add", "foo=bar", "node-2")
    create(cluster, "labelled", "--replicas", "6", "--constraint", "node.labels.foo==bar")
    on2 = cluster.wait_converged("labelled", 6, per_node=spread(0, 6, 0))
    assert cluster.ps_nodes("labelled") == Counter({"node-2": 6})

    cluster.manager.docker(
        "service",
        "update",
        "--detach",
        "--constraint-rm",
        "node.labels.foo==bar",
        "--constraint-add",
        "node.hostname==node-3",
        "labelled",
    )
    on3 = cluster.wait_converged("labelled", 6, per_node=spread(0, 0, 6), timeout=60)
    assert cluster.ps_nodes("labelled") == Counter({"node-3": 6})
    assert not set(on3["node-3"]) & set(on2["node-2"])  # new tasks, not the old ones
    spec = cluster.manager.service("labelled")["Spec"]["TaskTemplate"]["Placement"]
    assert spec.get("Constraints") == ["node.hostname==node-3"], spec

    # A negative constraint added on top: node-3 excluded, the tasks move again.
    cluster.manager.docker(
        "service",
        "update",
        "--detach",
        "--constraint-rm",
        "node.hostname==node-3",
        "--constraint-add",
        "node.hostname!=node-3",
        "labelled",
    )
    cluster.wait_converged("labelled", 6, per_node=spread(3, 3, 0), timeout=60)


CONSTRAINT_CASES = {
    "hostname-eq": (["node.hostname==node-3"], (0, 0, 4)),
    "hostname-ne": (["node.hostname!=node-3"], (2, 2, 0)),
    "role-manager": (["node.role==manager"], (4, 0, 0)),
    "role-ne-manager": (["node.role!=manager"], (0, 2, 2)),
    "node-id": (["node.id=={node-2}"], (0, 4, 0)),
    "platform-several": (
        ["node.platform.os==linux", "node.platform.arch=={arch}", "node.hostname!=node-1"],
        (0, 2, 2),
    ),
    "engine-label": (["engine.labels.disk==hdd"], (0, 0, 4)),
    "engine-label-ne-and-role": (["engine.labels.disk!=hdd", "node.role==worker"], (0, 4, 0)),
}


@pytest.mark.parametrize("case", list(CONSTRAINT_CASES))
def test_constraints(cluster: Cluster, case: str) -> None:
    constraints, counts = CONSTRAINT_CASES[case]
    node2 = cluster.node_by_name("node-2")
    values = {"node-2": node2["ID"], "arch": node2["Description"]["Platform"]["Architecture"]}
    args = []
    for c in constraints:
        args += [
            "--constraint",
            c.replace("{node-2}", values["node-2"]).replace("{arch}", values["arch"]),
        ]
    create(cluster, case, "--replicas", "4", *args)
    cluster.wait_converged(case, 4, per_node=spread(*counts))
    assert cluster.ps_nodes(case) == Counter({n: c for n, c in spread(*counts).items() if c})


def test_unsatisfiable_constraint_waits_until_a_node_fits(cluster: Cluster) -> None:
    create(cluster, "picky", "--replicas", "2", "--constraint", "node.labels.tier==gold")
    cluster.wait_pending_reason(
        "picky", "no suitable node (scheduling constraints not satisfied on 3 nodes)"
    )
    assert len(cluster.pending_tasks("picky")) == 2
    assert not cluster.live_processes()
    cluster.manager.docker("node", "update", "--label-add", "tier=gold", "node-3")
    cluster.wait_converged("picky", 2, per_node=spread(0, 0, 2))


def test_platform_constraint_nobody_meets(cluster: Cluster) -> None:
    create(cluster, "windows", "--constraint", "node.platform.os==windows")
    cluster.wait_pending_reason(
        "windows", "no suitable node (scheduling constraints not satisfied on 3 nodes)"
    )


# --------------------------------------------------------------------------- availability


def test_drain_moves_tasks_off_the_node(cluster: Cluster) -> None:
    create(cluster, "drained", "--replicas", "6", "--restart-delay", "1s")
    before = cluster.wait_converged("drained", 6, per_node=spread(2, 2, 2))
    cluster.manager.docker("node", "update", "--availability", "drain", "node-2")
    after = cluster.wait_converged("drained", 6, per_node=spread(3, 0, 3), timeout=60)
    # The tasks elsewhere were not touched; node-2's were replaced on the others.
    for name in ("node-1", "node-3"):
        assert set(before[name]) <= set(after[name]), (before, after)
    assert cluster.ps_nodes("drained") == Counter({"node-1": 3, "node-3": 3})
    (row,) = [r for r in cluster.node_table() if r["HOSTNAME"] == "node-2"]
    assert row["AVAILABILITY"] == "Drain", row
    # Nothing new lands on a drained node either.
    cluster.manager.docker("service", "scale", "--detach", "drained=8")
    cluster.wait_converged("drained", 8, per_node=spread(4, 0, 4))


def test_pause_stops_new_placements_and_keeps_what_runs(cluster: Cluster) -> None:
    create(cluster, "paused", "--replicas", "6")
    before = cluster.wait_converged("paused", 6, per_node=spread(2, 2, 2))
    cluster.manager.docker("node", "update", "--availability", "pause", "node-3")
    cluster.manager.docker("service", "scale", "--detach", "paused=9")
    after = cluster.wait_converged(
        "paused", 9, check=lambda c: c["node-3"] == 2 and c["node-1"] + c["node-2"] == 7
    )
    assert after["node-3"] == before["node-3"]  # same tasks, same processes
    holds_for(
        lambda: cluster.ps_nodes("paused")["node-3"] == 2,
        seconds=2,
        what="no new task on the paused node",
    )
    # Active again: new tasks may land there.
    cluster.manager.docker("node", "update", "--availability", "active", "node-3")
    cluster.manager.docker("service", "scale", "--detach", "paused=12")
    cluster.wait_converged("paused", 12, check=lambda c: c["node-3"] > 2)


# --------------------------------------------------------------------------- placement


def test_placement_preference_spreads_over_label_values(cluster: Cluster) -> None:
    cluster.manager.docker("node", "update", "--label-add", "dc=east", "node-1")
    cluster.manager.docker("node", "update", "--label-add", "dc=east", "node-2")
    cluster.manager.docker("node", "update", "--label-add", "dc=west", "node-3")
    create(cluster, "pref", "--replicas", "4", "--placement-pref", "spread=node.labels.dc")
    cluster.wait_converged("pref", 4, per_node=spread(1, 1, 2))


def test_replicas_max_per_node(cluster: Cluster) -> None:
    create(cluster, "capped", "--replicas", "4", "--replicas-max-per-node", "1")
    cluster.wait_converged("capped", 3, per_node=spread(1, 1, 1))
    cluster.wait_pending_reason("capped", "max replicas per node limit exceed")
    assert len(cluster.pending_tasks("capped")) == 1


# --------------------------------------------------------------------------- resources


def node_resources(cluster: Cluster) -> tuple[int, int]:
    """(NanoCPUs, MemoryBytes): the largest any node of the trio advertises."""
    nodes = [cluster.node_by_name(n)["Description"]["Resources"] for n in ALL]
    return max(r["NanoCPUs"] for r in nodes), max(r["MemoryBytes"] for r in nodes)


def test_reserve_cpu_counts_against_each_node(cluster: Cluster) -> None:
    cpus, _ = node_resources(cluster)
    whole = f"{cpus / 1e9:g}"
    # One task takes a whole node: three run, one per node, the fourth waits.
    create(cluster, "hungry", "--replicas", "4", "--reserve-cpu", whole)
    cluster.wait_converged("hungry", 3, per_node=spread(1, 1, 1))
    cluster.wait_pending_reason("hungry", "no suitable node (insufficient resources on 3 nodes)")
    assert len(cluster.pending_tasks("hungry")) == 1
    # Removing a task frees its reservation: the pending one is placed.
    cluster.manager.docker("service", "scale", "--detach", "hungry=3")
    cluster.wait_converged("hungry", 3, per_node=spread(1, 1, 1))
    assert not cluster.pending_tasks("hungry")


def test_reserve_memory_larger_than_any_node_waits_for_a_bigger_node(
    cluster: Cluster, node_factory: NodeFactory
) -> None:
    _, memory = node_resources(cluster)
    reservation = 2 * memory
    create(cluster, "bigmem", "--replicas", "3", "--reserve-memory", str(reservation))
    cluster.wait_pending_reason("bigmem", "no suitable node (insufficient resources on 3 nodes)")
    assert len(cluster.pending_tasks("bigmem")) == 3
    assert not cluster.live_processes()

    # A node with room for two of them (not three) joins: two are placed there.
    big = node_factory("node-4", extra_args=[RESOURCES_MEMORY_FLAG, str(5 * memory)])
    cluster.join(big)
    advertised = cluster.node_by_name("node-4")["Description"]["Resources"]["MemoryBytes"]
    assert advertised == 5 * memory
    cluster.wait_converged("bigmem", 2, per_node={"node-4": 2, **spread(0, 0, 0)})
    cluster.wait_pending_reason("bigmem", "no suitable node (insufficient resources on 4 nodes)")
    assert len(cluster.pending_tasks("bigmem")) == 1


# --------------------------------------------------------------------------- global


def test_global_runs_one_task_on_every_node(cluster: Cluster) -> None:
    create(cluster, "everywhere", "--mode", "global")
    cluster.wait_converged("everywhere", 3, per_node=spread(1, 1, 1))


def test_global_with_a_constraint_and_a_node_that_joins_later(
    cluster: Cluster, node_factory: NodeFactory
) -> None:
    create(cluster, "ssd-only", "--mode", "global", "--constraint", "engine.labels.disk==ssd")
    cluster.wait_converged("ssd-only", 2, per_node=spread(1, 1, 0))

    newcomer = node_factory("node-5", labels=["disk=ssd"])
    cluster.join(newcomer)
    cluster.wait_converged("ssd-only", 3, per_node={"node-5": 1, **spread(1, 1, 0)})
    # A node that does not match gets nothing.
    other = node_factory("node-6", labels=["disk=hdd"])
    cluster.join(other)
    holds_for(
        lambda: (
            cluster.running_placement("ssd-only")
            and "node-6" not in cluster.running_placement("ssd-only").values()
        ),
        seconds=2,
        what="no ssd-only task on node-6",
    )
    cluster.wait_converged("ssd-only", 3, per_node={"node-5": 1, "node-6": 0, **spread(1, 1, 0)})


# --------------------------------------------------------------------------- host ports


def test_host_mode_port_one_task_per_node(cluster: Cluster) -> None:
    """SwarmKit's host-port filter: four tasks binding one host port on three nodes,
    one per node, the fourth waits with Swarm's message; another service on that port
    waits too, until the first one's tasks are gone."""
    publish = ("--publish", "mode=host,published=18200,target=80")
    create(cluster, "hostport", "--replicas", "4", *publish)
    cluster.wait_converged("hostport", 3, per_node=spread(1, 1, 1))
    cluster.wait_pending_reason("hostport", "host-mode port already in use on 3 nodes")
    assert len(cluster.pending_tasks("hostport")) == 1
    # the same port over UDP is another port: one per node too, beside the TCP ones
    create(cluster, "udpport", "--mode", "global",
           "--publish", "mode=host,published=18200,target=80,protocol=udp")  # fmt: skip
    cluster.wait_converged("udpport", 3, per_node=spread(1, 1, 1))
    create(cluster, "sameport", *publish)
    cluster.wait_pending_reason("sameport", "host-mode port already in use on 3 nodes")
    cluster.manager.docker("service", "rm", "hostport")
    cluster.wait_converged("sameport", 1)
