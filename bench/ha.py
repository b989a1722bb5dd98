"""Leader kill to first acknowledged write: three managers on their embedded etcd members (issue 13).

    .venv/bin/python bench/ha.py [--rounds 10] [--writes-seconds 10] [--swarm] [--external-etcd]

Three `shoal daemon`s started WITHOUT `--datastore-endpoint` (the product's default):
each manager runs its own etcd member (shoal/daemon/embedded.py; real mutual TLS,
loopback). `swarm init` on the first, joins with the manager token on the others (the
first one's store moves from SQLite into etcd), and a service with no replica (the
machinery of tests/integration: ClusterNode, Cluster).

First, API writes/s: 8 clients each updating a service of their own (GET its
version, POST the update, over the unix socket) for `--writes-seconds`, on one
manager with SQLite, then on the three managers through the leader and through a
follower (forwarded). Then the fail-over rounds. Each round waits until every manager
shows one Leader and two Reachable and every member answers (`etcdctl endpoint
status`, which also says which member etcd's Raft leader is); then the leader (as
`docker node ls` shows it) is killed with SIGKILL, its member dying with it (a
machine crash: etcd loses a member too, and its own leader when that was it), and
`docker service update --label-add` is sent through a surviving manager again and
again until one is acknowledged; the time from the kill to that acknowledgement is the
round's figure (each round adds a label of its own). The killed member must be gone;
the daemon is started again (its member on its data) before the next round. At the end
every round's label must be there, read through every manager (no acknowledged write
lost), else it exits with an error. Prints each round, the median and max against the
aim (half of Swarm's ~10 s: ElectionTick 10 of one second), and in how many rounds
etcd's leader died with the killed manager, on stdout; progress on stderr; exit 1 if
a round took longer than the aim. With `--swarm`, the real Swarm's figure measured the
same way on this machine follows (bench/ha_swarm.py: three dockerd in network
namespaces), with the ratio.

`--external-etcd`: the managers run with `--datastore-endpoint` on one etcd member
started here that is never killed (the earlier set-up: the figure then leaves out
etcd's own fail-over).

Everything it started is stopped and removed, by its own handle, whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: the repository's shoal and tests
    sys.path.insert(0, str(REPO_ROOT))

from bench.ha_swarm import swarm_rounds  # noqa: E402
from shoal import httpunix  # noqa: E402
from shoal.daemon.embedded import MemberFile  # noqa: E402
from shoal.manager.etcd.certs import member_tls, write_tls  # noqa: E402
from tests.integration.cluster_harness import Cluster, ClusterNode  # noqa: E402
from tests.integration.etcd_harness import EtcdThread  # noqa: E402
from tests.integration.ha_harness import (  # noqa: E402
    endpoint_statuses,
    leader_url,
    member_pids,
)
from tests.integration.harness import (  # noqa: E402
    cleanup_daemons,
    parse_table,
    wait_until,
)

AIM_S = 5.0  # half of Swarm's Raft election (ElectionTick 10 x 1 s)
SWARM_ANCHOR_S = 10.0
RETRY_S = 0.05
CLIENTS = 8
ROUND_TIMEOUT_S = 60.0  # no write acknowledged after a kill: give up
# A restarted manager follows once its member rejoined and its replica is loaded.
REJOIN_TIMEOUT_S = 90.0
MEMBER_GONE_S = 10.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def statuses(node: ClusterNode) -> dict[str, str]:
    rows = parse_table(node.docker("node", "ls").stdout)
    return {r["HOSTNAME"]: r["MANAGER STATUS"] for r in rows}


def own_port(node: ClusterNode) -> int:
    swarm = node.info()["Swarm"]
    (addr,) = [m["Addr"] for m in swarm["RemoteManagers"] if m["NodeID"] == swarm["NodeID"]]
    return int(addr.rpartition(":")[2])


# --------------------------------------------------------------------------- members


def member_file(node: ClusterNode) -> MemberFile | None:
    return MemberFile.load(node.data_dir / "swarm")


def no_member(node: ClusterNode) -> bool:
    return not member_pids(node.data_dir)


def etcd_leader(nodes: list[ClusterNode]) -> ClusterNode | None:
    """The manager whose embedded member is etcd's Raft leader, asked with `etcdctl
    endpoint status` of every manager's member; None unless every one is running and
    answers and one of them leads."""
    urls: dict[str, ClusterNode] = {}
    for node in nodes:
        file = member_file(node) if node.running() else None
        if file is None:
            return None
        urls[file.address.client_url] = node
    tls = nodes[0].data_dir / "swarm" / "etcd" / "tls"
    statuses = endpoint_statuses(list(urls), tls / "ca.pem", tls / "cert.pem", tls / "key.pem")
    url = leader_url(statuses)
    return urls.get(url) if url is not None else None


def kill_members_left(nodes: list[ClusterNode]) -> None:
    """An embedded member that outlived its daemon (it should not): killed by pid."""
    for node in nodes:
        for pid in member_pids(node.data_dir):
            log(f"{node.node_name}'s etcd member (pid {pid}) outlived its daemon: killed")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def manager_args(external: bool, base: Path) -> Iterator[list[str]]:
    """The managers' flags: none (each runs its own embedded member), or with
    `external` `--datastore-endpoint` on one etcd member started here (never killed)."""
    if not external:
        yield []
        return
    with EtcdThread(base / "etcd") as etcd:
        (member,) = etcd.members
        tls = write_tls(member_tls(etcd.root, "bench", etcd.cluster_id, []), base / "tls")
        yield [
            "--datastore-endpoint", member.address.client_url,
            "--datastore-cafile", str(tls.ca),
            "--datastore-certfile", str(tls.cert),
            "--datastore-keyfile", str(tls.key),
        ]  # fmt: skip


# --------------------------------------------------------------------------- writes/s


def writes_per_s(node: ClusterNode, seconds: float, clients: int = CLIENTS) -> float:
    """Acknowledged `service update`s per second through `node`'s API: `clients`
    threads, each updating a service of its own (read its version, write a label)."""
    sock = str(node.socket)
    for c in range(clients):
        node.docker(
            "service", "create", "--detach", "--replicas", "0", "--name", f"w{c}",
            "busybox", "sleep", "1000",
        )  # fmt: skip
    done = [0] * clients
    until = time.monotonic() + seconds

    def client(c: int) -> None:
        while time.monotonic() < until:
            status, data = httpunix.request(sock, "GET", f"/v1.41/services/w{c}")
            svc = json.loads(data)
            spec = svc["Spec"]
            spec["Labels"] = {**(spec.get("Labels") or {}), "n": str(done[c])}
            url = f"/v1.41/services/{svc['ID']}/update?version={svc['Version']['Index']}"
            status, _ = httpunix.request(sock, "POST", url, spec)
            if status == 200:
                done[c] += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in range(clients):
        node.docker("service", "rm", f"w{c}")
    return sum(done) / seconds


def sqlite_writes(base: Path, seconds: float) -> float:
    """The same on one manager with SQLite (one manager's store)."""
    root = Path(tempfile.mkdtemp(prefix="shoal-", dir="/tmp"))
    node = ClusterNode(root, base / "sqlite.log", "sqlite-1")
    try:
        node.start()
        Cluster.init(node)
        return writes_per_s(node, seconds)
    finally:
        cleanup_daemons([node])


# --------------------------------------------------------------------------- rounds


def steady(nodes: list[ClusterNode], embedded: bool) -> tuple[ClusterNode, ClusterNode | None]:
    """Wait until every manager shows one Leader and two Reachable (and, embedded,
    every member answers); the leader, and the manager whose member leads etcd."""
    by_name = {n.node_name: n for n in nodes}

    def ready() -> tuple[ClusterNode, ClusterNode | None] | None:
        shown = [statuses(n) for n in nodes]
        if any(sorted(s.values()) != ["Leader", "Reachable", "Reachable"] for s in shown):
            return None
        leaders = {h for s in shown for h, v in s.items() if v == "Leader"}
        if len(leaders) != 1:
            return None
        lead_etcd = etcd_leader(nodes) if embedded else None
        if embedded and lead_etcd is None:
            return None
        return by_name[leaders.pop()], lead_etcd

    found = wait_until(ready, timeout=REJOIN_TIMEOUT_S, what="one leader, two reachable")
    assert found is not None
    return found


def run(
    rounds: int, base: Path, seconds: float, external: bool
) -> tuple[list[float], list[bool], dict[str, float]]:
    """The rounds' figures, whether etcd's leader died with the killed manager in each
    (embedded only), and the writes/s through the leader and a follower."""
    nodes: list[ClusterNode] = []
    with manager_args(external, base) as args:
        try:
            for i in (1, 2, 3):
                root = Path(tempfile.mkdtemp(prefix="shoal-", dir="/tmp"))
                node = ClusterNode(root, base / f"mgr-{i}.log", f"mgr-{i}", extra_args=args)
                nodes.append(node)
                node.start()
            cluster = Cluster.init(nodes[0])
            for node in nodes[1:]:
                cluster.join(node, role="manager")
                node.cluster_port = own_port(node)
            nodes[0].docker(
                "service", "create", "--detach", "--replicas", "0", "--name", "bench",
                "busybox", "sleep", "1000",
            )  # fmt: skip
            embedded = not external
            rates: dict[str, float] = {}
            if seconds > 0:
                leader, _ = steady(nodes, embedded)
                follower = next(n for n in nodes if n is not leader)
                rates["leader"] = writes_per_s(leader, seconds)
                log(f"writes through the leader: {rates['leader']:.0f}/s")
                rates["follower"] = writes_per_s(follower, seconds)
                log(f"writes through a follower: {rates['follower']:.0f}/s")
            figures: list[float] = []
            with_etcd: list[bool] = []
            for r in range(1, rounds + 1):
                leader, lead_etcd = steady(nodes, embedded)
                survivor = next(n for n in nodes if n is not leader)
                killed_at = time.monotonic()
                leader.kill9()
                while True:
                    result = survivor.docker(
                        "service", "update", "--detach", "--label-add", f"round{r}=acked",
                        "bench", check=False, timeout=ROUND_TIMEOUT_S,
                    )  # fmt: skip
                    if result.returncode == 0:
                        break
                    if time.monotonic() - killed_at > ROUND_TIMEOUT_S:
                        raise SystemExit(f"round {r}: no write acknowledged: {result.stderr}")
                    time.sleep(RETRY_S)
                took = time.monotonic() - killed_at
                figures.append(took)
                with_etcd.append(lead_etcd is leader)
                also = " (and etcd's leader with it)" if lead_etcd is leader else ""
                log(
                    f"round {r}: killed {leader.node_name}{also}; "
                    f"write acknowledged after {took:.2f} s"
                )
                if embedded:  # its member died with it, as in a machine crash
                    wait_until(
                        functools.partial(no_member, leader),
                        timeout=MEMBER_GONE_S,
                        what=f"{leader.node_name}'s member gone with it",
                    )
                leader.start()
            steady(nodes, embedded)
            # every acknowledged write is there, through every manager
            for node in nodes:
                labels = node.service("bench")["Spec"].get("Labels") or {}
                lost = [r for r in range(1, rounds + 1) if labels.get(f"round{r}") != "acked"]
                if lost:
                    raise SystemExit(f"acknowledged writes lost through {node.node_name}: {lost}")
            return figures, with_etcd, rates
        finally:
            try:
                cleanup_daemons(nodes)
            finally:
                kill_members_left(nodes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--writes-seconds", type=float, default=10.0, help="0: no writes/s figures")
    parser.add_argument(
        "--swarm",
        action="store_true",
        help="the real Swarm measured beside (three dockerd in namespaces, bench/ha_swarm.py)",
    )
    parser.add_argument(
        "--external-etcd",
        action="store_true",
        help="the managers on one external etcd member (--datastore-endpoint), never killed",
    )
    args = parser.parse_args()
    if shutil.which("etcd") is None or shutil.which("etcdctl") is None:
        raise SystemExit("etcd and etcdctl are needed (scripts/setup.sh)")
    where = (
        "on one external etcd member (never killed)"
        if args.external_etcd
        else "on their embedded etcd members"
    )
    base = Path(tempfile.mkdtemp(prefix="shoal-ha-bench-", dir="/tmp"))
    try:
        sqlite = sqlite_writes(base, args.writes_seconds) if args.writes_seconds > 0 else 0.0
        if sqlite:
            log(f"writes on one manager with SQLite: {sqlite:.0f}/s")
        figures, with_etcd, rates = run(args.rounds, base, args.writes_seconds, args.external_etcd)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if rates:
        print(
            f"ha: service updates/s, {CLIENTS} clients: one manager on SQLite {sqlite:.0f}/s; "
            f"three managers {where}, through the leader {rates['leader']:.0f}/s "
            f"(ratio {rates['leader'] / sqlite:.2f}), through a follower "
            f"{rates['follower']:.0f}/s (ratio {rates['follower'] / sqlite:.2f})"
        )
    median, worst = statistics.median(figures), max(figures)
    crash = "" if args.external_etcd else " (its member with it)"
    etcd = (
        ""
        if args.external_etcd
        else (f"; etcd's leader died with it in {sum(with_etcd)} of {len(with_etcd)} rounds")
    )
    print(f"ha: rounds (s): {', '.join(f'{f:.2f}' for f in figures)}")
    print(
        f"ha: three managers {where}, leader kill -9{crash} to first acknowledged write "
        f"over {len(figures)} rounds: median {median:.2f} s, max {worst:.2f} s (aim "
        f"{AIM_S:.0f} s; Swarm's Raft ~{SWARM_ANCHOR_S:.0f} s: ratio "
        f"{SWARM_ANCHOR_S / median:.1f}x){etcd}"
    )
    if args.swarm:
        swarm = swarm_rounds(args.rounds)
        s_median, s_worst = statistics.median(swarm), max(swarm)
        print(f"ha: Swarm rounds (s): {', '.join(f'{f:.2f}' for f in swarm)}")
        print(
            f"ha: the real Swarm here (three dockerd in namespaces), leader kill -9 to first "
            f"acknowledged write over {len(swarm)} rounds: median {s_median:.2f} s, max "
            f"{s_worst:.2f} s; shoal median {median:.2f} s, max {worst:.2f} s: ratio "
            f"{s_median / median:.1f}x (median), {s_worst / worst:.1f}x (max)"
        )
    return 0 if worst <= AIM_S else 1


if __name__ == "__main__":
    sys.exit(main())
