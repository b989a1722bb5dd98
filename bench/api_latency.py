"""The API's answer time while a huge service is built (issue 15's acceptance).

    .venv/bin/python bench/api_latency.py [--replicas N] [--timeout SECONDS] [--asyncio-debug]

Starts its own `shoal daemon --runtime process` in a temporary directory (as
bench/converge.py does), initialises a single-node swarm and creates a service of N =
200,000 replicas with a constraint no node meets, so every task stays pending. While
the orchestrator, the allocator and the scheduler work through it, one thread runs the
real `docker service ls` over and over and another calls `GET /services?status=true`
(what it sends) and samples the manager's RSS. When every task is in the store (counted
in the daemon's SQLite file, read-only) and two more seconds have passed (the last
chunks go through the allocator and the scheduler), it prints one line: the build time,
the `docker service ls` and raw-API latencies (median, p99, max) against the 100 ms
aim, and the manager's peak RSS (VmHWM) against the 1 GiB bound.

`--asyncio-debug` runs the daemon with PYTHONASYNCIODEBUG=1: asyncio then logs every
callback that held the event loop longer than 100 ms, with the coroutine it ran (for
profiling; it slows the daemon down, so its figures are not the benchmark's). The
longest ones are printed from the daemon's log.

Afterwards it removes the service, the daemon and its directory (converge.py's cleanup).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from converge import BenchError, ConvergeBench, _raise_interrupt
from rich.console import Console

DEFAULT_REPLICAS = 200_000
DEFAULT_TIMEOUT_S = 300.0
AIM_S = 0.1
RSS_BOUND = 1024**3
SETTLE_S = 2.0
SERVICE = "bench-huge"
CONSTRAINT = "node.labels.nowhere==true"
SLOW_SHOWN = 15


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def figures(name: str, values: list[float]) -> str:
    if not values:
        return f"{name}: no calls"
    return (
        f"{name}: {len(values)} calls, median {percentile(values, 0.5) * 1000:.0f} ms, "
        f"p99 {percentile(values, 0.99) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms"
    )


def proc_status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


class LatencyBench(ConvergeBench):
    def task_count(self) -> int:
        db_path = self.data_dir / "swarm" / "store.db"
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5) as db:
            return int(db.execute("SELECT count(*) FROM objects WHERE kind='task'").fetchone()[0])

    def measure(self, replicas: int, timeout_s: float) -> str:
        self.start_daemon()
        assert self.daemon is not None
        pid = self.daemon.pid
        self.api.call(
            "POST", "/swarm/init", {"ListenAddr": "127.0.0.1:0", "AdvertiseAddr": "127.0.0.1"}
        )
        env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket_path}"}
        cli: list[float] = []
        raw: list[float] = []
        stop = threading.Event()

        def run_cli() -> None:
            while not stop.is_set():
                t0 = time.perf_counter()
                subprocess.run(
                    ["docker", "service", "ls"], env=env, capture_output=True, check=True
                )
                cli.append(time.perf_counter() - t0)
                time.sleep(0.02)

        def run_raw() -> None:
            while not stop.is_set():
                t0 = time.perf_counter()
                self.api.call("GET", "/services", query={"status": "true"})
                raw.append(time.perf_counter() - t0)
                time.sleep(0.02)

        threads = [threading.Thread(target=f, daemon=True) for f in (run_cli, run_raw)]
        for t in threads:
            t.start()
        spec = {
            "Name": SERVICE,
            "TaskTemplate": {
                "ContainerSpec": {"Image": "busybox", "Args": ["sleep", "1000"]},
                "Placement": {"Constraints": [CONSTRAINT]},
            },
            "Mode": {"Replicated": {"Replicas": replicas}},
        }
        t0 = time.perf_counter()
        try:
            self.service_id = str(self.api.call("POST", "/services/create", spec)["ID"])
            while (count := self.task_count()) < replicas:
                self.check_daemon()
                if time.perf_counter() - t0 > timeout_s:
                    raise BenchError(f"{count}/{replicas} tasks after {timeout_s:g} s")
                self.console.print(f"{count}/{replicas} tasks", highlight=False)
                time.sleep(1.0)
            build_s = time.perf_counter() - t0
            time.sleep(SETTLE_S)
        finally:
            stop.set()
            for t in threads:
                t.join()
        hwm = proc_status(pid, "VmHWM")
        return (
            f"api_latency: {replicas} pending replicas built in {build_s:.1f} s; "
            f"`docker service ls` {figures('', cli)[2:]}; GET /services?status=true "
            f"{figures('', raw)[2:]} (aim {AIM_S * 1000:.0f} ms); manager peak RSS "
            f"{hwm / 1024**2:.0f} MiB (bound {RSS_BOUND / 1024**2:.0f} MiB)"
        )

    def slow_callbacks(self) -> list[str]:
        """asyncio debug's "Executing ... took N seconds" lines, longest first."""
        found: list[tuple[float, str]] = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            m = re.search(r"Executing (.*) took (\d+\.\d+) seconds", line)
            if m:
                found.append((float(m.group(2)), m.group(1)[:300]))
        found.sort(reverse=True)
        return [f"{s * 1000:6.0f} ms  {what}" for s, what in found[:SLOW_SHOWN]] + [
            f"({len(found)} callbacks over 100 ms)"
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=DEFAULT_REPLICAS)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S)
    parser.add_argument("--asyncio-debug", action="store_true")
    parser.add_argument("--keep-log", type=Path, metavar="FILE", help="copy the daemon's log here")
    args = parser.parse_args(argv)
    if args.asyncio_debug:
        os.environ["PYTHONASYNCIODEBUG"] = "1"
    console = Console(stderr=True, soft_wrap=True)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="shoal-bench-", dir="/tmp"))
    bench = LatencyBench(workdir, console)
    try:
        print(bench.measure(args.replicas, args.timeout), flush=True)
        if args.asyncio_debug:
            for line in bench.slow_callbacks():
                print(line, flush=True)
        return 0
    except BenchError as e:
        console.print(f"[red]api_latency: {e}[/red]", highlight=False)
        bench.print_log_excerpt()
        return 1
    except KeyboardInterrupt:
        console.print("api_latency: interrupted; cleaning up")
        return 130
    finally:
        if args.keep_log is not None and bench.log_path.exists():
            shutil.copyfile(bench.log_path, args.keep_log)
        bench.cleanup()


if __name__ == "__main__":
    sys.exit(main())
