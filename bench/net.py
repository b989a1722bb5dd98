"""Networking benchmark: the node's DNS resolver, and TCP over the overlay.

    .venv/bin/python bench/net.py [--seconds S] [--outstanding N] [--skip-dns] [--skip-overlay]

DNS: a real Resolver (shoal.agent.network.dns.start_resolver, on uvloop as the daemon
runs it) in a process of its own, serving 127.0.0.11:53 inside a network namespace this
script creates, with a name table of one service (`web`, a VIP, three tasks). A load
generator in a third process, run inside that namespace as a task would be, keeps N
queries outstanding (`web` and `tasks.web` in turn, A) for S seconds, and reports the
answered queries per second, the latency percentiles and the queries lost. Three runs:
the resolver with its answer cache off (every answer parsed and built with dnslib: the
figure comparable with the anchor), on (as the daemon runs it: a repeated query is a
dict hit), and names forwarded to a fake dnslib upstream in a fourth process on
loopback in the node's namespace. Printed with the ratio to the anchors: dnslib +
asyncio under dnsperf with 50 outstanding, 8,577 q/s answering locally and 12,320 q/s
forwarding (deps-evaluation.md §6).

Overlay TCP (`overlay_throughput`): two lab nodes (namespaces on one bridge, as the
cluster tests make them); iperf3 between the two node namespaces directly, then between
two tasks, one per node, on an overlay network made by the real Plumbing (VXLAN between
the nodes); printed with the ratio, aimed at >= 0.9.

Everything is removed afterwards by its own handle: the namespaces, veths and bridge by
their names (random suffix), the overlay's objects by the Plumbing's record, the
processes by their pid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script: the repository's shoal
    sys.path.insert(0, str(REPO_ROOT))

# deps-evaluation.md §6: dnsperf, 8 s, 50 outstanding, dnslib + asyncio, local answers.
ANCHOR_DNS_QPS = 8577
# The same run, names forwarded to a dnslib upstream in another process.
ANCHOR_FORWARD_QPS = 12320
DEFAULT_SECONDS = 8.0
DEFAULT_OUTSTANDING = 50
# The first part of a run is not counted (caches, the first allocations).
WARMUP_S = 0.5
# A query not answered within this long is counted lost and replaced.
LOST_AFTER_S = 1.0
# How long the resolver process may take to say it is serving.
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
QUERY_NAMES = ("web", "tasks.web")
FORWARDED_NAMES = ("foo.example", "bar.example")
# The three runs: answers built each time, answers cached, names forwarded upstream.
DNS_MODES = {
    "built": ("every answer built", QUERY_NAMES, ANCHOR_DNS_QPS),
    "cached": ("answer cache", QUERY_NAMES, ANCHOR_DNS_QPS),
    "forwarded": ("forwarded upstream", FORWARDED_NAMES, ANCHOR_FORWARD_QPS),
}
OVERLAY_RATIO_AIM = 0.9
DEFAULT_IPERF_SECONDS = 5.0
# Direct and overlay measured in turn this many times; the best of each is printed.
DEFAULT_IPERF_ROUNDS = 3


class BenchError(Exception):
    """The benchmark could not produce its figure; the message says why."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- a namespace of our own ------------------------------------------------------------


class Netns:
    def __init__(self, prefix: str = "shoal-bench") -> None:
        self.name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def remove(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)


# --- the resolver's process ------------------------------------------------------------


async def serve_dns(netns: str, mode: str, upstream_port: int) -> None:
    """Run a Resolver serving in `netns` until SIGTERM; print "ready" once it serves."""
    from shoal.agent.network.dns import ANSWER_CACHE_MAX, start_resolver
    from shoal.agent.network.state import NetworkState
    from shoal.types.network import Network, NetworkPeer, NetworkUpdate, ServiceEndpoint

    state = NetworkState()
    state.apply(
        NetworkUpdate(
            full=True,
            networks=[Network(id="bench-net")],
            peers=[
                NetworkPeer(
                    network_id="bench-net",
                    task_id=f"task{i}",
                    node_id="node",
                    node_addr="10.124.7.1",
                    addr=f"10.0.1.{10 + i}",
                    service_id="sid-web",
                    service_name="web",
                    task_name=f"web.{i + 1}.task{i}",
                    running=True,
                )
                for i in range(3)
            ],
            endpoints=[
                ServiceEndpoint(
                    network_id="bench-net", service_id="sid-web", service_name="web", vip="10.0.1.2"
                )
            ],
        )
    )
    resolver = start_resolver(
        state,
        upstreams=["127.0.0.1"] if mode == "forwarded" else [],
        upstream_port=upstream_port,
        answer_cache=ANSWER_CACHE_MAX if mode == "cached" else 0,
    )
    await resolver.task_attached("bench-client", netns, ["bench-net"])
    if resolver.serving() != ["bench-client"]:
        raise BenchError(f"the resolver could not serve in {netns}")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    print(json.dumps(resolver.statistics()), flush=True)
    await resolver.close()


