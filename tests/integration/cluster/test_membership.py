"""Joining a cluster: three daemons, `swarm init` on one and `swarm join` on two more;
what the manager and the workers then say about it; join tokens (format, rotation,
wrong tokens); `swarm leave` and `node rm`; a worker refusing manager commands."""

from __future__ import annotations

import hashlib
import re
import secrets

import pytest
from cryptography.hazmat.primitives import serialization

from ..cluster_harness import (
    INVALID_TOKEN,
    JOINED_AS_WORKER,
    NOT_MANAGER,
    ROOT_CA_FILE,
    TOKEN_RE,
    Cluster,
    ClusterNode,
    NodeFactory,
    load_cert,
)
from ..harness import holds_for, parse_table, wait_until

pytestmark = pytest.mark.integration

BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def base36(n: int, width: int) -> str:
    out = ""
    while n:
        n, r = divmod(n, 36)
        out = BASE36[r] + out
    return out.rjust(width, "0")


def hostnames_in_node_ls(cluster: Cluster) -> list[str]:
    return sorted(r["HOSTNAME"] for r in cluster.node_table())


def assert_stays_out(node: ClusterNode, cluster: Cluster) -> None:
    assert re.search(r"^\s*Swarm: inactive$", node.info_text(), re.M), node.info_text()
    assert node.swarm_state() == "inactive"
    assert node.node_name not in hostnames_in_node_ls(cluster)


# --------------------------------------------------------------------------- the trio


def test_node_ls_shows_three_ready_nodes_one_leader(cluster: Cluster) -> None:
    rows = cluster.node_table()
    assert sorted(r["HOSTNAME"] for r in rows) == ["node-1", "node-2", "node-3"], rows
    assert all(r["STATUS"] == "Ready" for r in rows), rows
    assert all(r["AVAILABILITY"] == "Active" for r in rows), rows
    leaders = [r for r in rows if r["MANAGER STATUS"] == "Leader"]
    assert [r["HOSTNAME"] for r in leaders] == ["node-1"], rows
    assert all(r["MANAGER STATUS"] == "" for r in rows if r["HOSTNAME"] != "node-1"), rows
    # The CLI marks the node it talks to.
    (me,) = [r for r in rows if r["ID"].endswith("*")]
    assert me["HOSTNAME"] == "node-1", rows

    info = cluster.manager.info_text()
    assert re.search(r"^\s*Swarm: active$", info, re.M), info
    assert re.search(r"^\s*Is Manager: true$", info, re.M), info
    assert re.search(r"^\s*Nodes: 3$", info, re.M), info
    assert re.search(r"^\s*Managers: 1$", info, re.M), info


def test_each_worker_is_the_node_the_manager_lists(cluster: Cluster) -> None:
    for worker in cluster.workers:
        own_id = worker.node_id()
        node = cluster.node_by_name(worker.node_name)
        assert node["ID"] == own_id, (worker.node_name, node["ID"], own_id)
        assert node["Spec"]["Role"] == "worker", node["Spec"]
        assert node["Spec"]["Availability"] == "active", node["Spec"]
        assert node["Status"]["State"] == "ready", node["Status"]
        assert node["Status"]["Addr"] == worker.addr, node["Status"]
        assert not node.get("ManagerStatus"), node
        # What the agent reports about itself reached the manager.
        labels = node["Description"]["Engine"].get("Labels") or {}
        assert labels.get("disk") in ("ssd", "hdd"), node["Description"]
        assert node["Description"]["Platform"]["OS"] == "linux", node["Description"]
        assert node["Description"]["Resources"]["MemoryBytes"] > 0, node["Description"]
        assert node["Description"]["Resources"]["NanoCPUs"] > 0, node["Description"]
    me = cluster.node_by_name("node-1")
    assert me["ManagerStatus"]["Leader"] is True, me
    assert me["ManagerStatus"]["Addr"] == cluster.manager.listen_addr, me


