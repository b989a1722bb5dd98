"""`shoal demo`: the main job. A single-node cluster on the embedded defaults (SQLite
store, process runtime) serving the sample app, with how to reach it."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shoal.cli.client import Client

DEFAULT_DEMO_DIR = Path("/tmp/shoal-demo")
WEB_PORT = 8080
# The visualizer's own port (docs/visualizer.md): the daemon's --visualizer-addr.
VISUALIZER_PORT = 8081
TICKER_REPLICAS = 2
START_TIMEOUT_S = 30.0
CONVERGE_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
POLL_S = 0.2
EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "web"


def sample_services(web_dir: Path, port: int) -> list[dict[str, Any]]:
    """The sample app: a web server and a small worker service that logs."""
    return [
        {
            "Name": "web",
            "Labels": {"app": "shoal-demo"},
            "TaskTemplate": {
                "ContainerSpec": {
                    "Image": "python:3",
                    "Args": [
                        sys.executable,
                        "-m",
                        "http.server",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--directory",
                        str(web_dir),
                    ],
                },
            },
            "Mode": {"Replicated": {"Replicas": 1}},
        },
        {
            "Name": "ticker",
            "Labels": {"app": "shoal-demo"},
            "TaskTemplate": {
                "ContainerSpec": {
                    "Image": "busybox",
                    "Args": [
                        "sh",
                        "-c",
                        'i=0; while true; do echo "tick $i from $HOSTNAME"; i=$((i+1)); '
                        "sleep 2; done",
                    ],
                },
            },
            "Mode": {"Replicated": {"Replicas": TICKER_REPLICAS}},
        },
    ]


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(POLL_S)
    raise SystemExit(f"timed out waiting for {what}")


def demo(
    data_dir: Path = DEFAULT_DEMO_DIR,
    port: int = WEB_PORT,
    duration: float = -1.0,
    visualizer_port: int = VISUALIZER_PORT,
) -> None:
    """Start a single-node cluster, deploy the sample app, print how to reach it.

    Runs until Ctrl-C (or for `duration` seconds when given), then stops the daemon,
    which stops the app's processes.
    """
    console = Console(stderr=True)
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
    try:
        with console.status("starting the shoal daemon"):
            _wait(client.ping, START_TIMEOUT_S, "the daemon to answer")
            client.request(
                "POST", "/swarm/init", {"ListenAddr": "127.0.0.1:0", "AdvertiseAddr": "127.0.0.1"}
            )
        specs = sample_services(EXAMPLE_DIR, port)
        ids = [client.request("POST", "/services/create", s)["ID"] for s in specs]
        total = 1 + TICKER_REPLICAS
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} tasks running"),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            bar = progress.add_task("deploying the sample app", total=total)

            def running() -> bool:
                n = 0
                for sid in ids:
                    tasks = client.request(
                        "GET",
                        "/tasks",
                        query={
                            "filters": {"service": {sid: True}, "desired-state": {"running": True}}
                        },
                    )
                    n += sum(1 for t in tasks if t["Status"]["State"] == "running")
                progress.update(bar, completed=n)
                return n >= total

            _wait(running, CONVERGE_TIMEOUT_S, "the sample app to run")
        table = Table(title="shoal demo: a single-node swarm")
        for col in ("service", "replicas", "reach it"):
            table.add_column(col)
        table.add_row("web", "1/1", f"curl http://127.0.0.1:{port}/")
        table.add_row(
            "ticker",
            f"{TICKER_REPLICAS}/{TICKER_REPLICAS}",
            f"DOCKER_HOST=unix://{sock} docker service logs ticker",
        )
        Console().print(table)
        print(f"visualizer: http://127.0.0.1:{visualizer_port}/", flush=True)
        print(
            f"export DOCKER_HOST=unix://{sock}   # then: docker service ls, docker node ls",
            flush=True,
        )
        if duration >= 0:
            time.sleep(duration)
        else:
            console.print("[bold]running; press Ctrl-C to stop[/bold]")
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
    finally:
        with console.status("stopping the daemon and its tasks"):
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
