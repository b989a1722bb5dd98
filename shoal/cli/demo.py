"""`shoal demo`: the main job. A single-node cluster on the embedded defaults (SQLite
store, process runtime) running the DockerCoins workshop app (examples/dockercoins,
docs/dockercoins.md) as the stack `dockercoins`, with a progress display while it
converges and the addresses of its web UI and of the visualizer. Runs until Ctrl-C (or
SIGTERM), then removes the stack and stops the daemon."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from shoal.cli.client import Client
from shoal.cli.stack.compose import load
from shoal.cli.stack.convert import LABEL_NAMESPACE, plan
from shoal.cli.stack.deploy import deploy, remove

DEFAULT_DEMO_DIR = Path("/tmp/shoal-demo")
# The web UI's published port (the routing mesh), as in the workshop.
WEB_PORT = 8000
# The visualizer's own port (docs/visualizer.md): the daemon's --visualizer-addr.
VISUALIZER_PORT = 8081
STACK = "dockercoins"
START_TIMEOUT_S = 30.0
CONVERGE_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0
POLL_S = 0.25
EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "dockercoins"


def stack_env(port: int) -> dict[str, str]:
    """What the process runtime's stack file interpolates: this Python (it has the
    `redis` package), the example's directory, the web UI's port."""
    return {
        **os.environ,
        "PYTHON": sys.executable,
        "COINS": str(EXAMPLE_DIR),
        "WEBUI_PORT": str(port),
    }


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(POLL_S)
    raise SystemExit(f"timed out waiting for {what}")


def _running_by_service(client: Client) -> dict[str, int]:
    tasks = client.request(
        "GET",
        "/tasks",
        query={
            "filters": {
                "label": {f"{LABEL_NAMESPACE}={STACK}": True},
                "desired-state": {"running": True},
            }
        },
    )
    ids = {
        s["ID"]: s["Spec"]["Name"]
        for s in client.request(
            "GET", "/services", query={"filters": {"label": {f"{LABEL_NAMESPACE}={STACK}": True}}}
        )
    }
    n = dict.fromkeys(ids.values(), 0)
    for t in tasks:
        if t["Status"]["State"] == "running" and t["ServiceID"] in ids:
            n[ids[t["ServiceID"]]] += 1
    return n


def _converge(client: Client, console: Console, desired: dict[str, int]) -> None:
    """One bar per service (running tasks out of its replicas) until all run."""
    with Progress(
        TextColumn("{task.description:<20}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} running"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        bars: dict[str, TaskID] = {
            name: progress.add_task(name, total=n) for name, n in sorted(desired.items())
        }

        def converged() -> bool:
            running = _running_by_service(client)
            for name, bar in bars.items():
                progress.update(bar, completed=min(running.get(name, 0), desired[name]))
            return all(running.get(name, 0) >= n for name, n in desired.items())

        _wait(converged, CONVERGE_TIMEOUT_S, "the DockerCoins stack to run")


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def demo(
    data_dir: Path = DEFAULT_DEMO_DIR,
    port: int = WEB_PORT,
    duration: float = -1.0,
    visualizer_port: int = VISUALIZER_PORT,
) -> None:
    """Start a single-node cluster, deploy DockerCoins, print how to reach it.

    Runs until Ctrl-C or SIGTERM (or for `duration` seconds when given), then removes
    the stack (its tasks stop) and stops the daemon."""
    console = Console(stderr=True)
    f = load(EXAMPLE_DIR / "stack.yml", stack_env(port))
    the_plan = plan(STACK, f)  # a bad file stops here, before anything starts
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    sock = data_dir / "shoal.sock"
    log_path = data_dir / "daemon.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "shoal",
                "daemon",
                "--data-dir",
                str(data_dir),
                "--host",
                f"unix://{sock}",
                "--runtime",
                "process",
                "--node-name",
                "demo",
                "--visualizer-addr",
                f"127.0.0.1:{visualizer_port}",
            ],
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
        )
    client = Client(str(sock))
    initialised = False
    try:
        with console.status("starting the shoal daemon"):
            _wait(client.ping, START_TIMEOUT_S, "the daemon to answer")
            client.request(
                "POST", "/swarm/init", {"ListenAddr": "127.0.0.1:0", "AdvertiseAddr": "127.0.0.1"}
            )
        initialised = True
        deploy(client, the_plan, lambda line: console.print(line))
        desired = {
            name: int(spec.get("Mode", {}).get("Replicated", {}).get("Replicas", 1))
            for name, spec in the_plan.services.items()
        }
        _converge(client, console, desired)
        table = Table(title="shoal demo: DockerCoins on a single-node swarm")
        table.add_column("what")
        table.add_column("where")
        table.add_row("web UI (mining speed)", f"http://127.0.0.1:{port}/")
        table.add_row("visualizer", f"http://127.0.0.1:{visualizer_port}/")
        table.add_row("the docker CLI", f"export DOCKER_HOST=unix://{sock}")
        table.add_row("the lesson", f"docker service scale {STACK}_worker=10, then {STACK}_rng=5")
        Console().print(table)
        print(f"web UI: http://127.0.0.1:{port}/", flush=True)
        print(f"visualizer: http://127.0.0.1:{visualizer_port}/", flush=True)
        if duration >= 0:
            time.sleep(duration)
        else:
            console.print("[bold]running; press Ctrl-C to stop[/bold]")
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one clean-up, uninterrupted
        with console.status("removing the stack and stopping the daemon"):
            if initialised and proc.poll() is None:
                with contextlib.suppress(Exception):
                    remove(client, STACK, lambda line: None)
                    with contextlib.suppress(SystemExit):
                        _wait(
                            lambda: not _live_tasks(client),
                            STOP_TIMEOUT_S,
                            "the stack's tasks to stop",
                        )
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        console.print("stopped")


def _live_tasks(client: Client) -> list[Any]:
    """The tasks still running (the stack's: the demo's cluster runs nothing else)."""
    tasks = client.request("GET", "/tasks") or []
    return [t for t in tasks if t["Status"]["State"] in ("running", "starting", "preparing")]
