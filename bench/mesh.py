"""The load-balancing data path under load: requests/s and p99 latency with wrk, to the
same backend (a small HTTP server answering its hostname) directly, through a VIP,
through the routing mesh, and through HAProxy configured here.

    .venv/bin/python bench/mesh.py [--seconds S] [--connections C] [--backends N]

Root only; needs wrk and haproxy (scripts/setup.sh). Made here, by names of its own
(random suffix) and removed at the end: a node namespace and an outside client's
namespace joined by a veth pair; the node's Plumbing (files in a temporary directory)
with the ingress network and an app network; N backend tasks on both, publishing
8080:80 in ingress mode, and a client task per path on the app network. Paths:

- direct: from a client task to a backend's address (the overlay, no NAT);
- vip: from a client task to the service's VIP (vip.py: DNAT in the task's namespace);
- mesh: from the outside namespace to the node's address:8080 (mesh.py: DNAT in the node,
  the gateway namespace, DNAT + masquerade there);
- hostport: from the outside namespace to the node's address:8081, published in host
  mode by the first backend (hostports.py: DNAT in the node to the task's own link), the
  shortest published path, to compare the mesh's gateway hop with;
- haproxy: from a client task to HAProxy (mode tcp, nbthread 1, round robin) in that
  task's namespace on 127.0.0.1:8090, to the backends' addresses.

Each with keep-alive and with a new connection per request (`Connection: close`), the
paths in turn for --rounds rounds; medians printed (with the range of req/s).
Last line: `mesh: <x> of direct, <y> of HAProxy, ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from shoal.agent.network.plumbing import Plumbing  # noqa: E402
from shoal.agent.network.state import NetworkState  # noqa: E402
from shoal.types.network import (  # noqa: E402
    VXLAN_ID_OPTION,
    Driver,
    IPAMConfig,
    IPAMOptions,
    Network,
    NetworkAttachment,
    NetworkPeer,
    NetworkSpec,
    NetworkUpdate,
    PortMapping,
    ServiceEndpoint,
)

# A small HTTP/1.1 server (asyncio protocol, keep-alive) answering its hostname.
SERVER = r"""
import asyncio, sys
name = sys.argv[1].encode()
OK = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n\r\n%s" % (len(name), name)
CLOSE = OK.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
class P(asyncio.Protocol):
    def connection_made(self, t):
        self.t, self.buf = t, b""
    def data_received(self, data):
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            if b"onnection: close" in head or b"onnection: Close" in head:
                self.t.write(CLOSE); self.t.close(); return
            self.t.write(OK)
async def main():
    srv = await asyncio.get_running_loop().create_server(P, "0.0.0.0", 80, backlog=4096)
    print("ready", flush=True)
    await srv.serve_forever()
asyncio.run(main())
"""

CLIENTS = ("client-direct", "client-vip", "client-haproxy")

HAPROXY_CFG = """global
    maxconn 8000
    nbthread 1
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend f
    bind 127.0.0.1:8090
    default_backend b
