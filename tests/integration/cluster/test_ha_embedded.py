"""Managers on the daemon's embedded etcd members (issue 13, docs/ha.md): `shoal
daemon`s started without `--datastore-endpoint`, driven with the real docker CLI, each
manager running its own real etcd member (real mutual TLS; the first test on loopback,
the second in network namespaces, each member on its node's address).

- Three managers: `swarm init`, two joins with the manager token (the first one moves
  the store from SQLite into etcd). `node ls` through each shows one Leader and two
  Reachable; a service created through a follower converges; every manager's member
  is in etcd's member list. A follower killed with SIGKILL (its member dies with it)
  and restarted rejoins on its data: Reachable again, a write through it converges.
  The leader killed the same way: another leads; restarted, it follows. `swarm leave
  --force` of a manager removes its member.
- One manager on SQLite with services and a secret promotes a worker (each in a
  network namespace of its own): the state moves
  to etcd with nothing lost (every service at its version, the secret), the services
  still converged and their tasks not restarted. `node demote` of that follower
  removes its member; `node promote` adds it back.
- (Three managers in network namespaces of their own, each member on its node's
  address: the fail-over acceptance, test_ha_failover.py, runs them.)
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator

import pytest

from ..cluster_harness import Cluster, ClusterNode, NetnsLab, NodeFactory
from ..ha_harness import member_pids
from ..harness import parse_table, stop_together, wait_until

pytestmark = pytest.mark.integration

SLEEP = ("sleep", "1000")
# Elections, sessions back after a manager side restarted, membership changes (etcd
# waits 5 s between two).
TIMEOUT_S = 60.0


def manager_status(node: ClusterNode) -> dict[str, str]:
    rows = parse_table(node.docker("node", "ls").stdout)
    return {r["HOSTNAME"]: r["MANAGER STATUS"] for r in rows}


def one_leader(node: ClusterNode, names: list[str]) -> dict[str, str] | None:
    status = manager_status(node)
    shown = sorted(status.get(n, "") for n in names)
    return status if shown == ["Leader"] + ["Reachable"] * (len(names) - 1) else None


def member_file(node: ClusterNode) -> dict[str, object] | None:
    path = node.data_dir / "swarm" / "etcd.json"
    return json.loads(path.read_text()) if path.exists() else None


def etcd_members(node: ClusterNode) -> set[str]:
    """The names in `etcdctl member list` through `node`'s own member (its TLS)."""
    file = member_file(node)
    assert file is not None, f"{node.node_name} has no etcd member"
    tls = node.data_dir / "swarm" / "etcd" / "tls"
    argv = [
        "etcdctl",
        f"--endpoints={','.join(file['endpoints'])}",  # type: ignore[arg-type]
        f"--cacert={tls / 'ca.pem'}",
        f"--cert={tls / 'cert.pem'}",
        f"--key={tls / 'key.pem'}",
        "member",
        "list",
        "-w",
        "json",
    ]
    # a node in a network namespace: its members are reached from inside it
    prefix = ["ip", "netns", "exec", node.netns] if node.netns else []
    out = subprocess.run(
        [*prefix, "env", "ETCDCTL_API=3", *argv],
        capture_output=True,
        text=True,
        timeout=20,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        check=True,
    ).stdout
    return {m.get("name", "") for m in json.loads(out)["members"]}


def node_ids(node: ClusterNode) -> dict[str, str]:
    """{hostname: node ID} through `node`."""
    return {n["Description"]["Hostname"]: n["ID"] for n in node.api.nodes()}


def promote(manager: ClusterNode, name: str) -> None:
    """`node promote`, again while it races the node's own updates (the CLI reads the
    node's version, then updates it: "update out of sequence", as with Docker)."""

    def promoted() -> bool:
        result = manager.docker("node", "promote", name, check=False)
        assert result.returncode == 0 or "out of sequence" in result.stderr, result
        return result.returncode == 0

    wait_until(promoted, what=f"{name} promoted")


