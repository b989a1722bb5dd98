"""`shoal sim`: N hollow nodes in one process and one event loop (docs/sim.md)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from shoal.agent.executor.sim import SimConfig
from shoal.agent.hollow import HollowFleet, rss_bytes
from shoal.daemon.config import local_addr_towards, split_addr
from shoal.log import get_logger

# How long the fleet may take to have every node's session up before it says so anyway.
CONNECT_WAIT_S = 120.0
CONNECT_POLL_S = 0.2

log = get_logger("shoal.sim")


def say(line: str) -> None:
    print(f"sim: {line}", flush=True)


async def run_fleet(fleet: HollowFleet) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    base = rss_bytes()
    started = loop.time()
    await fleet.join_all()
    say(f"{len(fleet.nodes)} nodes joined in {loop.time() - started:.1f} s")
    fleet.start_all()
    # Progress report only (the sessions come up by themselves): a bounded wait.
    deadline = loop.time() + CONNECT_WAIT_S
    while fleet.connected() < len(fleet.nodes) and loop.time() < deadline and not stop.is_set():
        await fleet.clock.sleep(CONNECT_POLL_S)
    rss = rss_bytes()
    per_node = (rss - base) / max(1, len(fleet.nodes))
    say(
        f"{fleet.connected()}/{len(fleet.nodes)} nodes connected in "
        f"{loop.time() - started:.1f} s; rss {rss / 2**20:.1f} MiB, "
        f"{per_node / 1024:.0f} KiB per node"
    )
    await stop.wait()
    say(f"stopping; {fleet.running_tasks()} tasks running, rss {rss_bytes() / 2**20:.1f} MiB")
    await fleet.stop()


def sim(
    nodes: int,
    join: str,
    token: str,
    start_delay_ms: float,
    fail_ratio: float,
    seed: int,
    job_run_ms: float,
    name_prefix: str,
    data_dir: Path | None,
) -> None:
    host, _ = split_addr(join, 2377)
    fleet = HollowFleet(
        remote=join,
        token=token,
        count=nodes,
        name_prefix=name_prefix,
        sim=SimConfig(
            start_delay_s=start_delay_ms / 1000,
            job_run_s=job_run_ms / 1000,
            fail_ratio=fail_ratio,
            seed=seed,
        ),
        data_dir=data_dir,
        addr=local_addr_towards(host),
    )
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(run_fleet(fleet))
    else:
        uvloop.run(run_fleet(fleet))