backend b
    balance roundrobin
{servers}
"""


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=check)


def network(subnet: str, vni: int, ingress: bool = False) -> Network:
    return Network(
        id=secrets.token_hex(12),
        spec=NetworkSpec(name="ingress" if ingress else "appnet", ingress=ingress),
        driver_state=Driver(name="overlay", options={VXLAN_ID_OPTION: str(vni)}),
        ipam_options=IPAMOptions(configs=[IPAMConfig(subnet=subnet)]),
    )


def wrk(ns: str, url: str, seconds: int, conns: int, close: bool) -> tuple[float, float]:
    """(requests/s, p99 ms) of wrk run in namespace `ns`."""
    argv = ["nsenter", f"--net={ns}", "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency"]
    if close:
        argv += ["-H", "Connection: close"]
    out = subprocess.run([*argv, url], capture_output=True, text=True, timeout=seconds + 60)
    text = out.stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", text)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", text)
    if rps is None or p99 is None:
        raise RuntimeError(f"wrk: {out.stderr or text}")
    if errors:
        print(f"  ({url}: {errors.group(0)})")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    return float(rps.group(1)), float(p99.group(1)) * scale


async def run(
    args: argparse.Namespace, work: Path, node_ns: str, node_addr: str, out_ns: str
) -> None:
    ingress = network("10.216.0.0/24", 5001, ingress=True)
    app = network("10.217.0.0/16", 5002)
    svc = "svc-bench"
    n = args.backends
    ing_addrs = [f"10.216.0.{10 + i}" for i in range(n)]
    app_addrs = [f"10.217.0.{10 + i}" for i in range(n)]
    vip = "10.217.0.2"
    peers = []
    for i in range(n):
        for net, addr in ((ingress, ing_addrs[i]), (app, app_addrs[i])):
            peers.append(NetworkPeer(
                network_id=net.id, task_id=f"web{i}", node_id="N", node_addr=node_addr,
                addr=addr, service_id=svc, service_name="web", running=True,
            ))  # fmt: skip
    for j, who in enumerate(CLIENTS):
        peers.append(NetworkPeer(
            network_id=app.id, task_id=who, node_id="N", node_addr=node_addr,
            addr=f"10.217.0.{50 + j}", service_id="svc-client", service_name="client",
            running=True,
        ))  # fmt: skip
    endpoints = [
        ServiceEndpoint(network_id=ingress.id, service_id=svc, service_name="web",
                        vip="10.216.0.2", ports=[PortMapping(target=80, published=8080)]),
        ServiceEndpoint(network_id=app.id, service_id=svc, service_name="web", vip=vip),
    ]  # fmt: skip
    state = NetworkState()
    plumbing = Plumbing(work, work, node_addr, f"/run/netns/{node_ns}")
    plumbing.watch(state)
    state.apply(NetworkUpdate(full=True, networks=[ingress, app], peers=peers, endpoints=endpoints))
    procs: list[subprocess.Popen[str]] = []
    try:
        for i in range(n):
            path = await plumbing.attach(f"web{i}", [
                NetworkAttachment(network=ingress, addresses=[f"{ing_addrs[i]}/24"]),
                NetworkAttachment(network=app, addresses=[f"{app_addrs[i]}/16"]),
            ], host_ports=[PortMapping(target=80, published=8081, mode="host")] if i == 0 else None)  # fmt: skip
            p = subprocess.Popen(  # noqa: ASYNC220 - a bench driving real tools
                ["nsenter", f"--net={path}", sys.executable, "-c", SERVER, f"web{i}"],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            procs.append(p)
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        # A client task per path: connections to the backend from one namespace by
        # different paths (plain, DNATed, proxied) would collide in its conntrack table
        # and TIME_WAIT sockets, and NAT would have to hunt for free ports.
        clients = {}
        for j, who in enumerate(CLIENTS):
            att = NetworkAttachment(network=app, addresses=[f"10.217.0.{50 + j}/16"])
            clients[who] = await plumbing.attach(who, [att])
        await asyncio.sleep(0)
        if plumbing._sync_task is not None:
            await plumbing._sync_task
        # Connection-per-request runs leave thousands of TIME_WAIT sockets in the
        # clients' namespaces (ours, gone after): let new connections reuse them.
        for ns in (*clients.values(), f"/run/netns/{out_ns}"):
            sh("nsenter", f"--net={ns}", "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1",
               "net.ipv4.ip_local_port_range=10000 65000")  # fmt: skip
        cfg = work / "haproxy.cfg"
        servers = "\n".join(f"    server s{i} {a}:80" for i, a in enumerate(app_addrs))
        cfg.write_text(HAPROXY_CFG.format(servers=servers))
        hap = subprocess.Popen(  # noqa: ASYNC220
            ["nsenter", f"--net={clients['client-haproxy']}", "haproxy", "-db", "-f", str(cfg)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        procs.append(hap)
        await asyncio.sleep(0.5)
        paths = {
            "direct": (clients["client-direct"], f"http://{app_addrs[0]}/"),
            "vip": (clients["client-vip"], f"http://{vip}/"),
            "mesh": (f"/run/netns/{out_ns}", f"http://{node_addr}:8080/"),
            "hostport": (f"/run/netns/{out_ns}", f"http://{node_addr}:8081/"),
            "haproxy": (clients["client-haproxy"], "http://127.0.0.1:8090/"),
        }
        if n > 1:
            print(f"(direct goes to one of the {n} backends; the others spread over all)")
        results: dict[tuple[str, str], tuple[float, float]] = {}
        for mode, close in (("keep-alive", False), ("new connection", True)):
            runs: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
            for _ in range(args.rounds):  # the paths in turn, so drift hits them alike
                for name, (ns, url) in paths.items():
                    wrk(ns, url, 1, args.connections, close)  # warm up
                    runs[name].append(wrk(ns, url, args.seconds, args.connections, close))
            for name, got in runs.items():
                rps = statistics.median(r for r, _ in got)
                p99 = statistics.median(p for _, p in got)
                results[(name, mode)] = (rps, p99)
                spread = f"{min(r for r, _ in got):.0f}-{max(r for r, _ in got):.0f}"
                print(f"{mode:15} {name:8} {rps:10.0f} req/s ({spread})   p99 {p99:7.2f} ms")
        summary = []
        for mode in ("keep-alive", "new connection"):
            d, v, m, h, hp = (
                results[(x, mode)][0] for x in ("direct", "vip", "mesh", "haproxy", "hostport")
            )
            print(f"{mode}: vip {v / d:.2f} of direct; mesh {m / d:.2f} of direct, "
                  f"{m / h:.2f} of HAProxy, {m / hp:.2f} of host-mode; HAProxy {h / d:.2f} "
                  f"of direct; host-mode {hp / d:.2f} of direct")  # fmt: skip
            summary.append(
                f"{m / d:.2f} of direct, {m / h:.2f} of HAProxy, {m / hp:.2f} of host-mode ({mode})"
            )
        if args.sync_tasks:
            await sync_cost(plumbing, state, app, peers[0], args.sync_tasks)
        print("mesh: " + ", ".join(summary))
    finally:
        for p in procs:
            p.kill()
            p.wait()
            if p.stdout is not None:
                p.stdout.close()
            if p.stderr is not None:
                p.stderr.close()
        await plumbing.close()


async def sync_cost(
    plumbing: Plumbing, state: NetworkState, app: Network, backend: NetworkPeer, tasks: int
) -> None:
    """The cost of one backend change with `tasks` more local tasks on the app network:
    each has the VIP, so each namespace gets one `nft -f` transaction."""
    for i in range(tasks):
        att = NetworkAttachment(network=app, addresses=[f"10.217.1.{i + 1}/16"])
        await plumbing.attach(f"extra{i}", [att])
    times = []
    for running in (False, True, False, True):
        # Applied and synced by hand, timed: the state's listener would start a sync too.
        state.peers[backend.key] = msgspec.structs.replace(backend, running=running)
        t0 = time.perf_counter()
        await asyncio.to_thread(plumbing.sync)
        times.append(time.perf_counter() - t0)
    per = sorted(times)[len(times) // 2]
    print(f"VIP backend change with {tasks + 1} local tasks on the network: "
          f"{per * 1000:.0f} ms ({per * 1000 / (tasks + 1):.1f} ms per task namespace)")  # fmt: skip
    for i in range(tasks):
        await plumbing.detach(f"extra{i}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--backends", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="medians over rounds")
    parser.add_argument("--sync-tasks", type=int, default=50, help="0: skip the sync cost")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("root only", file=sys.stderr)
        return 2
    for tool in ("wrk", "haproxy", "nsenter"):
        if shutil.which(tool) is None:
            print(f"{tool} is needed: bash scripts/setup.sh", file=sys.stderr)
            return 2
    suffix = secrets.token_hex(3)
    node_ns, out_ns = f"shoal-bm-{suffix}-n", f"shoal-bm-{suffix}-c"
    made = []
    try:
        for ns in (node_ns, out_ns):
            sh("ip", "netns", "add", ns)
            made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", node_ns, "link", "add", "u0", "type", "veth", "peer", "name", "u1",
           "netns", out_ns)  # fmt: skip
        for ns, dev, addr in ((node_ns, "u0", "10.218.0.1/24"), (out_ns, "u1", "10.218.0.2/24")):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        with tempfile.TemporaryDirectory(prefix="shoal-bench-mesh-") as tmp:
            asyncio.run(run(args, Path(tmp), node_ns, "10.218.0.1", out_ns))
    finally:
        for ns in made:
            sh("ip", "netns", "del", ns, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
