"""Leader kill to first acknowledged write: three managers on one etcd (issue 13).

    .venv/bin/python bench/ha.py [--rounds 5]

First, API writes/s: 8 clients each updating a service of their own (GET its
version, POST the update, over the unix socket) for `--writes-seconds`, on one
manager with SQLite, then on the three managers on etcd through the leader and
through a follower (forwarded). Then the fail-over rounds.

Starts one etcd member (real mutual TLS, loopback) and three `shoal daemon`s with
`--datastore-endpoint` on it (the machinery of tests/integration: EtcdThread,
ClusterNode), `swarm init` on the first and joins with the manager token, and a
service with no replica. Then, each round: the leader (as `docker node ls` shows it)
is killed with SIGKILL, and `docker service update --label-add` is sent through a
surviving manager again and again until one is acknowledged; the time from the kill to
that acknowledgement is the round's figure (each round adds a label of its own). The
killed manager is started again and the next round waits until there is one Leader
and two Reachable. At the end every round's label must be there, read through every
manager (no acknowledged write lost), else it exits with an error. Prints the median and max against the aim
(half of Swarm's ~10 s: ElectionTick 10 of one second) on stdout; progress on stderr.
With `--swarm`, the real Swarm's figure measured the same way on this machine follows
(bench/ha_swarm.py: three dockerd in network namespaces), with the ratio.
Everything it started is stopped and removed, by its own handle, whatever happens.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: the repository's shoal and tests
    sys.path.insert(0, str(REPO_ROOT))

from bench.ha_swarm import swarm_rounds  # noqa: E402
from shoal import httpunix  # noqa: E402
from shoal.manager.etcd.certs import member_tls, write_tls  # noqa: E402
from tests.integration.cluster_harness import Cluster, ClusterNode  # noqa: E402
from tests.integration.etcd_harness import EtcdThread  # noqa: E402
from tests.integration.harness import (  # noqa: E402
    CommandFailed,
    cleanup_daemons,
    parse_table,
    wait_until,
)

AIM_S = 5.0  # half of Swarm's Raft election (ElectionTick 10 x 1 s)
SWARM_ANCHOR_S = 10.0
RETRY_S = 0.05
CLIENTS = 8


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def statuses(node: ClusterNode) -> dict[str, str]:
    rows = parse_table(node.docker("node", "ls").stdout)
    return {r["HOSTNAME"]: r["MANAGER STATUS"] for r in rows}


def own_port(node: ClusterNode) -> int:
    swarm = node.info()["Swarm"]
    (addr,) = [m["Addr"] for m in swarm["RemoteManagers"] if m["NodeID"] == swarm["NodeID"]]
    return int(addr.rpartition(":")[2])


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
    """The same on one manager with SQLite (the default)."""
    root = Path(tempfile.mkdtemp(prefix="shoal-", dir="/tmp"))
    node = ClusterNode(root, base / "sqlite.log", "sqlite-1")
    try:
        node.start()
        Cluster.init(node)
        return writes_per_s(node, seconds)
    finally:
        cleanup_daemons([node])


def run(rounds: int, base: Path, seconds: float) -> tuple[list[float], dict[str, float]]:
    nodes: list[ClusterNode] = []
    with EtcdThread(base / "etcd") as etcd:
        try:
            (member,) = etcd.members
            tls = write_tls(member_tls(etcd.root, "bench", etcd.cluster_id, []), base / "tls")
            args = [
                "--datastore-endpoint", member.address.client_url,
                "--datastore-cafile", str(tls.ca),
                "--datastore-certfile", str(tls.cert),
                "--datastore-keyfile", str(tls.key),
            ]  # fmt: skip
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
            by_name = {n.node_name: n for n in nodes}
            rates: dict[str, float] = {}
            if seconds > 0:
                status = statuses(nodes[0])
                leader = by_name[next(h for h, v in status.items() if v == "Leader")]
                follower = next(n for n in nodes if n is not leader)
                rates["leader"] = writes_per_s(leader, seconds)
                log(f"writes through the leader: {rates['leader']:.0f}/s")
                rates["follower"] = writes_per_s(follower, seconds)
                log(f"writes through a follower: {rates['follower']:.0f}/s")
            figures = []
            for r in range(1, rounds + 1):
                live = next(n for n in nodes if n.running())
                status = wait_until(
                    lambda live=live: (
                        (s := statuses(live))
                        and sorted(s.values()) == ["Leader", "Reachable", "Reachable"]
                        and s
                    ),
                    what="one leader, two reachable",
                )
                leader = by_name[next(h for h, v in status.items() if v == "Leader")]
                survivor = next(n for n in nodes if n is not leader)
                killed_at = time.monotonic()
                leader.kill9()
                while True:
                    try:
                        survivor.docker(
                            "service", "update", "--detach", "--label-add", f"round{r}=acked",
                            "bench",
                        )  # fmt: skip
                        break
                    except CommandFailed:
                        time.sleep(RETRY_S)
                took = time.monotonic() - killed_at
                figures.append(took)
                log(f"round {r}: killed {leader.node_name}; write acknowledged after {took:.2f} s")
                leader.start()
            # every acknowledged write is there, through every manager
            for node in nodes:
                labels = node.service("bench")["Spec"].get("Labels") or {}
                lost = [r for r in range(1, rounds + 1) if labels.get(f"round{r}") != "acked"]
                if lost:
                    raise SystemExit(f"acknowledged writes lost through {node.node_name}: {lost}")
            return figures, rates
        finally:
            cleanup_daemons(nodes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--writes-seconds", type=float, default=10.0, help="0: no writes/s figures")
    parser.add_argument(
        "--swarm",
        action="store_true",
        help="the real Swarm measured beside (three dockerd in namespaces, bench/ha_swarm.py)",
    )
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="shoal-ha-bench-", dir="/tmp"))
    try:
        sqlite = sqlite_writes(base, args.writes_seconds) if args.writes_seconds > 0 else 0.0
        if sqlite:
            log(f"writes on one manager with SQLite: {sqlite:.0f}/s")
        figures, rates = run(args.rounds, base, args.writes_seconds)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if rates:
        print(
            f"ha: service updates/s, {CLIENTS} clients: one manager on SQLite {sqlite:.0f}/s; "
            f"three managers on etcd, through the leader {rates['leader']:.0f}/s "
            f"(ratio {rates['leader'] / sqlite:.2f}), through a follower "
            f"{rates['follower']:.0f}/s (ratio {rates['follower'] / sqlite:.2f})"
        )
    median, worst = statistics.median(figures), max(figures)
    print(
        f"ha: leader kill -9 to first acknowledged write over {len(figures)} rounds: "
        f"median {median:.2f} s, max {worst:.2f} s (aim {AIM_S:.0f} s; Swarm's Raft "
        f"~{SWARM_ANCHOR_S:.0f} s: ratio {SWARM_ANCHOR_S / median:.1f}x)"
    )
    if args.swarm:
        swarm = swarm_rounds(args.rounds)
        s_median, s_worst = statistics.median(swarm), max(swarm)
        print(
            f"ha: the real Swarm here (three dockerd in namespaces), leader kill -9 to first "
            f"acknowledged write over {len(swarm)} rounds: median {s_median:.2f} s, max "
            f"{s_worst:.2f} s; shoal median {median:.2f} s, max {worst:.2f} s: ratio "
            f"{s_median / median:.1f}x (median), {s_worst / worst:.1f}x (max)"
        )
    return 0 if worst <= AIM_S else 1


if __name__ == "__main__":
    sys.exit(main())
