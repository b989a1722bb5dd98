"""Three daemons, each in a network namespace of its own with its own address on a
private /24 (veth pairs into one bridge on the host): the cluster forms over real
addresses, tasks spread, and a network partition (the node's veth cut) is a failure
the manager detects and heals from, with no task running twice afterwards.

The namespaces, veths and bridge are named here with a random suffix and removed by
those names at the end, even after a failure."""

from __future__ import annotations

import sys

import pytest

from ..cluster_harness import (
    DOWN_TIMEOUT_S,
    RESCHEDULE_TIMEOUT_S,
    Cluster,
    NetnsLab,
    ns_exec,
)
from ..harness import pid_alive, wait_until

pytestmark = pytest.mark.integration

SLEEP = ("busybox", "sleep", "1000")


@pytest.fixture(scope="module")
def spread_cluster(netns_trio: Cluster) -> Cluster:
    return netns_trio


def connects(ns: str, addr: str, port: int) -> bool:
    """Can a TCP connection to addr:port be opened from namespace `ns`? (Not asked of
    the host: a sandbox's transparent proxy may accept any outbound connection.)"""
    code = f"import socket; socket.create_connection(({addr!r}, {port}), timeout=3).close()"
    return ns_exec(ns, sys.executable, "-c", code).returncode == 0


def test_the_cluster_port_is_reached_over_the_namespaces_addresses(
    spread_cluster: Cluster,
) -> None:
    manager = spread_cluster.manager
    assert manager.cluster_port is not None
    for worker in spread_cluster.workers:
        assert worker.netns is not None
        assert connects(worker.netns, manager.addr, manager.cluster_port), worker.netns


def test_each_node_has_its_own_address(spread_cluster: Cluster) -> None:
    addrs = set()
    for name, node in spread_cluster.nodes.items():
        info = spread_cluster.node_by_name(name)
        assert info["Status"]["State"] == "ready", info["Status"]
        assert info["Status"]["Addr"] == node.addr, (name, info["Status"], node.addr)
        addrs.add(info["Status"]["Addr"])
    assert len(addrs) == 3
    me = spread_cluster.node_by_name("node-1")
    assert me["ManagerStatus"]["Addr"] == spread_cluster.manager.listen_addr, me
    rows = spread_cluster.node_table()
    assert sorted(r["HOSTNAME"] for r in rows) == ["node-1", "node-2", "node-3"], rows
    assert all(r["STATUS"] == "Ready" for r in rows), rows
    # A worker's own daemon knows the manager's address.
    for worker in spread_cluster.workers:
        remote = worker.info()["Swarm"].get("RemoteManagers") or []
        assert spread_cluster.manager.listen_addr in [m["Addr"] for m in remote], remote


def test_spread_then_a_partition_and_its_healing(lab: NetnsLab, spread_cluster: Cluster) -> None:
    cluster = spread_cluster
    cluster.manager.create_service("parted", "--replicas", "3", "--restart-delay", "1s", *SLEEP)
    before = cluster.wait_converged("parted", 3, per_node={"node-1": 1, "node-2": 1, "node-3": 1})
    cut = cluster.nodes["node-3"]
    assert cut.netns is not None
    stale = before["node-3"]

    lab.disconnect(cut.netns)
    try:
        cluster.wait_node_state("node-3", "down", timeout=DOWN_TIMEOUT_S)

        def moved() -> bool:
            running = cluster.running_placement("parted")
            if len(running) != 3 or "node-3" in running.values():
                return False
            live = cluster.live_processes()
            return all(live.get(t, ("", 0))[0] == host for t, host in running.items())

        wait_until(moved, timeout=RESCHEDULE_TIMEOUT_S, what="node-3's task to run elsewhere")
    finally:
        lab.reconnect(cut.netns)

    cluster.wait_node_state("node-3", "ready", timeout=DOWN_TIMEOUT_S)
    cluster.wait_converged(
        "parted",
        3,
        check=lambda c: c["node-3"] == 0 and c["node-1"] + c["node-2"] == 3,
        timeout=RESCHEDULE_TIMEOUT_S,
    )
    wait_until(
        lambda: not any(pid_alive(p) for p in stale.values()),
        what="node-3's stale task to be shut down after the partition healed",
    )
