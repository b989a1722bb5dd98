"""Failure detection: with `--dispatcher-heartbeat 1s`, a node whose daemon is killed
(`kill -9`: its task processes keep running) is Down after three missed heartbeats, its
tasks run elsewhere, and when its daemon comes back on the same data dir it is Ready
again and its stale tasks are shut down: no duplicates anywhere."""

from __future__ import annotations

import pytest

from ..cluster_harness import DOWN_TIMEOUT_S, HEARTBEAT_NS, RESCHEDULE_TIMEOUT_S, Cluster
from ..harness import holds_for, pid_alive, wait_until

pytestmark = pytest.mark.integration

SLEEP = ("busybox", "sleep", "1000")


def test_the_heartbeat_period_is_the_one_set(cluster: Cluster) -> None:
    spec = cluster.manager.api.inspect_swarm()["Spec"]
    assert spec["Dispatcher"]["HeartbeatPeriod"] == HEARTBEAT_NS, spec
    out = cluster.manager.docker("info").stdout
    assert "Heartbeat Period: 1 second" in out, out


def test_kill9_a_node_then_bring_it_back(cluster: Cluster) -> None:
    cluster.manager.create_service("survivor", "--replicas", "6", "--restart-delay", "1s", *SLEEP)
    before = cluster.wait_converged("survivor", 6, per_node={"node-1": 2, "node-2": 2, "node-3": 2})
    node3 = cluster.nodes["node-3"]
    orphans = before["node-3"]

    node3.kill9()
    # Its tasks outlive it, as containers outlive a killed dockerd.
    assert all(pid_alive(p) for p in orphans.values()), orphans
    cluster.wait_node_state("node-3", "down", timeout=DOWN_TIMEOUT_S)
    (row,) = [r for r in cluster.node_table() if r["HOSTNAME"] == "node-3"]
    assert row["STATUS"] == "Down", row

    # Six tasks run again, on node-1 and node-2, each with its process there.
    def rescheduled() -> bool:
        running = cluster.running_placement("survivor")
        if len(running) != 6 or "node-3" in running.values():
            return False
        live = cluster.live_processes()
        return all(live.get(t, ("", 0))[0] == host for t, host in running.items())

    wait_until(rescheduled, timeout=RESCHEDULE_TIMEOUT_S, what="node-3's tasks to run elsewhere")
    for task_id in orphans:
        (task,) = [t for t in cluster.manager.tasks("survivor") if t["ID"] == task_id]
        assert task["DesiredState"] != "running", task
    for name in ("node-1", "node-2"):  # the survivors' own tasks were left alone
        running_there = set(cluster.running_placement("survivor"))
        assert set(before[name]) <= running_there, (name, before[name])

    node3.start()
    cluster.wait_node_state("node-3", "ready", timeout=DOWN_TIMEOUT_S)
    after = cluster.wait_converged(
        "survivor",
        6,
        check=lambda c: c["node-3"] == 0 and c["node-1"] + c["node-2"] == 6,
        timeout=RESCHEDULE_TIMEOUT_S,
    )
    wait_until(
        lambda: not any(pid_alive(p) for p in orphans.values()),
        what="node-3's stale task processes to be shut down",
    )
    # And it stays so: node-3's old tasks are not started again, nothing is doubled.
    expected = sorted(t for tasks in after.values() for t in tasks)
    holds_for(
        lambda: (
            sorted(cluster.live_processes()) == expected
            and sorted(cluster.running_placement("survivor")) == expected
        ),
        seconds=3,
        what="exactly the six running tasks' processes",
    )
    (row,) = [r for r in cluster.node_table() if r["HOSTNAME"] == "node-3"]
    assert row["STATUS"] == "Ready", row

    # The node is usable again: new tasks land on it.
    cluster.manager.docker("service", "scale", "--detach", "survivor=9")
    cluster.wait_converged("survivor", 9, check=lambda c: c["node-3"] == 3)


def test_a_graceful_stop_is_a_failure_too(cluster: Cluster) -> None:
    """SIGTERM stops the daemon and its tasks; the manager sees the node go Down and
    replaces them; restarted, the node is Ready and nothing runs twice."""
    cluster.manager.create_service("steady", "--replicas", "3", "--restart-delay", "1s", *SLEEP)
    cluster.wait_converged("steady", 3, per_node={"node-1": 1, "node-2": 1, "node-3": 1})
    node2 = cluster.nodes["node-2"]
    node2.stop()
    cluster.wait_node_state("node-2", "down", timeout=DOWN_TIMEOUT_S)
    cluster.wait_converged(
        "steady",
        3,
        check=lambda c: c["node-2"] == 0,
        timeout=RESCHEDULE_TIMEOUT_S,
    )
    node2.start()
    cluster.wait_node_state("node-2", "ready", timeout=DOWN_TIMEOUT_S)
    # Back, it runs none of its old tasks again, and nothing is doubled: what held
    # before the restart must keep holding after it, for a while.
    after = cluster.wait_converged("steady", 3, check=lambda c: c["node-2"] == 0)
    expected = sorted(t for tasks in after.values() for t in tasks)
    holds_for(
        lambda: (
            sorted(cluster.live_processes()) == expected
            and sorted(cluster.running_placement("steady")) == expected
        ),
        seconds=3,
        what="the same three tasks, none on the restarted node-2",
    )
