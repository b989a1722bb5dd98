"""DockerCoins (examples/dockercoins), the workshop's app and the main job, on the
process runtime with the real CLIs:

the workshop's lesson as numbers: with rng at one replica, workers 1 → 10 raise the
hashes per second by less than 4× (rng serves one request at a time); then rng at 5
replicas raises it at least 2× more. The figures are printed; these two ratios are the
only check on them. The main command is test_main_command.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from .harness import (
    CLI_TIMEOUT_S,
    PROGRESS_TIMEOUT_S,
    REPO,
    SHOAL,
    Daemon,
    free_tcp_port,
    pid_alive,
    wait_until,
)

pytestmark = pytest.mark.integration

EXAMPLE = REPO / "examples" / "dockercoins"
STACK = "coins"
# How long each figure is measured over, after a change has converged and warmed up
# (new workers resolve names and open their first connections).
WINDOW_S = 5.0
WARMUP_S = 2.0
SERVICES = ("rng", "hasher", "worker", "webui", "redis")


def counters(port: int) -> dict[str, Any]:
    """The web UI's JSON: redis's counters with the web UI's timestamp."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=10) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def hashes_per_second(port: int) -> float:
    time.sleep(WARMUP_S)
    a = counters(port)
    time.sleep(WINDOW_S)
    b = counters(port)
    return (b["hashes"] - a["hashes"]) / (b["now"] - a["now"])


def shoal(d: Daemon, *args: str, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(
        [str(SHOAL), *args, "-H", d.host],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env=env,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.fixture
def coins(cluster: Daemon) -> Iterator[int]:
    """DockerCoins deployed with `shoal stack deploy` (the host's Python of this test
    runs the files), running; yields the web UI's published port. Removed with
    `shoal stack rm` after the test, its processes waited for."""
    port = free_tcp_port()
    env = {**os.environ, "PYTHON": sys.executable, "COINS": str(EXAMPLE)}
    env["WEBUI_PORT"] = str(port)
    shoal(cluster, "stack", "deploy", "-c", str(EXAMPLE / "stack.yml"), STACK, env=env)
    try:
        for name in SERVICES:
            wait_until(
                lambda name=name: len(cluster.running_tasks(f"{STACK}_{name}")) == 1,
                timeout=PROGRESS_TIMEOUT_S,
                what=f"{STACK}_{name} running",
            )
        wait_until(
            lambda: counters(port)["hashes"] > 0,
            timeout=PROGRESS_TIMEOUT_S,
            what="the first hashes counted in redis",
        )
        yield port
    finally:
        pids = cluster.live_pids()
        shoal(cluster, "stack", "rm", STACK)
        wait_until(lambda: not cluster.api.services(), what="the stack's services gone")
        wait_until(
            lambda: not [p for p in pids.values() if pid_alive(p)],
            timeout=PROGRESS_TIMEOUT_S,
            what="the stack's processes to exit",
        )


def scale(d: Daemon, service: str, n: int) -> None:
    d.docker("service", "scale", f"{STACK}_{service}={n}", timeout=PROGRESS_TIMEOUT_S)
    wait_until(
        lambda: len(d.running_tasks(f"{STACK}_{service}")) == n,
        timeout=PROGRESS_TIMEOUT_S,
        what=f"{n} running tasks of {service}",
    )


def test_workers_scale_sublinearly_until_rng_is_scaled(cluster: Daemon, coins: int) -> None:
    one = hashes_per_second(coins)
    scale(cluster, "worker", 10)
    ten = hashes_per_second(coins)
    scale(cluster, "rng", 5)
    rng5 = hashes_per_second(coins)
    workers = counters(coins)["workers"]
    print(
        f"\nDockerCoins hashes/s over {WINDOW_S:.0f} s: 1 worker {one:.2f}; "
        f"10 workers {ten:.2f} ({ten / one:.2f}x); "
        f"10 workers, 5 rng {rng5:.2f} ({rng5 / ten:.2f}x more)"
    )
    assert one > 0
    assert len(workers) >= 10, workers  # every worker mined: the names resolved for each
    assert ten < 4 * one, (one, ten)
    assert rng5 >= 2 * ten, (ten, rng5)
