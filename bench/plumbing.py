"""Per-task cost of the overlay plumbing: 100 task namespaces attached to one network
(a namespace, lo up, a veth into the network's bridge, an address), then detached.

    .venv/bin/python bench/plumbing.py [--tasks N] [--throughput SECONDS]

Root only. Runs in a node namespace of its own (a lab namespace made and removed here,
by its own name), with the plumbing's files in a temporary directory. Prints the time
to create the network's sandbox, the mean and p99 per-task attach and detach, and the
sandbox variant's overhead (a sandbox per network) against a bridge in the node's
namespace, which costs the same per task: only the sandbox's creation differs.
With --throughput, TCP throughput (iperf3) between two tasks on two nodes (namespaces
joined by a veth pair) over the overlay, against between the two nodes directly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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
    NetworkUpdate,
)


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def run(tasks: int, workdir: Path, node_ns: str) -> None:
    net = Network(
        id=secrets.token_hex(12),
        driver_state=Driver(name="overlay", options={VXLAN_ID_OPTION: "4999"}),
        ipam_options=IPAMOptions(configs=[IPAMConfig(subnet="10.214.0.0/16")]),
    )
    plumbing = Plumbing(workdir, workdir, "10.214.255.1", f"/run/netns/{node_ns}")
    try:
        t0 = time.perf_counter()
        await asyncio.to_thread(plumbing.ensure_network, net)
        sandbox_s = time.perf_counter() - t0
        attach, detach = [], []
        for i in range(tasks):
            att = [
                NetworkAttachment(network=net, addresses=[f"10.214.{i // 250}.{i % 250 + 2}/16"])
            ]
            t = time.perf_counter()
            await plumbing.attach(f"t{i:04d}", att)
            attach.append(time.perf_counter() - t)
        for i in range(tasks):
            t = time.perf_counter()
            await plumbing.detach(f"t{i:04d}")
            detach.append(time.perf_counter() - t)
    finally:
        await plumbing.close()
    print(f"sandbox (netns + bridge + vxlan): {sandbox_s * 1000:.1f} ms")
    print(
        f"attach: mean {statistics.mean(attach) * 1000:.1f} ms, p99 {p99(attach) * 1000:.1f} ms,"
        f" {tasks} tasks in {sum(attach):.2f} s"
    )
    print(f"detach: mean {statistics.mean(detach) * 1000:.1f} ms, p99 {p99(detach) * 1000:.1f} ms")


def iperf(client_ns: str, server_ns: str, addr: str, seconds: int) -> float:
    """TCP throughput (Gbit/s) from a client in `client_ns` to a server in `server_ns`
    (namespace files, entered with nsenter)."""
    server = subprocess.Popen(
        ["nsenter", f"--net={server_ns}", "iperf3", "-s", "-1", "-J"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        for _ in range(100):
            out = subprocess.run(
                ["nsenter", f"--net={client_ns}", "iperf3", "-c", addr, "-t", str(seconds), "-J"],
                capture_output=True, text=True,
            )  # fmt: skip
            result = json.loads(out.stdout) if out.stdout.strip() else {}
            if out.returncode == 0 and "sum_received" in result.get("end", {}):
                return float(result["end"]["sum_received"]["bits_per_second"]) / 1e9
            time.sleep(0.05)
        raise RuntimeError(f"iperf3 failed: {out.stdout[-500:]} {out.stderr[-500:]}")
    finally:
        server.kill()
        server.wait()


async def throughput(workdir: Path, nodes: list[str], seconds: int) -> None:
    """Two nodes (namespaces joined by a veth pair, underlay 10.215.0.1/.2), a task on
    each on one overlay network: iperf3 between the tasks against between the nodes."""
    net = Network(
        id=secrets.token_hex(12),
        driver_state=Driver(name="overlay", options={VXLAN_ID_OPTION: "4998"}),
        ipam_options=IPAMOptions(configs=[IPAMConfig(subnet="10.216.0.0/24")]),
    )
    under = ["10.215.0.1", "10.215.0.2"]
    over = ["10.216.0.2", "10.216.0.3"]
    state = NetworkState()
    peers = [
        NetworkPeer(network_id=net.id, task_id=f"t{i}", node_id=f"n{i}", node_addr=under[i],
                    addr=over[i])
        for i in (0, 1)
    ]  # fmt: skip
    plumbings = []
    try:
        paths = []
        for i, ns in enumerate(nodes):
            p = Plumbing(workdir / ns, workdir / ns, under[i], f"/run/netns/{ns}")
            plumbings.append(p)
            p.state = state
            att = [NetworkAttachment(network=net, addresses=[f"{over[i]}/24"])]
            paths.append(await p.attach(f"t{i}", att))
        state.apply(NetworkUpdate(full=True, networks=[net], peers=peers))
        for p in plumbings:
            await asyncio.to_thread(p.sync)
        direct = iperf(f"/run/netns/{nodes[0]}", f"/run/netns/{nodes[1]}", under[1], seconds)
        overlay = iperf(paths[0], paths[1], over[1], seconds)
    finally:
        for p in plumbings:
            await p.close()
    print(
        f"throughput: overlay {overlay:.2f} Gbit/s, nodes direct {direct:.2f} Gbit/s, "
        f"ratio {overlay / direct:.2f}"
    )


def two_nodes() -> list[str]:
    suffix = secrets.token_hex(3)
    nodes = [f"shoal-bench-{suffix}-a", f"shoal-bench-{suffix}-b"]
    for ns in nodes:
        subprocess.run(["ip", "netns", "add", ns], check=True)
    subprocess.run(
        ["ip", "-n", nodes[0], "link", "add", "u0", "type", "veth", "peer", "name", "u1",
         "netns", nodes[1]],
        check=True,
    )  # fmt: skip
    for i, ns in enumerate(nodes):
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        subprocess.run(
            ["ip", "-n", ns, "addr", "add", f"10.215.0.{i + 1}/24", "dev", f"u{i}"], check=True
        )
        subprocess.run(["ip", "-n", ns, "link", "set", f"u{i}", "up"], check=True)
    return nodes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument(
        "--throughput", type=int, default=0, metavar="SECONDS",
        help="also measure iperf3 between tasks on two nodes for this long",
    )  # fmt: skip
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    node_ns = f"shoal-bench-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", node_ns], check=True)
    try:
        subprocess.run(["ip", "-n", node_ns, "link", "set", "lo", "up"], check=True)
        subprocess.run(
            ["ip", "-n", node_ns, "addr", "add", "10.214.255.1/32", "dev", "lo"], check=True
        )
        with tempfile.TemporaryDirectory(prefix="shoal-bench-") as d:
            asyncio.run(run(args.tasks, Path(d), node_ns))
    finally:
        subprocess.run(["ip", "netns", "del", node_ns], check=False)
    if args.throughput:
        nodes = two_nodes()
        try:
            with tempfile.TemporaryDirectory(prefix="shoal-bench-") as d:
                asyncio.run(throughput(Path(d), nodes, args.throughput))
        finally:
            for ns in nodes:
                subprocess.run(["ip", "netns", "del", ns], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
