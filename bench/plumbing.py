"""Per-task cost of the overlay plumbing: 100 task namespaces attached to one network
(a namespace, lo up, a veth into the network's bridge, an address), then detached.

    .venv/bin/python bench/plumbing.py [--tasks N]

Root only. Runs in a node namespace of its own (a lab namespace made and removed here,
by its own name), with the plumbing's files in a temporary directory. Prints the time
to create the network's sandbox, the mean and p99 per-task attach and detach, and the
sandbox variant's overhead (a sandbox per network) against a bridge in the node's
namespace, which costs the same per task: only the sandbox's creation differs.
TCP throughput over the overlay is bench/net.py's.
"""

from __future__ import annotations

import argparse
import asyncio
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
from shoal.types.network import (  # noqa: E402
    VXLAN_ID_OPTION,
    Driver,
    IPAMConfig,
    IPAMOptions,
    Network,
    NetworkAttachment,
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
