"""Health checks of process tasks through the real docker CLI (`--health-cmd` and the
rest): a task is RUNNING only once its check passes; one that turns unhealthy is
stopped and fails with Swarm's message, and its restart policy replaces it; the check
runs in the task's namespaces (its hostname, its network address)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import Daemon, holds_for, parse_table, pid_alive, wait_until

pytestmark = pytest.mark.integration

FAST = ("--health-interval", "200ms", "--health-timeout", "2s")


@pytest.fixture
def flag() -> Iterator[Path]:
    """A file on the host the health command looks for (the process runtime shares
    the host's filesystem)."""
    path = Path(f"/tmp/shoal-health-{uuid.uuid4().hex[:10]}")
    yield path
    path.unlink(missing_ok=True)


def states(d: Daemon, service: str) -> list[str]:
    return sorted(t["Status"]["State"] for t in d.tasks(service))


def test_running_only_once_healthy_then_unhealthy_fails_and_is_replaced(
    cluster: Daemon, flag: Path
) -> None:
    cluster.create_service(
        "hc",
        "--health-cmd",
        f"test -e {flag}",
        *FAST,
        "--health-retries",
        "2",
        "--health-start-period",
        "60s",
        "--restart-delay",
        "100ms",
        "busybox",
        "sleep",
        "1000",
    )
    # never healthy yet, failures in the start period not counted: the task stays
    # STARTING (as Swarm's, until the check passes)
    wait_until(lambda: states(cluster, "hc") == ["starting"], what="a starting task")
    holds_for(lambda: states(cluster, "hc") == ["starting"], seconds=1.5)
    flag.touch()
    wait_until(lambda: states(cluster, "hc") == ["running"], what="the task running")
    (first,) = cluster.tasks("hc")

    # the check fails twice in a row: stopped (SIGTERM: 143) and failed; a new task
    flag.unlink()

    def failed() -> list[dict[str, Any]]:
        return [
            t
            for t in cluster.tasks("hc")
            if t["ID"] == first["ID"] and t["Status"]["State"] == "failed"
        ]

    (gone,) = wait_until(failed, what="the unhealthy task failed")
    assert gone["Status"]["Err"] == "task: non-zero exit (143): unhealthy container"
    assert gone["DesiredState"] == "shutdown"
    flag.touch()
    wait_until(
        lambda: (
            [t["Status"]["State"] for t in cluster.tasks("hc") if t["ID"] != first["ID"]]
            == ["running"]
        ),
        what="a replacement running",
    )
    rows = parse_table(cluster.docker("service", "ps", "--no-trunc", "hc").stdout)
    failed_rows = [r for r in rows if r["CURRENT STATE"].startswith("Failed")]
    assert failed_rows and failed_rows[0]["ERROR"] == (
        '"task: non-zero exit (143): unhealthy container"'
    ), failed_rows


def test_no_healthcheck_and_inspect(cluster: Daemon) -> None:
    cluster.create_service("nohc", "--no-healthcheck", "busybox", "sleep", "1000")
    wait_until(lambda: states(cluster, "nohc") == ["running"], what="running at once")
    out = cluster.docker(
        "service",
        "inspect",
        "--format",
        "{{json .Spec.TaskTemplate.ContainerSpec.Healthcheck}}",
        "nohc",
    ).stdout.strip()
    assert out == '{"Test":["NONE"]}', out


@pytest.mark.skipif(os.geteuid() != 0, reason="tasks get namespaces of their own as root only")
def test_the_check_runs_in_the_tasks_namespaces(cluster: Daemon) -> None:
    net = f"hcnet{uuid.uuid4().hex[:6]}"
    cluster.docker("network", "create", "--driver", "overlay", net)
    try:
        # passes only inside the task's UTS namespace (its hostname is the task ID's
        # first 12, the agent's is not) and network namespace (its overlay address)
        me = os.uname().nodename
        check = (
            f'[ "$(hostname)" = "$HOSTNAME" ] && [ "$(hostname)" != "{me}" ]'
            ' && ip -o addr | grep -q "inet 10\\."'
        )
        cluster.create_service(
            "hcns",
            "--network",
            net,
            "--health-cmd",
            check,
            *FAST,
            "busybox",
            "sleep",
            "1000",
        )
        wait_until(
            lambda: "running" in states(cluster, "hcns"),
            what="healthy in its ns",
        )
    finally:
        cluster.docker("service", "rm", "hcns", check=False)
        wait_until(lambda: not cluster.tasks("hcns"), timeout=30, what="tasks gone")
        cluster.docker("network", "rm", net, check=False)


def test_the_check_runs_in_the_tasks_cgroup(cluster: Daemon, flag: Path) -> None:
    # the check records its own cgroup; the task process's is in /proc
    cluster.create_service(
        "hccg", "--health-cmd", f"cat /proc/self/cgroup > {flag}", *FAST,
        "busybox", "sleep", "1000",
    )  # fmt: skip
    wait_until(lambda: states(cluster, "hccg") == ["running"], what="healthy")
    (task,) = cluster.tasks("hccg")
    pid = task["Status"]["ContainerStatus"]["PID"]
    own = Path(f"/proc/{pid}/cgroup").read_text()
    assert "shoal" in own, own  # the task has cgroups of its own (cgroups.py)
    wait_until(lambda: flag.exists() and flag.read_text() == own, what="the probe's cgroup")


def test_a_task_waiting_to_be_healthy_is_stopped_at_once_when_removed(cluster: Daemon) -> None:
    cluster.create_service(
        "hcwait", "--health-cmd", "false", *FAST, "--health-start-period", "300s",
        "busybox", "sleep", "1000",
    )  # fmt: skip
    wait_until(lambda: states(cluster, "hcwait") == ["starting"], what="a starting task")
    (task,) = cluster.tasks("hcwait")
    pid_file = cluster.data_dir / "agent" / "tasks" / task["ID"] / "pid"
    pid = int(wait_until(lambda: pid_file.exists() and pid_file.read_text(), what="its pid"))
    assert pid_alive(pid)
    cluster.docker("service", "rm", "hcwait")
    # not after its start period: the start is cut short and the process stopped
    wait_until(lambda: not pid_alive(pid), timeout=20, what="the task's process gone")
    wait_until(lambda: not cluster.tasks("hcwait"), timeout=20, what="the task gone")
