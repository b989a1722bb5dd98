"""`--update-failure-action` through the docker CLI: an update whose new tasks fail
(the process runtime runs `false`, which exits 1) is rolled back to the previous spec,
or paused, and `docker service inspect` shows it as dockerd would."""

from __future__ import annotations

import json
from typing import Any

import pytest

from .harness import Daemon, wait_until

pytestmark = pytest.mark.integration

SLEEP = ("sleep", "1000")
# Short enough for a quick test, long enough for a failing task to be seen in it.
MONITOR = "3s"


def inspect(daemon: Daemon, name: str) -> dict[str, Any]:
    out = json.loads(daemon.docker("service", "inspect", name).stdout)
    assert len(out) == 1, out
    service: dict[str, Any] = out[0]
    return service


def wait_update_state(daemon: Daemon, name: str, state: str) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        service = inspect(daemon, name)
        return service if (service.get("UpdateStatus") or {}).get("State") == state else None

    return wait_until(reached, what=f"{name}'s UpdateStatus.State to be {state}")


def args_of(spec: dict[str, Any]) -> list[str]:
    args: list[str] = spec["TaskTemplate"]["ContainerSpec"]["Args"]
    return args


def test_failed_update_rolls_back_to_the_previous_spec(cluster: Daemon) -> None:
    cluster.create_service(
        "rollsback",
        "--replicas",
        "2",
        "--update-failure-action",
        "rollback",
        "--update-monitor",
        MONITOR,
        "busybox",
        *SLEEP,
    )
    cluster.wait_processes("rollsback", 2, argv=SLEEP)
    cluster.docker("service", "update", "--detach", "--args", "false", "rollsback")

    service = wait_update_state(cluster, "rollsback", "rollback_completed")
    assert args_of(service["Spec"]) == list(SLEEP)
    assert args_of(service["PreviousSpec"]) == ["false"]
    status = service["UpdateStatus"]
    assert status["Message"] == "rollback completed", status
    assert status["StartedAt"] <= status["CompletedAt"], status
    state = cluster.docker(
        "service", "inspect", "--format", "{{.UpdateStatus.State}}", "rollsback"
    ).stdout.strip()
    assert state == "rollback_completed"
    # Back on the old spec: two tasks run `sleep 1000`, the failed one is history.
    cluster.wait_processes("rollsback", 2, argv=SLEEP)
    failed = [t for t in cluster.tasks("rollsback") if t["Status"]["State"] == "failed"]
    assert failed and all(args_of({"TaskTemplate": t["Spec"]}) == ["false"] for t in failed)


def test_failed_update_pauses(cluster: Daemon) -> None:
    cluster.create_service(
        "pauses",
        "--replicas",
        "2",
        "--update-failure-action",
        "pause",
        "--update-monitor",
        MONITOR,
        "busybox",
        *SLEEP,
    )
    cluster.wait_processes("pauses", 2, argv=SLEEP)
    cluster.docker("service", "update", "--detach", "--args", "false", "pauses")

    service = wait_update_state(cluster, "pauses", "paused")
    # Paused, not rolled back: the spec is the new one, and no more slots are updated.
    assert args_of(service["Spec"]) == ["false"]
    assert args_of(service["PreviousSpec"]) == list(SLEEP)
    status = service["UpdateStatus"]
    assert status["Message"].startswith("update paused due to failure"), status
    assert "CompletedAt" not in status, status
    state = cluster.docker(
        "service", "inspect", "--format", "{{.UpdateStatus.State}}", "pauses"
    ).stdout.strip()
    assert state == "paused"
    # The slot the update did not reach still runs the old spec.
    running_old = [
        t
        for t in cluster.tasks("pauses")
        if t["DesiredState"] == "running" and args_of({"TaskTemplate": t["Spec"]}) == list(SLEEP)
    ]
    assert len(running_old) == 1, cluster.tasks("pauses")
