"""Node management through the CLI against the manager of a three-node cluster:
`docker node ls|inspect|ps|update|promote|demote` (`node rm` is in test_membership)."""

from __future__ import annotations

import json

import pytest

from ..cluster_harness import Cluster
from ..harness import parse_table

pytestmark = pytest.mark.integration

SLEEP = ("busybox", "sleep", "1000")


def inspect(cluster: Cluster, ref: str) -> dict:
    (node,) = json.loads(cluster.manager.docker("node", "inspect", ref).stdout)
    return node


def hostnames(cluster: Cluster, *filters: str) -> list[str]:
    args = [a for f in filters for a in ("--filter", f)]
    return sorted(
        r["HOSTNAME"] for r in parse_table(cluster.manager.docker("node", "ls", *args).stdout)
    )


def test_node_inspect(cluster: Cluster) -> None:
    node2 = inspect(cluster, "node-2")
    assert node2["Description"]["Hostname"] == "node-2"
    assert node2["ID"] == cluster.nodes["node-2"].node_id()
    # By ID, by unique ID prefix, and `self` on the manager.
    assert inspect(cluster, node2["ID"])["ID"] == node2["ID"]
    assert inspect(cluster, node2["ID"][:6])["ID"] == node2["ID"]
    me = inspect(cluster, "self")
    assert me["Description"]["Hostname"] == "node-1"
    assert me["ManagerStatus"]["Leader"] is True

    pretty = cluster.manager.docker("node", "inspect", "--pretty", "node-3").stdout
    assert "node-3" in pretty and "Status:" in pretty and "Ready" in pretty, pretty

    missing = cluster.manager.docker("node", "inspect", "node-9", check=False)
    assert missing.returncode == 1
    assert "node-9" in missing.stderr and "not found" in missing.stderr, missing.stderr


def test_label_add_and_rm(cluster: Cluster) -> None:
    cluster.manager.docker(
        "node", "update", "--label-add", "foo=bar", "--label-add", "zone=1", "node-2"
    )
    assert inspect(cluster, "node-2")["Spec"]["Labels"] == {"foo": "bar", "zone": "1"}
    assert hostnames(cluster, "node.label=zone=1") == ["node-2"]
    cluster.manager.docker("node", "update", "--label-rm", "foo", "node-2")
    assert inspect(cluster, "node-2")["Spec"]["Labels"] == {"zone": "1"}
    assert hostnames(cluster, "node.label=foo") == []
    # Engine labels (from the daemons' --label) are filtered apart from node labels.
    assert hostnames(cluster, "label=disk=ssd") == ["node-1", "node-2"]


@pytest.mark.parametrize("availability", ["drain", "pause", "active"])
def test_availability_shows_in_node_ls(cluster: Cluster, availability: str) -> None:
    cluster.manager.docker("node", "update", "--availability", availability, "node-3")
    assert inspect(cluster, "node-3")["Spec"]["Availability"] == availability
    (row,) = [r for r in cluster.node_table() if r["HOSTNAME"] == "node-3"]
    assert row["AVAILABILITY"] == availability.capitalize(), row
    assert row["STATUS"] == "Ready", row


def test_roles_promote_and_demote(cluster: Cluster) -> None:
    assert hostnames(cluster, "role=manager") == ["node-1"]
    assert hostnames(cluster, "role=worker") == ["node-2", "node-3"]

    cluster.manager.docker("node", "promote", "node-3")
    assert inspect(cluster, "node-3")["Spec"]["Role"] == "manager"
    assert hostnames(cluster, "role=manager") == ["node-1", "node-3"]
    cluster.manager.docker("node", "demote", "node-3")
    assert inspect(cluster, "node-3")["Spec"]["Role"] == "worker"

    cluster.manager.docker("node", "update", "--role", "manager", "node-2")
    assert inspect(cluster, "node-2")["Spec"]["Role"] == "manager"
    assert hostnames(cluster, "role=worker") == ["node-3"]
    cluster.manager.docker("node", "update", "--role", "worker", "node-2")
    assert inspect(cluster, "node-2")["Spec"]["Role"] == "worker"
    assert hostnames(cluster, "role=manager") == ["node-1"]

    # The last manager cannot be demoted.
    result = cluster.manager.docker("node", "demote", "node-1", check=False)
    assert result.returncode == 1, result
    assert "attempting to demote the last manager of the swarm" in result.stderr, result
    assert inspect(cluster, "node-1")["Spec"]["Role"] == "manager"


def test_node_ps_lists_the_tasks_on_a_node(cluster: Cluster) -> None:
    cluster.manager.create_service(
        "pinned", "--replicas", "2", "--constraint", "node.hostname==node-2", *SLEEP
    )
    placed = cluster.wait_converged("pinned", 2, per_node={"node-2": 2})
    assert len(placed["node-2"]) == 2

    rows = parse_table(cluster.manager.docker("node", "ps", "node-2").stdout)
    mine = [r for r in rows if r["NAME"].startswith("pinned.")]
    assert sorted(r["NAME"] for r in mine) == ["pinned.1", "pinned.2"], rows
    assert all(r["NODE"] == "node-2" for r in mine), rows
    assert all(r["CURRENT STATE"].startswith("Running") for r in mine), rows
    rows = parse_table(cluster.manager.docker("node", "ps", "node-3").stdout)
    assert not [r for r in rows if r["NAME"].startswith("pinned.")], rows
    # Several nodes at once. (The CLI adds each node to one shared filter, so a task may
    # be listed once per node queried after its own, with dockerd too: count IDs.)
    rows = parse_table(cluster.manager.docker("node", "ps", "node-2", "node-3").stdout)
    assert {r["ID"] for r in rows if "pinned." in r["NAME"]} == {r["ID"] for r in mine}, rows