def test_worker_info_shows_an_active_swarm_and_no_manager(cluster: Cluster) -> None:
    for worker in cluster.workers:
        text = worker.info_text()
        assert re.search(r"^\s*Swarm: active$", text, re.M), text
        assert re.search(r"^\s*Is Manager: false$", text, re.M), text
        info = worker.info()["Swarm"]
        assert info["LocalNodeState"] == "active", info
        assert info["ControlAvailable"] is False, info


@pytest.mark.parametrize(
    "args",
    [
        ("node", "ls"),
        ("node", "inspect", "node-1"),
        ("node", "update", "--availability", "drain", "node-1"),
        ("service", "ls"),
        ("service", "create", "--detach", "--name", "from-worker", "busybox", "sleep", "60"),
        ("swarm", "join-token", "worker"),
    ],
    ids=lambda a: "-".join(a[:2]),
)
def test_a_worker_refuses_manager_commands(cluster: Cluster, args: tuple[str, ...]) -> None:
    for worker in cluster.workers:
        result = worker.docker(*args, check=False)
        assert result.returncode == 1, result
        assert NOT_MANAGER in result.stderr, result.stderr
    assert "from-worker" not in cluster.manager.service_names()
    assert cluster.node_by_name("node-1")["Spec"]["Availability"] == "active"


# --------------------------------------------------------------------------- tokens


def test_join_tokens_carry_the_ca_digest(cluster: Cluster) -> None:
    worker, manager = cluster.join_token("worker"), cluster.join_token("manager")
    w, m = TOKEN_RE.match(worker), TOKEN_RE.match(manager)
    assert w and m, (worker, manager)
    assert w["digest"] == m["digest"], (worker, manager)
    assert w["secret"] != m["secret"], (worker, manager)
    # SwarmKit's digest: SHA-256 of the root CA certificate, base 36, 50 characters.
    root = load_cert(cluster.manager.certs_dir / ROOT_CA_FILE)
    der = root.public_bytes(serialization.Encoding.DER)
    assert w["digest"] == base36(int.from_bytes(hashlib.sha256(der).digest(), "big"), 50)

    # Without -q, the command line to run on the new node.
    out = cluster.manager.docker("swarm", "join-token", "worker").stdout
    assert "To add a worker to this swarm, run the following command:" in out, out
    assert f"docker swarm join --token {worker} {cluster.manager.listen_addr}" in out, out
    out = cluster.manager.docker("swarm", "join-token", "manager").stdout
    assert "To add a manager to this swarm, run the following command:" in out, out
    assert f"docker swarm join --token {manager} {cluster.manager.listen_addr}" in out, out


def test_a_wrong_token_is_refused_and_the_node_stays_out(
    cluster: Cluster, node_factory: NodeFactory
) -> None:
    outsider = node_factory("outsider")
    good = TOKEN_RE.match(cluster.join_token("worker"))
    assert good
    wrong_secret = f"SWMTKN-1-{good['digest']}-{base36(secrets.randbits(128), 25)}"
    result = outsider.join(wrong_secret, cluster.manager, check=False)
    assert result.returncode != 0, result
    assert INVALID_TOKEN in result.stderr, result.stderr
    assert_stays_out(outsider, cluster)

    # The token's digest does not match the manager's CA: the joining node must not
    # trust that manager (even with the right secret).
    wrong_digest = f"SWMTKN-1-{base36(secrets.randbits(256), 50)}-{good['secret']}"
    result = outsider.join(wrong_digest, cluster.manager, check=False)
    assert result.returncode != 0, result
    assert_stays_out(outsider, cluster)

    result = outsider.join("SWMTKN-1-not-a-token", cluster.manager, check=False)
    assert result.returncode != 0, result
    assert_stays_out(outsider, cluster)
    assert hostnames_in_node_ls(cluster) == ["node-1", "node-2", "node-3"]


