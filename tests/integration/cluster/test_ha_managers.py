"""Several managers on one etcd (issue 13, docs/ha.md): three `shoal daemon`s started
with `--datastore-endpoint` on one etcd (real etcd, real mutual TLS, loopback) and a
worker, joined with the real docker CLI.

- The worker joins through a follower (the join handed to the leader).
- `docker node ls` through each manager shows one Leader and two Reachable, and
  `docker info` three managers with this node a manager.
- A service created through a follower converges (its write forwarded to the leader
  over the cluster port); its logs read through the follower (streamed from the leader).
- The leader and another manager killed with SIGKILL: the third, which joined after
  the worker (the worker heard of it from a heartbeat's answer), leads; writes succeed
  again, and the worker's tasks were not restarted (same task IDs, same pids). The
  first leader restarted follows (Reachable), a write through it reaches the new
  leader and is read back through it at once; the manager still dead is shown
  Unreachable.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ..cluster_harness import Cluster, ClusterNode, NodeFactory
from ..etcd_harness import EtcdThread
from ..harness import parse_table, stop_together, wait_until

pytestmark = pytest.mark.integration

SLEEP = ("sleep", "1000")
SLEEP_SH = "exec sleep 1000"
GREETING = "hello-from-web"
# A new leader once the old one's lease (3 s) expired, and agents back in session.
FAILOVER_TIMEOUT_S = 30.0


def manager_status(node: ClusterNode) -> dict[str, str]:
    """{hostname: MANAGER STATUS} of `docker node ls` through `node`."""
    rows = parse_table(node.docker("node", "ls").stdout)
    return {r["HOSTNAME"]: r["MANAGER STATUS"] for r in rows}


def cluster_port(node: ClusterNode) -> int:
    """The cluster port a manager that joined bound (it asked for port 0)."""
    swarm = node.info()["Swarm"]
    (addr,) = [m["Addr"] for m in swarm["RemoteManagers"] if m["NodeID"] == swarm["NodeID"]]
    return int(addr.rpartition(":")[2])


@pytest.fixture
def ha(node_factory: NodeFactory, tmp_path: Path) -> Iterator[tuple[Cluster, list[ClusterNode]]]:
    """Three managers on one etcd (mgr-1 ran `swarm init`) and a worker. The daemons
    are stopped before the etcd they share."""
    etcd = EtcdThread(tmp_path / "etcd")
    with etcd as cluster_etcd:
        args = cluster_etcd.datastore_args("shoal-managers", tmp_path / "tls")
        managers = [node_factory(f"mgr-{i}", extra_args=args) for i in (1, 2, 3)]
        worker = node_factory("worker-1", extra_args=args)  # promotable
        try:
            cluster = Cluster.init(managers[0])
            cluster.join(managers[1], role="manager")
            managers[1].cluster_port = cluster_port(managers[1])
            # the worker joins through a follower (which hands the join to the leader);
            # mgr-3 joins after it: the worker learns of it from a heartbeat's answer
            joined = worker.join(cluster.join_token(), managers[1])
            assert "This node joined a swarm as a worker." in joined.stdout, joined
            cluster.nodes[worker.node_name] = worker
            cluster.wait_node_state(worker.node_name, "ready")
            cluster.join(managers[2], role="manager")
            yield cluster, managers
        finally:
            stop_together([worker, *reversed(managers)])


def test_three_managers_one_leader_writes_through_a_follower(
    ha: tuple[Cluster, list[ClusterNode]],
) -> None:
    cluster, managers = ha
    names = [m.node_name for m in managers]

    def one_leader(node: ClusterNode) -> dict[str, str] | None:
        status = manager_status(node)
        shown = sorted(status[n] for n in names)
        return status if shown == ["Leader", "Reachable", "Reachable"] else None

    for m in managers:
        status = wait_until(lambda m=m: one_leader(m), what=f"one leader through {m.node_name}")
        assert status["mgr-1"] == "Leader", status
        assert status["worker-1"] == "", status
        info = m.info()["Swarm"]
        assert info["ControlAvailable"] is True
        assert info["Managers"] == 3
        assert len(info["RemoteManagers"]) == 3

    # a follower's write goes to the leader; the worker runs the tasks
    follower = managers[1]
    follower.docker(
        "service", "create", "--name", "web", "--replicas", "2",
        "--constraint", "node.role==worker", "busybox", "sh", "-c", f"echo {GREETING}; {SLEEP_SH}",
    )  # fmt: skip
    placed = cluster.wait_converged("web", 2, per_node={"worker-1": 2})
    before = placed["worker-1"]
    assert follower.service("web")["Spec"]["Mode"]["Replicated"]["Replicas"] == 2
    # every manager's replica has it
    for m in managers:
        wait_until(lambda m=m: "web" in m.service_names(), what=f"web through {m.node_name}")
    # logs through a follower: streamed from the leader, which holds the sessions
    wait_until(
        lambda: follower.docker("service", "logs", "web").stdout.count(GREETING) == 2,
        what="both tasks' output through a follower",
    )

    # the leader and mgr-2 killed: mgr-3, the manager the worker heard of only from a
    # heartbeat's answer, leads; the worker finds it and keeps its tasks
    managers[0].kill9()
    managers[1].kill9()
    last = managers[2]
    cluster.manager = last
    wait_until(
        lambda: manager_status(last).get("mgr-3") == "Leader",
        timeout=FAILOVER_TIMEOUT_S,
        what="mgr-3 leading",
    )
    last.docker(
        "service", "create", "--detach", "--name", "after", "--replicas", "1",
        "--constraint", "node.role==worker", "busybox", *SLEEP,
    )  # fmt: skip
    after = cluster.wait_converged("web", 2, per_node={"worker-1": 2}, timeout=FAILOVER_TIMEOUT_S)
    cluster.wait_converged("after", 1, per_node={"worker-1": 1}, timeout=FAILOVER_TIMEOUT_S)
    # the worker's tasks went on: same tasks, same processes
    assert after["worker-1"] == before, (before, after)

    # the first leader restarted: a follower on its own replica, Reachable again, and
    # a write through it is forwarded to mgr-3 (and read back at once through it:
    # it answers only once its replica holds the write)
    managers[0].start()
    wait_until(
        lambda: manager_status(managers[0]).get("mgr-1") == "Reachable",
        timeout=FAILOVER_TIMEOUT_S,
        what="mgr-1 back as a follower",
    )
    managers[0].docker("service", "update", "--detach", "--replicas", "2", "after")
    assert managers[0].service("after")["Spec"]["Mode"]["Replicated"]["Replicas"] == 2
    cluster.wait_converged("after", 2, per_node={"worker-1": 2}, timeout=FAILOVER_TIMEOUT_S)
    assert cluster.wait_converged("web", 2)["worker-1"] == before
    # mgr-2, still dead, is shown unreachable once the new leader's grace is over
    status = wait_until(
        lambda: (s := manager_status(managers[0])).get("mgr-2") == "Unreachable" and s,
        timeout=FAILOVER_TIMEOUT_S,
        what="mgr-2 unreachable",
    )
    assert status["mgr-3"] == "Leader" and status["mgr-1"] == "Reachable", status


def test_promote_and_demote_on_a_shared_store(ha: tuple[Cluster, list[ClusterNode]]) -> None:
    """`node promote` of the worker makes its daemon a manager for real (its API
    answers manager calls from its own replica, it is Reachable), `node demote` a
    worker again; its tasks run on through both (same task IDs, same pids)."""
    cluster, managers = ha
    worker = cluster.nodes["worker-1"]
    managers[0].docker(
        "service", "create", "--name", "kept", "--replicas", "1",
        "--constraint", "node.hostname==worker-1", "busybox", *SLEEP,
    )  # fmt: skip
    before = cluster.wait_converged("kept", 1, per_node={"worker-1": 1})["worker-1"]
    assert worker.docker("node", "ls", check=False).returncode != 0  # not a manager

    managers[1].docker("node", "promote", "worker-1")
    status = wait_until(
        lambda: (
            worker.docker("node", "ls", check=False).returncode == 0
            and manager_status(worker).get("worker-1") == "Reachable"
            and manager_status(worker)
        ),
        timeout=FAILOVER_TIMEOUT_S,
        what="worker-1 a manager for real",
    )
    assert sorted(status.values()).count("Leader") == 1, status
    assert worker.info()["Swarm"]["ControlAvailable"] is True
    assert cluster.wait_converged("kept", 1)["worker-1"] == before

    managers[1].docker("node", "demote", "worker-1")
    wait_until(
        lambda: (
            worker.docker("node", "ls", check=False).returncode != 0
            and worker.info()["Swarm"]["ControlAvailable"] is False
        ),
        timeout=FAILOVER_TIMEOUT_S,
        what="worker-1 a worker again",
    )
    assert manager_status(managers[0]).get("worker-1") == ""
    assert cluster.wait_converged("kept", 1)["worker-1"] == before