@pytest.fixture
def nodes(node_factory: NodeFactory) -> Iterator[list[ClusterNode]]:
    made: list[ClusterNode] = []

    def stop_all() -> None:
        stop_together(list(reversed(made)))

    try:
        yield made
    finally:
        stop_all()


def test_three_embedded_managers(node_factory: NodeFactory, nodes: list[ClusterNode]) -> None:
    managers = [node_factory(f"emb-{i}") for i in (1, 2, 3)]
    nodes.extend(managers)
    cluster = Cluster.init(managers[0])
    assert member_file(managers[0]) is None  # one manager: SQLite
    for m in managers[1:]:
        cluster.join(m, role="manager")
    names = [m.node_name for m in managers]
    for m in managers:
        status = wait_until(
            lambda m=m: one_leader(m, names),
            timeout=TIMEOUT_S,
            what=f"one leader via {m.node_name}",
        )
        assert status["emb-1"] == "Leader", status
        assert m.info()["Swarm"]["Managers"] == 3
    # the first manager moved its store: SQLite kept aside, never read again
    swarm = managers[0].data_dir / "swarm"
    assert (swarm / "store.db.migrated").exists() and not (swarm / "store.db").exists()
    ids = node_ids(managers[0])
    assert etcd_members(managers[2]) == {ids[n] for n in names}

    follower = managers[1]
    follower.docker("service", "create", "--detach", "--name", "web", "--replicas", "3", "busybox", *SLEEP)  # fmt: skip
    before = cluster.wait_converged("web", 3, timeout=TIMEOUT_S)
    for m in managers:
        wait_until(lambda m=m: "web" in m.service_names(), what=f"web via {m.node_name}")

    # a follower killed with SIGKILL (its member with it) and restarted: its member
    # starts again on its data, and it follows again
    ports = member_file(follower)
    assert len(member_pids(follower.data_dir)) == 1
    follower.kill9()
    # the member dies with its daemon (PR_SET_PDEATHSIG), as in a machine crash
    wait_until(lambda: not member_pids(follower.data_dir), what="emb-2's member gone with it")
    follower.start()
    assert member_file(follower) == ports or (
        {k: v for k, v in (member_file(follower) or {}).items() if k != "endpoints"}
        == {k: v for k, v in (ports or {}).items() if k != "endpoints"}
    )
    wait_until(lambda: one_leader(follower, names), timeout=TIMEOUT_S, what="emb-2 back")
    assert etcd_members(follower) == {ids[n] for n in names}
    follower.docker("service", "update", "--detach", "--replicas", "4", "web")
    after = cluster.wait_converged("web", 4, timeout=TIMEOUT_S)
    # the tasks that ran went on (the follower's own tasks too: adopted after restart)
    kept = {
        h: {t: p for t, p in tasks.items() if t in after.get(h, {})} for h, tasks in before.items()
    }
    assert kept == before, (before, after)

    # the leader killed with SIGKILL: another leads; restarted on its member's data,
    # it follows, and the cluster still has its three members
    managers[0].kill9()
    wait_until(lambda: not member_pids(managers[0].data_dir), what="emb-1's member gone with it")
    cluster.manager = follower
    wait_until(
        lambda: (
            manager_status(follower).get("emb-1") != "Leader"
            and "Leader" in manager_status(follower).values()
        ),
        timeout=TIMEOUT_S,
        what="a new leader",
    )
    managers[0].start()
    wait_until(lambda: one_leader(managers[0], names), timeout=TIMEOUT_S, what="emb-1 back")
    assert etcd_members(managers[0]) == {ids[n] for n in names}
    managers[0].docker("service", "update", "--detach", "--replicas", "3", "web")
    cluster.wait_converged("web", 3, timeout=TIMEOUT_S)

    # `swarm leave --force` of a manager removes its own member first
    managers[2].docker("swarm", "leave", "--force")
    assert member_file(managers[2]) is None
    assert not (managers[2].data_dir / "swarm" / "etcd").exists()
    assert etcd_members(managers[0]) == {ids["emb-1"], ids["emb-2"]}
    managers[0].docker("service", "update", "--detach", "--replicas", "2", "web")
    cluster.forget(managers[2])
    cluster.wait_converged("web", 2, check=lambda c: "emb-3" not in c, timeout=TIMEOUT_S)