# --- the load generator's process ------------------------------------------------------


class _Load(asyncio.DatagramProtocol):
    """Keeps `outstanding` queries in flight; reads only the ID and RCODE of answers."""

    def __init__(self, queries: list[bytes], outstanding: int) -> None:
        self.queries = queries
        self.outstanding = outstanding
        self.sent: dict[int, float] = {}
        self.next_id = 0
        self.latencies: list[float] = []
        self.errors = 0
        self.lost = 0
        self.counting = False
        self.stopped = False
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        for _ in range(self.outstanding):
            self.send()

    def send(self) -> None:
        assert self.transport is not None
        qid = self.next_id
        self.next_id = (qid + 1) % 65536
        q = self.queries[qid % len(self.queries)]
        self.sent[qid] = time.perf_counter()
        self.transport.sendto(qid.to_bytes(2, "big") + q[2:])

    def datagram_received(self, data: bytes, addr: Any) -> None:
        t0 = self.sent.pop(int.from_bytes(data[:2], "big"), None)
        if t0 is None:
            return
        if self.counting:
            self.latencies.append(time.perf_counter() - t0)
            if data[3] & 0x0F:
                self.errors += 1
        if not self.stopped:
            self.send()

    def sweep(self) -> None:
        now = time.perf_counter()
        for qid in [q for q, t in self.sent.items() if now - t > LOST_AFTER_S]:
            del self.sent[qid]
            if self.counting:
                self.lost += 1
            if not self.stopped:
                self.send()


async def serve_upstream() -> None:
    """A fake upstream resolver on loopback (the node's namespace): every A query gets
    10.9.9.9. Prints its port, serves until SIGTERM."""
    from dnslib import QTYPE, RR, A, DNSRecord

    class Upstream(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

        def datagram_received(self, data: bytes, addr: Any) -> None:
            q = DNSRecord.parse(data)
            reply = q.reply()
            reply.add_answer(RR(q.q.qname, QTYPE.A, rdata=A("10.9.9.9"), ttl=60))
            self.transport.sendto(reply.pack(), addr)

    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Upstream, local_addr=("127.0.0.1", 0))
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print(transport.get_extra_info("sockname")[1], flush=True)
    await stop.wait()
    transport.close()


async def load_dns(seconds: float, outstanding: int, names: list[str]) -> dict[str, Any]:
    from dnslib import DNSRecord

    queries = [bytes(DNSRecord.question(n, "A").pack()) for n in names]
    loop = asyncio.get_running_loop()
    transport, load = await loop.create_datagram_endpoint(
        lambda: _Load(queries, outstanding), remote_addr=("127.0.0.11", 53)
    )
    try:
        await asyncio.sleep(WARMUP_S)
        load.counting = True
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            await asyncio.sleep(0.25)
            load.sweep()
        load.counting = False
        elapsed = time.perf_counter() - start
        load.stopped = True
    finally:
        transport.close()
    lat = sorted(load.latencies)

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

    return {
        "answered": len(lat),
        "seconds": elapsed,
        "qps": len(lat) / elapsed,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": lat[-1] * 1000 if lat else float("nan"),
        "errors": load.errors,
        "lost": load.lost,
    }


# --- the DNS figure --------------------------------------------------------------------


