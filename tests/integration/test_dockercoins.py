"""DockerCoins (examples/dockercoins), the workshop's app and the main job, on the
process runtime with the real CLIs:

- the workshop's lesson as numbers: with rng at one replica, workers 1 → 10 raise the
  hashes per second by less than 4× (rng serves one request at a time); then rng at
  5 replicas raises it at least 2× more. The figures are printed; these two ratios are
  the only check on them;
- the main command, scripts/run.sh itself (setup skipped: done), in headless chromium:
  its web UI shows coins being mined and a graph that gets points; its visualizer shows
  the node and the five services' cards; Ctrl-C removes the stack and stops the daemon,
  leaving no process behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from .browser import chromium
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
WINDOW_S = 10.0
WARMUP_S = 3.0
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


# ------------------------------------------------------------- the main command


class RunScript:
    """scripts/run.sh in a session of its own, its output read as it comes."""

    def __init__(self, data_dir: Path, web: int, viz: int) -> None:
        env = {**os.environ, "SHOAL_SKIP_SETUP": "1", "COLUMNS": "200"}
        self.proc = subprocess.Popen(
            [
                str(REPO / "scripts" / "run.sh"),
                "--data-dir",
                str(data_dir),
                "--port",
                str(web),
                "--visualizer-port",
                str(viz),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def printed(self, prefix: str) -> str | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"run.sh exited {self.proc.returncode}:\n{self.output}")
        return next((ln for ln in self.lines if ln.startswith(prefix)), None)

    def interrupt(self, timeout: float) -> int | None:
        """Ctrl-C; None if it had to be killed after `timeout`."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            rc = None
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return rc


def text_of(driver: WebDriver, selector: str) -> str:
    return str(
        driver.execute_script(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';",
            selector,
        )
    )


def mining(driver: WebDriver) -> dict[str, Any] | None:
    """The web UI's figures once coins were mined and the graph has points."""
    got: dict[str, Any] = driver.execute_script(
        "return {status: document.body.dataset.status,"
        " points: Number(document.getElementById('graph').dataset.points),"
        " coins: Number(document.getElementById('coins').textContent),"
        " hashes: Number(document.getElementById('hashes').textContent),"
        " line: document.getElementById('line').getAttribute('points')};"
    )
    ok = got["status"] == "live" and got["points"] >= 3 and got["coins"] > 0
    return got if ok else None


def visualized(driver: WebDriver) -> dict[str, Any] | None:
    """The visualizer's node columns and running cards by service, once the five
    services each show a running card."""
    got: dict[str, Any] = driver.execute_script(
        """
        const nodes = [...document.querySelectorAll('section.node')];
        const running = {};
        for (const c of document.querySelectorAll('.card[data-state="running"]'))
          running[c.dataset.service] = (running[c.dataset.service] || 0) + 1;
        return {status: document.body.dataset.status, running,
                heads: nodes.map(n => n.querySelector('.node-head').innerText)};
        """
    )
    want = {f"dockercoins_{s}" for s in SERVICES}
    return got if got["status"] == "live" and want <= set(got["running"]) else None


def daemon_pids(data_dir: Path) -> list[int]:
    """The `shoal daemon` run.sh started: the process whose arguments name its data
    dir (a fresh random path: no other process has it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"daemon" in argv and str(data_dir).encode() in argv:
                found.append(int(entry.name))
    return found


def test_the_main_command_mines_coins_and_shows_them_in_chromium(tmp_path: Path) -> None:
    root = Path(tempfile.mkdtemp(prefix="shoal-", dir="/tmp"))
    # The harness's handle on the daemon run.sh starts (not started by it): the task
    # pids recorded in its data dir, killed at the end if any outlived the script.
    demo = Daemon(root, tmp_path / "demo-daemon.log", "demo")
    web, viz = free_tcp_port(), free_tcp_port()
    run = RunScript(demo.data_dir, web, viz)
    daemons: list[int] = []
    try:
        wait_until(
            lambda: run.printed("visualizer: http"),
            timeout=2 * PROGRESS_TIMEOUT_S,
            what="run.sh to print the visualizer's address",
        )
        assert run.printed(f"web UI: http://127.0.0.1:{web}/"), run.output
        assert run.printed(f"visualizer: http://127.0.0.1:{viz}/"), run.output
        demo.pids_of_tasks()  # the tasks' pids, recorded for the end
        daemons = daemon_pids(demo.data_dir)
        assert len(daemons) == 1, daemons
        with chromium(tmp_path) as browser:
            browser.get(f"http://127.0.0.1:{web}/")
            first = wait_until(
                lambda: mining(browser),
                timeout=PROGRESS_TIMEOUT_S,
                what="the web UI to show coins and a graph",
            )
            wait_until(
                lambda: (m := mining(browser)) and m["hashes"] > first["hashes"],
                timeout=PROGRESS_TIMEOUT_S,
                what="the web UI's hash count to grow",
            )
            assert first["line"].count(",") >= 3, first
            assert "hashes/second" in text_of(browser, "#figures")
            browser.save_screenshot(str(tmp_path / "webui.png"))

            browser.get(f"http://127.0.0.1:{viz}/")
            shown = wait_until(
                lambda: visualized(browser),
                timeout=PROGRESS_TIMEOUT_S,
                what="the visualizer to show the five services running",
            )
            assert len(shown["heads"]) == 1, shown
            for word in ("demo", "manager", "ready", "active"):
                assert word in shown["heads"][0], shown
            browser.save_screenshot(str(tmp_path / "visualizer.png"))
        demo.pids_of_tasks()
    finally:
        rc = run.interrupt(timeout=60)
        daemon_left = [p for p in daemons if pid_alive(p)]
        for pid in daemon_left:
            os.kill(pid, signal.SIGKILL)
        leftovers = demo.cleanup()  # kills, by recorded pid, what outlived the script
    assert rc == 0, run.output
    assert "stopped" in run.output
    assert daemon_left == [], "the daemon outlived run.sh"
    assert leftovers == [], f"task processes outlived run.sh: {leftovers}"
