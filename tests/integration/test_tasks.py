"""What becomes of tasks: the restart policy on a failing command, a command that
succeeds, a service with no command, and global mode."""

from __future__ import annotations

import pytest

from .harness import PROGRESS_TIMEOUT_S, Daemon, holds_for, parse_table, wait_until

pytestmark = pytest.mark.integration

SLEEP = ("sleep", "1000")


def states(daemon: Daemon, service: str) -> list[str]:
    return sorted(t["Status"]["State"] for t in daemon.tasks(service))


def test_on_failure_restarts_at_most_max_attempts(cluster: Daemon) -> None:
    cluster.create_service(
        "failer",
        "--restart-condition",
        "on-failure",
        "--restart-max-attempts",
        "2",
        "--restart-delay",
        "1s",
        "busybox",
        "sh",
        "-c",
        "exit 3",
    )
    # The first attempt and two restarts, all failed.
    wait_until(
        lambda: states(cluster, "failer") == ["failed"] * 3,
        what="three failed tasks",
    )
    # ...and no fourth attempt: it stays at three tasks, none running.
    holds_for(
        lambda: states(cluster, "failer") == ["failed"] * 3,
        seconds=4,
        what="three failed tasks and no other",
    )
    for task in cluster.tasks("failer"):
        assert task["DesiredState"] == "shutdown", task
        err = task["Status"].get("Err", "")
        assert "exit" in err and "3" in err, task["Status"]

    rows = parse_table(cluster.docker("service", "ps", "--no-trunc", "failer").stdout)
    assert len(rows) == 3, rows
    for row in rows:
        assert row["CURRENT STATE"].startswith("Failed"), row
        assert "exit" in row["ERROR"] and "3" in row["ERROR"], row
    ls = [r for r in parse_table(cluster.docker("service", "ls").stdout) if r["NAME"] == "failer"]
    assert ls and ls[0]["REPLICAS"] == "0/1", ls


def test_successful_command_completes(cluster: Daemon) -> None:
    cluster.create_service(
        "oneshot", "--restart-condition", "none", "busybox", "sh", "-c", "exit 0"
    )
    wait_until(lambda: states(cluster, "oneshot") == ["complete"], what="a complete task")
    holds_for(lambda: states(cluster, "oneshot") == ["complete"], seconds=2)
    (task,) = cluster.tasks("oneshot")
    assert not task["Status"].get("Err"), task["Status"]
    (row,) = parse_table(cluster.docker("service", "ps", "oneshot").stdout)
    assert row["CURRENT STATE"].startswith("Complete"), row


def test_service_without_command_is_rejected(cluster: Daemon) -> None:
    # The process runtime has no image to take a default command from.
    cluster.create_service("nocmd", "busybox")

    def rejected() -> list[dict[str, object]]:
        return [t for t in cluster.tasks("nocmd") if t["Status"]["State"] == "rejected"]

    (task, *_) = wait_until(rejected, what="a rejected task")
    assert task["Status"]["Err"] == (
        "no command given: the process runtime runs the service's command and args "
        "and this service has none"
    ), task["Status"]
    assert not cluster.live_pids([t["ID"] for t in cluster.tasks("nocmd")])


def test_global_mode_runs_one_task_on_the_node(cluster: Daemon) -> None:
    result = cluster.docker(
        "service",
        "create",
        "--name",
        "everywhere",
        "--mode",
        "global",
        "busybox",
        *SLEEP,
        timeout=PROGRESS_TIMEOUT_S,
    )
    service_id = result.stdout.splitlines()[0].strip()
    assert f"verify: Service {service_id} converged" in result.stdout, result.stdout

    pids = cluster.wait_processes("everywhere", 1, argv=SLEEP)
    holds_for(
        lambda: (
            cluster.service_pids("everywhere") == pids and len(cluster.tasks("everywhere")) == 1
        ),
        seconds=2,
        what="exactly one task and one process",
    )
    node_id = cluster.docker("info", "--format", "{{.Swarm.NodeID}}").stdout.strip()
    (task,) = cluster.tasks("everywhere")
    assert task["NodeID"] == node_id, task
    assert "Slot" not in task or not task["Slot"], "global tasks have no slot"

    (row,) = [
        r for r in parse_table(cluster.docker("service", "ls").stdout) if r["NAME"] == "everywhere"
    ]
    assert row["MODE"] == "global", row
    assert row["REPLICAS"] == "1/1", row
    (ps,) = parse_table(cluster.docker("service", "ps", "everywhere").stdout)
    # A global task has no slot: the CLI names it after its node.
    assert ps["NAME"] == f"everywhere.{node_id}", ps
    assert ps["CURRENT STATE"].startswith("Running"), ps