def dns_bench(seconds: float, outstanding: int, mode: str) -> dict[str, Any]:
    ns = Netns()
    server: subprocess.Popen[str] | None = None
    upstream: subprocess.Popen[str] | None = None
    try:
        port = "0"
        if mode == "forwarded":
            upstream = subprocess.Popen(
                [sys.executable, __file__, "_fake-upstream"], stdout=subprocess.PIPE, text=True
            )
            port = _readline(upstream, READY_TIMEOUT_S).strip()
        server = subprocess.Popen(
            [sys.executable, __file__, "_serve-dns", ns.path, mode, port],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None
        line = _readline(server, READY_TIMEOUT_S)
        if line.strip() != "ready":
            raise BenchError(f"resolver process did not start (said {line!r})")
        log(f"dns: resolver pid {server.pid} serving in {ns.name}; load for {seconds:g} s")
        out = subprocess.run(
            ["ip", "netns", "exec", ns.name, sys.executable, __file__, "_load-dns"]
            + [str(seconds), str(outstanding), *DNS_MODES[mode][1]],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        )
        if out.returncode != 0:
            raise BenchError(f"load generator failed: {out.stderr.strip()[-2000:]}")
        result: dict[str, Any] = json.loads(out.stdout)
        server.send_signal(signal.SIGTERM)
        stats, _ = server.communicate(timeout=STOP_TIMEOUT_S)
        result["resolver"] = json.loads(stats.strip().splitlines()[-1]) if stats.strip() else {}
        return result
    finally:
        for proc in (server, upstream):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        ns.remove()


def _readline(proc: subprocess.Popen[str], timeout_s: float) -> str:
    import selectors

    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout_s):
            raise BenchError(f"no answer from pid {proc.pid} within {timeout_s:g} s")
    return proc.stdout.readline()


# --- overlay TCP throughput ------------------------------------------------------------

IPERF_PORT = 5201
# iperf3's server may take a moment to listen; the client tries again this many times.
IPERF_CONNECT_TRIES = 50
IPERF_RETRY_S = 0.1
# The overlay's first packets wait for the plumbing's sync (FDB and neighbour entries).
OVERLAY_READY_TRIES = 50


def _nsenter(netns: str, *argv: str) -> list[str]:
    return ["nsenter", f"--net={netns}", *argv]


