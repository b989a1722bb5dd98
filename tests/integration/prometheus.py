"""A real Prometheus server (Debian's `prometheus`) for a test: started on loopback with
a config the test writes (its scrape targets), queried over its HTTP API, and removed
with its data dir by its own handle (the process it started, the directory it made),
even when the test fails.
"""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from .harness import free_tcp_port, wait_until

# How often the test's server scrapes its targets: short, so a change shows quickly.
SCRAPE_INTERVAL = "1s"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
PORT_ATTEMPTS = 3
QUERY_TIMEOUT_S = 10.0


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        pytest.fail(
            "Debian's prometheus is not installed: scripts/setup.sh installs it", pytrace=False
        )
    return path


def scrape_config(targets: dict[str, str], job: str = "shoal") -> str:
    """A config scraping `targets` ({node name: host:port}) at SCRAPE_INTERVAL, each
    target labelled with its node's name. JSON is YAML: no YAML writer needed."""
    config = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL},
        "scrape_configs": [
            {
                "job_name": job,
                "metrics_path": "/metrics",
                "static_configs": [
                    {"targets": [addr], "labels": {"node": name}}
                    for name, addr in sorted(targets.items())
                ],
            }
        ],
    }
    return json.dumps(config, indent=2)


class Prometheus:
    """One prometheus process on 127.0.0.1, with its config and data in a directory of
    its own. `start()`, `query()`, `close()` (process, then directory)."""

    def __init__(self, targets: dict[str, str], log_path: Path) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="shoal-prom-", dir="/tmp"))
        self.config = self.root / "prometheus.yml"
        self.config.write_text(scrape_config(targets))
        self.log_path = log_path
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        for attempt in range(PORT_ATTEMPTS):
            self.port = free_tcp_port()
            if self._start():
                return
            if attempt == PORT_ATTEMPTS - 1:
                raise AssertionError("prometheus did not start:\n" + self.log_tail())

    def _start(self) -> bool:
        """True once it answers /-/ready; False if it exited (its port was taken)."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    prometheus_binary(),
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.root / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.root,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                return False
            try:
                if self._get("/-/ready")[0] == 200:
                    return True
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"prometheus not ready in {START_TIMEOUT_S}s:\n" + self.log_tail())

    def _get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=QUERY_TIMEOUT_S)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def api(self, path: str, **params: str) -> Any:
        status, body = self._get(f"/api/v1/{path}?{urllib.parse.urlencode(params)}")
        answer = json.loads(body)
        assert status == 200 and answer["status"] == "success", (status, answer)
        return answer["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's vector: [{"metric": {labels}, "value": [t, "v"]}, ...]."""
        data = self.api("query", query=promql)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def by(self, promql: str, label: str) -> dict[str, float]:
        """An instant vector as {value of `label`: sample value}."""
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(promql)}

    def targets_up(self) -> dict[str, str]:
        """{node label: health} of every active target ("up", "down", "unknown")."""
        data = self.api("targets", state="active")
        return {t["labels"].get("node", ""): t["health"] for t in data["activeTargets"]}

    def wait_up(self, count: int) -> dict[str, str]:
        def all_up() -> dict[str, str] | None:
            up = self.targets_up()
            return up if len(up) == count and set(up.values()) == {"up"} else None

        return wait_until(all_up, what=f"prometheus scraping {count} targets, all up")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        """Stop the process it started (SIGTERM, then SIGKILL) and remove its directory."""
        proc, self.proc = self.proc, None
        try:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
