"""The main command, scripts/run.sh itself (setup skipped: done), in headless chromium:
its web UI shows DockerCoins mining and a graph that gets points; its visualizer shows
the node and the five services' cards; Ctrl-C removes the stack and stops the daemon,
leaving no process behind.

A module of its own: the daemon run.sh starts is the only one on the host's network
namespace while it runs (two daemons in one namespace would both bind the overlay's
VXLAN port; a module's swarm lives until the module ends).
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from .browser import chromium
from .harness import (
    PROGRESS_TIMEOUT_S,
    REPO,
    Daemon,
    free_tcp_port,
    pid_alive,
    wait_until,
)

pytestmark = pytest.mark.integration

SERVICES = ("rng", "hasher", "worker", "webui", "redis")


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
