"""Issue 9's node data path on the three-node namespace lab, through the docker CLI: a
port published in ingress mode answers on every node's address (from a namespace outside
the cluster) and loopback and reaches every replica, follows a scale and a drain; a
service's VIP from another service's task reaches every replica; a host-mode port
answers on its task's node only; and nothing is left in
the nodes' namespaces after the daemons stop. (Zero failed requests during changes:
the `drain` tests.)"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from ..cluster_harness import Cluster, NetnsLab, NodeFactory, make_netns_trio
from ..harness import wait_until
from .test_overlay import SERVER, SLEEP, listing, pid_of

pytestmark = pytest.mark.integration

ROUNDS = 40


@pytest.fixture(scope="module")
def lab() -> Iterator[NetnsLab]:
    lab = NetnsLab()
    try:
        yield lab
    finally:
        errors = lab.teardown()
        assert not errors, errors


@pytest.fixture(scope="module")
def trio(lab: NetnsLab, node_factory: NodeFactory) -> Cluster:
    return make_netns_trio(lab, node_factory)


def hostnames(prefix: list[str], url: str, n: int = ROUNDS) -> set[str]:
    """The bodies of `n` GETs of `url`, each on a new connection, run under `prefix`
    (an `ip netns exec` or `nsenter`); failures left out."""
    loop = f'for i in $(seq {n}); do curl -s -m 2 "{url}"; echo; done'
    done = subprocess.run([*prefix, "sh", "-c", loop], capture_output=True, text=True, timeout=120)
    return {line for line in done.stdout.splitlines() if line}


def running(trio: Cluster, service: str, exclude_node: str | None = None) -> set[str]:
    """The hostnames (task ID, first 12) of the service's running tasks."""
    placement = trio.running_placement(service)
    return {t[:12] for t, node in placement.items() if node != exclude_node}


def mesh_record(node: Any) -> Any:
    """The routing mesh's entry in the node's plumbing record (None: no gateway)."""
    path = node.data_dir / "agent" / "network-record.json"
    try:
        return json.loads(path.read_text()).get("mesh")
    except FileNotFoundError:
        return None


def test_a_node_killed_and_restarted_serves_the_mesh_again(trio: Cluster, lab: NetnsLab) -> None:
    """(Runs first: the next test stops the daemons.) After `kill -9` the next daemon
    finds the gateway in its record: it adopts or rebuilds it, and its published port
    answers again; once nothing is published the gateway is gone."""
    manager = trio.manager
    outside_ns, _ = lab.add_host()
    outside = ["ip", "netns", "exec", outside_ns]
    manager.docker(
        "service", "create", "--detach", "--name", "pub", "--publish", "8090:80",
        "--replicas", "2", "busybox", sys.executable, "-c", SERVER,
    )  # fmt: skip
    trio.wait_converged("pub", 2)
    two = running(trio, "pub")
    node3 = trio.nodes["node-3"]
    url = f"http://{node3.addr}:8090/"
    assert wait_until(lambda: hostnames(outside, url, 20) == two, what=url)
    assert mesh_record(node3) is not None
    node3.kill9()
    node3.start()
    trio.wait_converged("pub", 2)
    two = running(trio, "pub")
    assert wait_until(lambda: hostnames(outside, url, 20) == two, what=f"{url} after kill -9")
    manager.docker("service", "rm", "pub")
    for node in trio.nodes.values():
        wait_until(lambda n=node: mesh_record(n) is None, what=f"{node.node_name}'s gateway gone")