def iperf3_gbps(server_ns: str, client_ns: str, addr: str, seconds: float) -> float:
    """TCP throughput from `client_ns` to an iperf3 server in `server_ns` at `addr`."""
    server = subprocess.Popen(
        _nsenter(server_ns, "iperf3", "-s", "-1", "-p", str(IPERF_PORT)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(IPERF_CONNECT_TRIES):
            out = subprocess.run(
                _nsenter(client_ns, "iperf3", "-c", addr, "-p", str(IPERF_PORT), "-J")
                + ["-t", f"{seconds:g}"],
                capture_output=True,
                text=True,
                timeout=seconds + 60,
            )
            try:
                doc = json.loads(out.stdout)
            except ValueError:
                doc = {}
            received = doc.get("end", {}).get("sum_received")
            if out.returncode == 0 and received:
                return float(received["bits_per_second"]) / 1e9
            time.sleep(IPERF_RETRY_S)  # not listening yet (iperf3 -J says why in "error")
        raise BenchError(f"iperf3 to {addr} failed: {doc.get('error')} {out.stderr[-500:]}")
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()


async def _overlay_gbps(
    tmp: Path, nodes: list[tuple[str, str]], subnet: str, seconds: float, rounds: int
) -> tuple[float, float]:
    """Two tasks, one per node, on one overlay network made by the real Plumbing; then
    `rounds` times node to node directly and task to task over it, in turn (the machine
    is shared: the best of each is the figure). Returns (direct, overlay) Gbit/s."""
    import secrets

    from shoal.agent.network.plumbing import Plumbing
    from shoal.agent.network.state import NetworkState
    from shoal.types.network import (
        VXLAN_ID_OPTION,
        Driver,
        IPAMConfig,
        IPAMOptions,
        Network,
        NetworkAttachment,
        NetworkPeer,
        NetworkUpdate,
    )

    net = Network(
        id=secrets.token_hex(12),
        driver_state=Driver(
            name="overlay", options={VXLAN_ID_OPTION: str(4200 + secrets.randbelow(100_000))}
        ),
        ipam_options=IPAMOptions(configs=[IPAMConfig(subnet=f"{subnet}.0/24")]),
    )
    tasks = [(f"bench-t{i}", node, f"{subnet}.{i + 2}") for i, node in enumerate(nodes)]
    update = NetworkUpdate(
        full=True,
        networks=[net],
        peers=[
            NetworkPeer(network_id=net.id, task_id=t, node_id=ns, node_addr=node_addr, addr=a)
            for t, (ns, node_addr), a in tasks
        ],
    )
    plumbings: list[Plumbing] = []
    try:
        paths = []
        for t, (ns, node_addr), a in tasks:
            p = Plumbing(tmp / ns / "data", tmp / ns / "run", node_addr, f"/run/netns/{ns}")
            plumbings.append(p)
            state = NetworkState()
            p.watch(state)
            state.apply(update)
            paths.append(await p.attach(t, [NetworkAttachment(network=net, addresses=[f"{a}/24"])]))
        (_, _, a_addr), (_, _, b_addr) = tasks
        for _ in range(OVERLAY_READY_TRIES):
            ping = await asyncio.create_subprocess_exec(
                *_nsenter(paths[0], "busybox", "ping", "-c", "1", "-W", "1", b_addr),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if await ping.wait() == 0:
                break
        else:
            raise BenchError(f"task {a_addr} never reached {b_addr} over the overlay")
        (ns_a, _), (ns_b, addr_b) = nodes
        direct: list[float] = []
        overlay: list[float] = []
        for i in range(rounds):
            log(f"overlay: round {i + 1}/{rounds}: iperf3 {seconds:g} s node to node")
            direct.append(
                await asyncio.to_thread(
                    iperf3_gbps, f"/run/netns/{ns_b}", f"/run/netns/{ns_a}", addr_b, seconds
                )
            )
            log(f"overlay: round {i + 1}/{rounds}: iperf3 {seconds:g} s task to task (VXLAN)")
            overlay.append(
                await asyncio.to_thread(iperf3_gbps, paths[1], paths[0], b_addr, seconds)
            )
        log(f"overlay: direct {direct} overlay {overlay} Gbit/s")
        return max(direct), max(overlay)
    finally:
        for p in plumbings:
            await p.close()


def overlay_throughput(seconds: float, rounds: int) -> dict[str, Any]:
    """iperf3 between two tasks on different nodes over the overlay (VXLAN, the real
    Plumbing), against iperf3 between the two node namespaces directly, on two lab
    nodes (tests/integration/cluster_harness.NetnsLab: namespaces on one bridge)."""
    import secrets
    import shutil
    import tempfile

    from tests.integration.cluster_harness import NetnsLab

    lab = NetnsLab()
    tmp = Path(tempfile.mkdtemp(prefix="shoal-bench-net-"))
    try:
        nodes = [lab.add_host(), lab.add_host()]
        subnet = f"10.213.{secrets.randbelow(250) + 1}"
        direct, overlay = asyncio.run(_overlay_gbps(tmp, nodes, subnet, seconds, rounds))
    finally:
        errors = lab.teardown()
        shutil.rmtree(tmp, ignore_errors=True)
        if errors:
            log(f"overlay: lab teardown errors: {errors}")
    return {"overlay_gbps": overlay, "direct_gbps": direct, "ratio": overlay / direct}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=DEFAULT_SECONDS)
    ap.add_argument("--outstanding", type=int, default=DEFAULT_OUTSTANDING)
    ap.add_argument("--iperf-seconds", type=float, default=DEFAULT_IPERF_SECONDS)
    ap.add_argument("--iperf-rounds", type=int, default=DEFAULT_IPERF_ROUNDS)
    ap.add_argument("--skip-dns", action="store_true")
    ap.add_argument("--skip-overlay", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/net.py needs root (network namespaces)", file=sys.stderr)
        return 1
    try:
        if not args.skip_dns:
            for mode, (what, _, anchor) in DNS_MODES.items():
                r = dns_bench(args.seconds, args.outstanding, mode)
                print(
                    f"dns ({what}): {r['qps']:,.0f} q/s ({r['answered']:,} in "
                    f"{r['seconds']:.1f} s, {args.outstanding} outstanding), latency p50 "
                    f"{r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms max {r['max_ms']:.1f} ms, "
                    f"{r['lost']} lost, {r['errors']} errors; anchor dnslib+asyncio "
                    f"{anchor:,} q/s: ratio {r['qps'] / anchor:.2f}",
                    flush=True,
                )
        if not args.skip_overlay:
            o = overlay_throughput(args.iperf_seconds, args.iperf_rounds)
            print(
                f"overlay: {o['overlay_gbps']:.2f} Gbit/s task to task over VXLAN, "
                f"{o['direct_gbps']:.2f} Gbit/s node to node (best of {args.iperf_rounds} "
                f"each): ratio {o['ratio']:.2f} (aim >= {OVERLAY_RATIO_AIM})"
            )
    except (BenchError, subprocess.SubprocessError, OSError) as e:
        print(f"bench/net.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_serve-dns":
        import uvloop

        uvloop.run(serve_dns(sys.argv[2], sys.argv[3], int(sys.argv[4])))
    elif len(sys.argv) > 1 and sys.argv[1] == "_fake-upstream":
        import uvloop

        uvloop.run(serve_upstream())
    elif len(sys.argv) > 1 and sys.argv[1] == "_load-dns":
        import uvloop

        load = load_dns(float(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])
        print(json.dumps(uvloop.run(load)))
    else:
        sys.exit(main())
