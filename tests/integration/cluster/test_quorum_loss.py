"""Quorum lost and back (issue 13, docs/ha.md "Quorum lost"): two `shoal daemon`
managers started with `--datastore-endpoint` on the three members of one etcd (real
etcd, real mutual TLS, loopback) and a worker (process runtime), driven with the real
docker CLI.

Two of the three etcd members stopped: etcd has no quorum. A `docker service create`
through either manager is refused with Docker's NoLeader message (the leader's lease
cannot be kept; a commit in flight is in doubt and taken back), `docker service ls`
still answers from each manager's replica, and the worker's task runs on (same task,
same pid). One member back: an election happens, a write through either manager
succeeds, and everything acknowledged before is there; the worker's task was not
restarted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ..cluster_harness import Cluster, ClusterNode, NodeFactory
from ..etcd_harness import EtcdThread
from ..harness import stop_together, wait_until

pytestmark = pytest.mark.integration

SLEEP = ("sleep", "1000")
NO_LEADER = (
    "The swarm does not have a leader. It's possible that too few managers are online. "
    "Make sure more than half of the managers are online."
)
# The leader's lease (3 s) and a write's wait for a leader (10 s) are within it.
REFUSED_TIMEOUT_S = 30.0
BACK_TIMEOUT_S = 60.0


def create(node: ClusterNode, name: str) -> tuple[int, str]:
    r = node.docker(
        "service", "create", "--detach", "--name", name, "--replicas", "1",
        "--constraint", "node.role==worker", "busybox", *SLEEP,
        check=False,
    )  # fmt: skip
    return r.returncode, r.stdout + r.stderr


def test_quorum_lost_writes_refused_reads_answer_tasks_run_then_back(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    etcd = EtcdThread(tmp_path / "etcd", size=3)
    with etcd as members:
        args = members.datastore_args("shoal-managers", tmp_path / "tls", every_member=True)
        managers = [node_factory(f"mgr-{i}", extra_args=args) for i in (1, 2)]
        worker = node_factory("worker-1")
        try:
            cluster = Cluster.init(managers[0])
            cluster.join(managers[1], role="manager")
            cluster.join(worker)
            leader, follower = managers
            leader.docker(
                "service", "create", "--name", "web", "--replicas", "1",
                "--constraint", "node.role==worker", "busybox", *SLEEP,
            )  # fmt: skip
            before = cluster.wait_converged("web", 1, per_node={"worker-1": 1})["worker-1"]
            for i in range(3):
                follower.docker("service", "update", "--detach", "--label-add", f"n={i}", "web")
            wait_until(
                lambda: leader.service("web")["Spec"]["Labels"].get("n") == "2",
                what="the last label acknowledged on the leader's replica",
            )

            # two of three members stopped: etcd has no quorum
            _, m2, m3 = members.members
            etcd.run(m2.stop())
            etcd.run(m3.stop())

            for node in (leader, follower):
                code, out = wait_until(
                    lambda node=node: (
                        (r := create(node, f"refused-{node.node_name}"))[0] != 0 and r
                    ),
                    timeout=REFUSED_TIMEOUT_S,
                    what=f"a write refused through {node.node_name}",
                )
                assert NO_LEADER in out, out
            # reads answer from each replica, with everything acknowledged
            for node in (leader, follower):
                assert "web" in node.service_names()
                assert node.service("web")["Spec"]["Labels"]["n"] == "2"
            # the worker's task runs on
            assert cluster.wait_converged("web", 1)["worker-1"] == before

            # one member back: quorum again, a leader is elected, writes succeed
            etcd.run(m2.start())
            wait_until(
                lambda: create(follower, "after")[0] == 0,
                timeout=BACK_TIMEOUT_S,
                what="a write through the follower once quorum is back",
            )
            cluster.manager = leader
            cluster.wait_converged("after", 1, per_node={"worker-1": 1}, timeout=BACK_TIMEOUT_S)
            for node in (leader, follower):
                wait_until(
                    lambda node=node: {"web", "after"} <= set(node.service_names()),
                    what=f"both services through {node.node_name}",
                )
                assert node.service("web")["Spec"]["Labels"]["n"] == "2"
            # a refused write was in doubt: etcd may have applied it once quorum came
            # back (raft commits the old leader's log), or not; both replicas agree
            wait_until(
                lambda: set(leader.service_names()) == set(follower.service_names()),
                what="both replicas alike",
            )
            leader.docker("service", "update", "--detach", "--label-add", "n=3", "web")
            assert leader.service("web")["Spec"]["Labels"]["n"] == "3"
            # the worker's task was never restarted
            assert cluster.wait_converged("web", 1)["worker-1"] == before
        finally:
            stop_together([worker, *reversed(managers)])
