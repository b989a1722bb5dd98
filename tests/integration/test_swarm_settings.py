"""Cluster settings as `docker swarm init` and `docker swarm update` set them, through
the docker CLI: shown by `docker info` and `GET /swarm`, and acted on (the task history
limit by the reaper, the certificate expiry by the CA); what SwarmKit refuses, refused
with its words."""

from __future__ import annotations

import datetime
import re
from typing import Any

import pytest
from cryptography import x509

from .harness import Daemon, DaemonFactory, swarm_init_args, wait_until

pytestmark = pytest.mark.integration

NODE_CERT = "swarm/certificates/swarm-node.crt"
BACKDATE = datetime.timedelta(hours=1)


@pytest.fixture(scope="module")
def daemon(daemon_factory: DaemonFactory) -> Daemon:
    d = daemon_factory(node_name="shoal-settings")
    d.docker(
        *swarm_init_args(),
        "--task-history-limit",
        "3",
        "--cert-expiry",
        "2h",
        "--dispatcher-heartbeat",
        "2s",
        "--snapshot-interval",
        "500",
        "--max-snapshots",
        "2",
    )
    return d


def info_lines(daemon: Daemon) -> str:
    out = daemon.docker("info").stdout
    return out[out.index("Orchestration:") : out.index("Autolock Managers")]


def cert_life(daemon: Daemon) -> datetime.timedelta:
    cert = x509.load_pem_x509_certificates((daemon.data_dir / NODE_CERT).read_bytes())[0]
    return cert.not_valid_after_utc - cert.not_valid_before_utc - BACKDATE


def test_init_flags_are_the_clusters_settings(daemon: Daemon) -> None:
    info = info_lines(daemon)
    for line in (
        "Task History Retention Limit: 3",
        "Snapshot Interval: 500",
        "Number of Old Snapshots to Retain: 2",
        # what init was not given keeps SwarmKit's default (zero means "default")
        "Heartbeat Tick: 1",
        "Election Tick: 10",
        "Heartbeat Period: 2 seconds",
        "Expiry Duration: 2 hours",
    ):
        assert re.search(rf"^\s*{line}$", info, re.M), info
    # the manager's own certificate, made at init, has that life
    assert cert_life(daemon) == datetime.timedelta(hours=2)


def test_update_changes_them_and_swarm_inspect_shows_them(daemon: Daemon) -> None:
    daemon.docker(
        "swarm",
        "update",
        "--snapshot-interval",
        "700",
        "--max-snapshots",
        "4",
        "--dispatcher-heartbeat",
        "3s",
        "--cert-expiry",
        "5h",
    )
    spec: dict[str, Any] = daemon.api.inspect_swarm()["Spec"]
    assert spec["Raft"]["SnapshotInterval"] == 700
    assert spec["Raft"]["KeepOldSnapshots"] == 4
    assert spec["Dispatcher"]["HeartbeatPeriod"] == 3_000_000_000
    assert spec["CAConfig"]["NodeCertExpiry"] == 5 * 3600 * 10**9
    assert "Heartbeat Period: 3 seconds" in info_lines(daemon)
    # new certificates get the new expiry: a rotation re-issues every one
    daemon.docker("swarm", "ca", "--rotate", "--quiet")
    wait_until(lambda: cert_life(daemon) == datetime.timedelta(hours=5), what="5 h cert")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--external-ca", "protocol=cfssl,url=https://ca.example:8888"],
            "rpc error: code = InvalidArgument desc = external CAs are not supported",
        ),
        (
            ["--cert-expiry", "30m"],
            "rpc error: code = InvalidArgument desc = minimum certificate expiry time is: 1h0m0s",
        ),
    ],
)
def test_what_swarmkit_refuses_is_refused(daemon: Daemon, flags: list[str], message: str) -> None:
    before = daemon.api.inspect_swarm()["Version"]["Index"]
    result = daemon.docker("swarm", "update", *flags, check=False)
    assert result.returncode != 0
    assert f"Error response from daemon: {message}" in result.stderr, result.stderr
    assert daemon.api.inspect_swarm()["Version"]["Index"] == before


def test_the_task_history_limit_is_enforced(daemon: Daemon) -> None:
    daemon.docker("swarm", "update", "--task-history-limit", "2")
    daemon.docker(
        "service",
        "create",
        "--detach",
        "--name",
        "hist",
        "--update-monitor",
        "100ms",
        "busybox",
        "sleep",
        "1000",
    )

    def slot_tasks() -> list[dict[str, Any]]:
        return [t for t in daemon.api.tasks(filters={"service": "hist"})]

    def newest_runs(n_updates: int) -> bool:
        tasks = slot_tasks()
        svc = daemon.api.inspect_service("hist")
        running = [t for t in tasks if t["Status"]["State"] == "running"]
        # the update is over (its status written) so the next one is not out of sequence
        done = n_updates == 0 or (svc.get("UpdateStatus") or {}).get("State") == "completed"
        return (
            done
            and len(running) == 1
            and running[0]["Spec"].get("ForceUpdate", 0) == n_updates
            and svc["Spec"]["TaskTemplate"].get("ForceUpdate", 0) == n_updates
        )

    wait_until(lambda: newest_runs(0), what="first task running")
    for i in range(1, 5):
        daemon.docker("service", "update", "--detach", "--force", "hist")
        wait_until(lambda i=i: newest_runs(i), what=f"task of update {i} running")
    # SwarmKit counts the running task: two tasks in the slot, the older shut down
    wait_until(lambda: len(slot_tasks()) == 2, what="two tasks left in the slot")
    rows = daemon.docker("service", "ps", "-q", "hist").stdout.split()
    assert len(rows) == 2, rows
    daemon.docker("service", "rm", "hist")
    wait_until(lambda: not daemon.live_pids(), what="no task process left")