def test_migration_on_promote_then_demote_and_promote(
    lab: NetnsLab, node_factory: NodeFactory, nodes: list[ClusterNode]
) -> None:
    (ns1, addr1), (ns2, addr2) = lab.add_host(), lab.add_host()
    manager = node_factory("solo-1", netns=ns1, addr=addr1)
    worker = node_factory("solo-w", netns=ns2, addr=addr2)
    nodes.extend([manager, worker])
    cluster = Cluster.init(manager)
    cluster.join(worker)
    manager.docker("secret", "create", "token", "-", input="s3cret\n")
    for name in ("a", "b"):
        manager.docker("service", "create", "--detach", "--name", name, "--replicas", "2", "--secret", "token", "busybox", *SLEEP)  # fmt: skip
    manager.docker("service", "update", "--detach", "--label-add", "x=1", "a")
    manager.docker("service", "create", "--detach", "--name", "w", "--replicas", "0", "busybox", *SLEEP)  # fmt: skip
    before_a = cluster.wait_converged("a", 2)
    before_b = cluster.wait_converged("b", 2)
    services = {s["Spec"]["Name"]: s for s in manager.api.services() if s["Spec"]["Name"] != "w"}
    secrets = {s["Spec"]["Name"]: s for s in manager.api.secrets()}
    assert member_file(manager) is None

    # a writer through the manager while its store moves: every write acknowledged
    # (held while the store moves, not refused)
    done = threading.Event()
    acked: list[int] = []
    failures: list[BaseException] = []

    def writer() -> None:
        i = 0
        while not done.is_set() or i < 3:
            i += 1
            try:
                manager.docker("service", "update", "--detach", "--label-add", f"n={i}", "w")
            except BaseException as e:  # noqa: BLE001 - reported below
                failures.append(e)
                return
            acked.append(i)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        promote(manager, "solo-w")
        names = ["solo-1", "solo-w"]
        wait_until(lambda: one_leader(worker, names), timeout=TIMEOUT_S, what="solo-w a manager")
    finally:
        done.set()
        thread.join()
    assert not failures, failures
    assert manager.service("w")["Spec"]["Labels"]["n"] == str(acked[-1])
    assert member_file(manager) is not None and member_file(worker) is not None
    ids = node_ids(manager)
    assert etcd_members(manager) == {ids["solo-1"], ids["solo-w"]}
    # nothing lost: every service at its version, the secret; read through both
    for node in (manager, worker):
        shown = {s["Spec"]["Name"]: s for s in node.api.services()}
        assert {n: s for n, s in shown.items() if n != "w"} == services
        assert {s["Spec"]["Name"]: s for s in node.api.secrets()} == secrets
    # still converged, the same tasks, the same processes
    assert cluster.wait_converged("a", 2, timeout=TIMEOUT_S) == before_a
    assert cluster.wait_converged("b", 2, timeout=TIMEOUT_S) == before_b
    # writes go on (through the new follower too)
    worker.docker("service", "update", "--detach", "--replicas", "3", "b")
    cluster.wait_converged("b", 3, timeout=TIMEOUT_S)

    manager.docker("node", "demote", "solo-w")
    wait_until(
        lambda: etcd_members(manager) == {ids["solo-1"]},
        timeout=TIMEOUT_S,
        what="solo-w's member removed",
    )
    wait_until(
        lambda: (
            worker.docker("node", "ls", check=False).returncode != 0
            and member_file(worker) is None
            and not (worker.data_dir / "swarm" / "etcd").exists()
        ),
        timeout=TIMEOUT_S,
        what="solo-w a worker again, its member gone",
    )
    cluster.wait_node_state("solo-w", "ready")
    promote(manager, "solo-w")
    wait_until(lambda: one_leader(worker, names), timeout=TIMEOUT_S, what="solo-w back")
    assert etcd_members(worker) == {ids["solo-1"], ids["solo-w"]}
    assert cluster.wait_converged("a", 2, timeout=TIMEOUT_S) == before_a
