"""Quorum lost and recovered with the daemons' embedded etcd members (issue 13,
docs/ha.md): three managers started without `--datastore-endpoint` and a worker,
each in a network namespace of its own (NetnsLab; each member on its node's address),
driven with the real docker CLI.

Two managers killed with SIGKILL (their members die with them): a write through the
survivor is refused with Docker's message, reads answer from its replica, the
worker's task runs on. One manager back: quorum again, writes succeed. Then two
managers gone for good: `docker swarm init --force-new-cluster` on the survivor
restarts its member as an etcd cluster of one, and the cluster serves again with its
services (a write converges on the worker, whose task never restarted).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..cluster_harness import Cluster, ClusterNode, NetnsLab, NodeFactory
from ..harness import stop_together, wait_until
from .test_ha_embedded import SLEEP, TIMEOUT_S, etcd_members, node_ids, one_leader
from .test_quorum_loss import NO_LEADER, REFUSED_TIMEOUT_S, create

pytestmark = pytest.mark.integration


@pytest.fixture
def made(node_factory: NodeFactory) -> Iterator[list[ClusterNode]]:
    nodes: list[ClusterNode] = []
    try:
        yield nodes
    finally:
        stop_together(list(reversed(nodes)))


def refused(node: ClusterNode, name: str) -> str:
    code, out = wait_until(
        lambda: (r := create(node, name))[0] != 0 and r,
        timeout=REFUSED_TIMEOUT_S,
        what=f"a write refused through {node.node_name}",
    )
    return out


def test_quorum_lost_then_back_then_force_new_cluster(
    lab: NetnsLab, node_factory: NodeFactory, made: list[ClusterNode]
) -> None:
    hosts = [lab.add_host() for _ in range(4)]
    managers = [
        node_factory(f"quo-{i + 1}", netns=ns, addr=addr) for i, (ns, addr) in enumerate(hosts[:3])
    ]
    ns, addr = hosts[3]
    worker = node_factory("quo-w", netns=ns, addr=addr)
    made.extend([*managers, worker])
    cluster = Cluster.init(managers[0])
    for m in managers[1:]:
        cluster.join(m, role="manager")
    cluster.join(worker)
    survivor, second, third = managers
    names = [m.node_name for m in managers]
    wait_until(lambda: one_leader(survivor, names), timeout=TIMEOUT_S, what="one leader")
    survivor.docker(
        "service", "create", "--name", "web", "--replicas", "1",
        "--constraint", "node.role==worker", "busybox", *SLEEP,
    )  # fmt: skip
    before = cluster.wait_converged("web", 1, per_node={"quo-w": 1}, timeout=TIMEOUT_S)["quo-w"]

    # two of three managers down, their members with them: no quorum
    second.kill9()
    third.kill9()
    assert NO_LEADER in refused(survivor, "refused-1")
    assert "web" in survivor.service_names()  # reads answer from the replica
    assert cluster.wait_converged("web", 1)["quo-w"] == before  # the task runs on

    # one back: quorum again, a leader, writes succeed
    second.start()
    wait_until(
        lambda: create(survivor, "after")[0] == 0,
        timeout=TIMEOUT_S,
        what="a write through the survivor once quorum is back",
    )
    cluster.wait_converged("after", 1, per_node={"quo-w": 1}, timeout=TIMEOUT_S)

    # two managers gone for good: the survivor forces a new cluster of one
    second.kill9()
    assert NO_LEADER in refused(survivor, "refused-2")
    result = survivor.docker("swarm", "init", "--force-new-cluster")
    assert result.returncode == 0, result
    assert etcd_members(survivor) == {node_ids(survivor)["quo-1"]}
    assert create(survivor, "recovered")[0] == 0
    cluster.wait_converged("recovered", 1, per_node={"quo-w": 1}, timeout=TIMEOUT_S)
    assert {"web", "after", "recovered"} <= set(survivor.service_names())
    # the worker's task never restarted
    assert cluster.wait_converged("web", 1)["quo-w"] == before
