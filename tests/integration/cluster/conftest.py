"""Fixtures for the multi-node tests (the machinery is in ../cluster_harness.py).

- `node_factory` (per module) makes `ClusterNode`s; at teardown it stops them (workers
  first), kills any task process left behind by the pids each recorded in its own data
  dir, and removes their directories. Nodes a test made itself go when that test ends
  (after `cluster` gave the trio back). A task process left behind by a node stopped
  gracefully is a leak and fails the test (`cleanup_daemons`).
- `trio` (per module): three daemons, `node-1` the manager (`swarm init` on a free
  cluster port, dispatcher heartbeat 1 s), `node-2` and `node-3` joined with the worker
  token. Engine labels: `disk=ssd` on node-1 and node-2, `disk=hdd` on node-3.
- `cluster` (per test) is the module's trio, given back after the test as it was found:
  no service and no task process anywhere, every node of the trio running and back to
  its original spec (role, availability active, no labels), any other node removed.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from ..cluster_harness import Cluster, ClusterNode, NetnsLab, NodeFactory, make_netns_trio
from ..harness import cleanup_daemons, docker_cli, free_tcp_port, wait_until

ENGINE_LABELS = {
    "node-1": ["disk=ssd"],
    "node-2": ["disk=ssd"],
    "node-3": ["disk=hdd"],
}

# The nodes of the module now alive, whose logs a failure report shows.
_NODES: list[ClusterNode] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if report.failed:
        for node in _NODES:
            title = f"shoal daemon {node.node_name}: {node.log_path}"
            report.sections.append((title, node.log_tail(60)))
    return report


@pytest.fixture(scope="module")
def node_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeFactory]:
    """make(name, labels=(), extra_args=(), netns=None, addr="127.0.0.1", start=True,
    tcp=False); `tcp`: the API on a loopback TCP port too (`node.tcp_host`)."""
    docker_cli()
    made: list[ClusterNode] = []
    logs = tmp_path_factory.mktemp("cluster-logs")

    def make(
        name: str,
        labels: Sequence[str] = (),
        extra_args: Sequence[str] = (),
        netns: str | None = None,
        addr: str = "127.0.0.1",
        start: bool = True,
        tcp: bool = False,
    ) -> ClusterNode:
        root = Path(tempfile.mkdtemp(prefix="shoal-", dir="/tmp"))
        node = ClusterNode(
            root,
            logs / f"{name}-{root.name}.log",
            name,
            labels=labels,
            extra_args=extra_args,
            netns=netns,
            addr=addr,
            tcp_port=free_tcp_port() if tcp else None,
        )
        made.append(node)
        _NODES.append(node)
        if start:
            node.start()
        return node

    yield make

    left = [n for n in made if n in _NODES]
    for node in left:
        _NODES.remove(node)
    cleanup_daemons(left)


@pytest.fixture(autouse=True)
def _test_nodes() -> Iterator[None]:
    """The nodes a test made itself are cleaned up when it ends (module fixtures such
    as `trio` are set up before this one and live until the module ends)."""
    before = list(_NODES)
    yield
    mine = [n for n in _NODES if n not in before]
    for node in mine:
        _NODES.remove(node)
    cleanup_daemons(mine)


def make_trio(node_factory: NodeFactory) -> Cluster:
    manager = node_factory("node-1", labels=ENGINE_LABELS["node-1"])
    workers = [node_factory(name, labels=ENGINE_LABELS[name]) for name in ("node-2", "node-3")]
    cluster = Cluster.init(manager)
    for worker in workers:
        cluster.join(worker)
    return cluster


@pytest.fixture(scope="module")
def trio(node_factory: NodeFactory) -> Cluster:
    return make_trio(node_factory)


def restore(cluster: Cluster, members: dict[str, ClusterNode], roles: dict[str, str]) -> None:
    """Put the cluster back as the module's tests expect to find it."""
    for name, node in list(cluster.nodes.items()):
        if name not in members:
            node.stop()  # graceful: its tasks stop with it
    for node in members.values():
        if not node.running():
            node.start()
    cluster.nodes = dict(members)
    api = cluster.manager.api
    # Nodes a test added: stop their daemons (if the test did not), then remove them.
    for n in cluster.node_objects():
        if n["Description"]["Hostname"] not in members:
            with contextlib.suppress(Exception):
                api.remove_node(n["ID"], force=True)
    cluster.remove_all_services()
    for name in members:
        cluster.wait_node_state(name, "ready")
        n = cluster.node_by_name(name)
        spec = {"Role": roles[name], "Availability": "active", "Labels": {}}
        if {k: n["Spec"].get(k) or {} for k in spec} != spec:
            api.update_node(n["ID"], n["Version"]["Index"], spec)
    wait_until(
        lambda: (
            sorted(n["Description"]["Hostname"] for n in cluster.node_objects()) == sorted(members)
        ),
        what="only the trio left in node ls",
    )


@pytest.fixture
def cluster(trio: Cluster) -> Iterator[Cluster]:
    members = dict(trio.nodes)
    roles = {name: trio.node_by_name(name)["Spec"]["Role"] for name in members}
    yield trio
    restore(trio, members, roles)


@pytest.fixture(scope="module")
def lab() -> Iterator[NetnsLab]:
    """Network namespaces as hosts on a private bridge (cluster_harness.NetnsLab), torn
    down at the module's end by their own names and checked gone."""
    if shutil.which("ip") is None:
        pytest.fail("iproute2 (`ip`) is needed: scripts/setup.sh installs it", pytrace=False)
    lab = NetnsLab()
    try:
        yield lab
    finally:
        errors = lab.teardown()
        assert not errors, errors


@pytest.fixture(scope="module")
def netns_trio(lab: NetnsLab, node_factory: NodeFactory) -> Cluster:
    """Three nodes, each in a namespace of `lab`'s (made first, so torn down after them)."""
    return make_netns_trio(lab, node_factory)