def test_a_rotated_worker_token_refuses_the_old_one(
    cluster: Cluster, node_factory: NodeFactory
) -> None:
    old = cluster.join_token("worker")
    manager_token = cluster.join_token("manager")
    out = cluster.manager.docker("swarm", "join-token", "--rotate", "worker").stdout
    assert "Successfully rotated worker join token." in out, out
    new = cluster.join_token("worker")
    assert new != old
    assert TOKEN_RE.match(new)
    assert cluster.join_token("manager") == manager_token  # only the worker token rotated

    late = node_factory("late")
    result = late.join(old, cluster.manager, check=False)
    assert result.returncode != 0, result
    assert INVALID_TOKEN in result.stderr, result.stderr
    assert_stays_out(late, cluster)

    result = late.join(new, cluster.manager)
    assert JOINED_AS_WORKER in result.stdout, result
    cluster.nodes[late.node_name] = late
    cluster.wait_node_state("late", "ready")
    assert late.swarm_state() == "active"


def test_leave_then_node_rm(cluster: Cluster, node_factory: NodeFactory) -> None:
    leaver = node_factory("leaver")
    cluster.join(leaver)
    assert hostnames_in_node_ls(cluster) == ["leaver", "node-1", "node-2", "node-3"]

    out = leaver.docker("swarm", "leave").stdout
    assert "Node left the swarm." in out, out
    assert leaver.swarm_state() == "inactive"
    assert re.search(r"^\s*Swarm: inactive$", leaver.info_text(), re.M)
    cluster.wait_node_state("leaver", "down")
    (row,) = [r for r in cluster.node_table() if r["HOSTNAME"] == "leaver"]
    assert row["STATUS"] == "Down", row

    cluster.manager.docker("node", "rm", "leaver")
    assert hostnames_in_node_ls(cluster) == ["node-1", "node-2", "node-3"]
    # Out for good: it can join again, as a new node.
    cluster.join(leaver)
    assert hostnames_in_node_ls(cluster) == ["leaver", "node-1", "node-2", "node-3"]


def test_the_manager_does_not_leave_without_force(cluster: Cluster) -> None:
    result = cluster.manager.docker("swarm", "leave", check=False)
    assert result.returncode == 1, result
    assert (
        "You are attempting to leave the swarm on a node that is participating as a manager."
        in result.stderr
    ), result.stderr
    assert cluster.manager.swarm_state() == "active"
    assert hostnames_in_node_ls(cluster) == ["node-1", "node-2", "node-3"]


def test_the_manager_token_records_a_manager(cluster: Cluster, node_factory: NodeFactory) -> None:
    second = node_factory("second")
    # A manager for real: the first manager's store moves from SQLite into etcd, and
    # the new one runs a member of its own (docs/ha.md; test_ha_embedded.py).
    result = second.join(cluster.join_token("manager"), cluster.manager)
    assert "This node joined a swarm as a" in result.stdout, result
    cluster.nodes[second.node_name] = second
    node = cluster.wait_node_state("second", "ready")
    assert node["Spec"]["Role"] == "manager", node["Spec"]
    managers = parse_roles(cluster, "manager")
    assert managers == ["node-1", "second"], managers

    cluster.manager.docker("node", "demote", "second")
    assert cluster.node_by_name("second")["Spec"]["Role"] == "worker"
    assert parse_roles(cluster, "manager") == ["node-1"]


def parse_roles(cluster: Cluster, role: str) -> list[str]:
    out = cluster.manager.docker("node", "ls", "--filter", f"role={role}").stdout
    return sorted(r["HOSTNAME"] for r in parse_table(out))


def test_node_rm_of_a_ready_node_needs_force(cluster: Cluster, node_factory: NodeFactory) -> None:
    node2 = cluster.node_by_name("node-2")
    result = cluster.manager.docker("node", "rm", "node-2", check=False)
    assert result.returncode == 1, result
    assert f"node {node2['ID']} is not down and can't be removed" in result.stderr, result
    assert cluster.node_state("node-2") == "ready"

    doomed = node_factory("doomed")
    cluster.join(doomed)
    cluster.manager.docker("node", "rm", "--force", "doomed")
    wait_until(
        lambda: hostnames_in_node_ls(cluster) == ["node-1", "node-2", "node-3"],
        what="doomed gone from node ls",
    )
    # A removed node does not come back by itself.
    holds_for(
        lambda: hostnames_in_node_ls(cluster) == ["node-1", "node-2", "node-3"],
        seconds=3,
        what="node ls without doomed",
    )