def test_routing_mesh_and_vip_across_three_nodes(trio: Cluster, lab: NetnsLab) -> None:
    manager = trio.manager
    nodes = {name: n for name, n in trio.nodes.items()}
    namespaces = [n.netns for n in nodes.values() if n.netns is not None]
    before = {ns: listing(ns) for ns in namespaces}
    outside_ns, _ = lab.add_host()
    outside = ["ip", "netns", "exec", outside_ns]

    manager.docker("network", "create", "-d", "overlay", "--subnet", "10.203.0.0/24", "meshnet")
    manager.docker(
        "service", "create", "--detach", "--name", "web", "--network", "meshnet",
        "--publish", "8080:80", "--replicas", "3",
        "busybox", sys.executable, "-c", SERVER,
    )  # fmt: skip
    trio.wait_converged("web", 3, check=lambda c: len(c) == 3)
    three = running(trio, "web")

    # From outside the cluster to each node's address, and on each node's loopback:
    # all three replicas answer.
    for node in nodes.values():
        url = f"http://{node.addr}:8080/"
        assert wait_until(lambda u=url: hostnames(outside, u) == three, what=url)
        local = ["ip", "netns", "exec", str(node.netns)]
        assert wait_until(lambda p=local: hostnames(p, "http://127.0.0.1:8080/") == three)

    # Scale to 5: all five answer, through every node.
    manager.docker("service", "scale", "--detach", "web=5")
    trio.wait_converged("web", 5)
    five = running(trio, "web")
    assert len(five) == 5
    for node in nodes.values():
        url = f"http://{node.addr}:8080/"
        assert wait_until(lambda u=url: hostnames(outside, u, 60) == five, what=url)

    # The VIP, from another service's task: every replica.
    manager.docker("service", "create", "--detach", "--name", "client", "--network", "meshnet",
                   "busybox", *SLEEP)  # fmt: skip
    # (its mount namespace too: the task's /etc/resolv.conf names the resolver)
    client = ["nsenter", "-t", str(pid_of(trio.wait_converged("client", 1))), "-n", "-m"]
    assert wait_until(lambda: hostnames(client, "http://web/", 60) == five, what="web's VIP")

    # Drain a node: none of its tasks answer any more, the others do.
    drained = "node-3"
    manager.docker("node", "update", "--availability", "drain", drained)
    trio.wait_converged("web", 5, per_node={drained: 0})
    rest = running(trio, "web")
    assert rest == running(trio, "web", exclude_node=drained)
    for node in nodes.values():
        url = f"http://{node.addr}:8080/"
        assert wait_until(lambda u=url: hostnames(outside, u, 60) == rest, what=url)
    # (the client's task may have been on the drained node: find it again)
    client = ["nsenter", "-t", str(pid_of(trio.wait_converged("client", 1))), "-n", "-m"]
    assert wait_until(lambda: hostnames(client, "http://web/", 60) == rest, what="the VIP")
    manager.docker("node", "update", "--availability", "active", drained)

    # mode=host: the port answers on the task's node only, and leads to that task.
    manager.docker(
        "service", "create", "--detach", "--name", "hostport", "--network", "meshnet",
        "--publish", "mode=host,published=8081,target=80",
        "--constraint", "node.hostname==node-2", "busybox", sys.executable, "-c", SERVER,
    )  # fmt: skip
    trio.wait_converged("hostport", 1, per_node={"node-2": 1})
    (hp,) = running(trio, "hostport")
    url = f"http://{nodes['node-2'].addr}:8081/"
    assert wait_until(lambda: hostnames(outside, url, 3) == {hp}, what=url)
    node2 = ["ip", "netns", "exec", str(nodes["node-2"].netns)]
    assert hostnames(node2, "http://127.0.0.1:8081/", 3) == {hp}
    for name in ("node-1", "node-3"):
        assert hostnames(outside, f"http://{nodes[name].addr}:8081/", 3) == set(), name

    manager.docker("service", "rm", "web", "client", "hostport")
    wait_until(
        lambda: manager.docker("network", "rm", "meshnet", check=False).returncode == 0,
        what="meshnet removed after its services",
    )
    for node in [*trio.workers, manager]:
        node.stop()
    assert {ns: listing(ns) for ns in namespaces} == before
