"""A task held back (desired READY) survives a daemon that dies while it waits: what it
waits for is read back from the store at start-up, and its timer re-armed.

- a restart delay: the replacement of a task that failed starts the delay after the
  failure, even across a `kill -9` of the daemon in between;
- a stop-first update: the new task starts once the old one has stopped, and the
  update completes, even when the daemon was killed while it waited.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from .harness import (
    Daemon,
    DaemonFactory,
    holds_for,
    init_swarm,
    parse_table,
    pid_alive,
    wait_until,
)

pytestmark = pytest.mark.integration

RESTART_DELAY_S = 15
SLEEP = ("sleep", "7799")
# The old task of the update ignores SIGTERM: it stops only when the grace period ends.
STOP_GRACE_S = 10
STUBBORN = ("sh", "-c", 'trap "" TERM; echo armed; while :; do sleep 1; done')
# Room for the CLI and the agent's status report on top of a wait that is due.
SLACK_S = 5.0
# How long the daemon stays dead: the replacement is due well within the delay after
# its restart, so the test measures a re-armed timer, not a lucky fast start.
DOWN_S = 3.0


def replicas(daemon: Daemon, name: str) -> str:
    rows = [r for r in parse_table(daemon.docker("service", "ls").stdout) if r["NAME"] == name]
    return rows[0]["REPLICAS"] if rows else ""


def held(daemon: Daemon, name: str) -> list[dict[str, Any]]:
    return [t for t in daemon.tasks(name) if t["DesiredState"] == "ready"]


def test_restart_delay_survives_kill9_of_the_daemon(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(node_name="patient")
    init_swarm(daemon)
    daemon.create_service("rd", "--restart-delay", f"{RESTART_DELAY_S}s", "busybox", *SLEEP)
    (first,) = daemon.wait_processes("rd", 1, argv=SLEEP).values()

    os.kill(first, signal.SIGKILL)
    killed_at = time.monotonic()
    (replacement,) = wait_until(lambda: held(daemon, "rd"), what="a replacement held ready")
    daemon.kill9()
    time.sleep(DOWN_S)
    daemon.start()
    restarted_at = time.monotonic()
    # The restarted daemon lists it once its manager has loaded the store and answers.
    (row,) = wait_until(
        lambda: [
            r
            for r in parse_table(daemon.docker("service", "ps", "rd").stdout)
            if r["ID"] == replacement["ID"][:12]
        ],
        what="the held replacement listed after the restart",
    )
    assert row["DESIRED STATE"] == "Ready", row

    wait_until(
        lambda: replicas(daemon, "rd") == "1/1",
        timeout=RESTART_DELAY_S,
        what="rd 1/1 within the restart delay after the daemon came back",
    )
    back_at = time.monotonic()
    # The delay was kept, not skipped: counted from the failure, not from the restart.
    assert back_at - killed_at >= RESTART_DELAY_S - 1, back_at - killed_at
    after = daemon.wait_processes("rd", 1, argv=SLEEP)
    assert list(after) == [replacement["ID"]], (after, replacement["ID"])
    print(
        f"rd: restarted {restarted_at - killed_at:.1f}s after the failure, "
        f"1/1 at {back_at - killed_at:.1f}s ({back_at - restarted_at:.1f}s after the restart)"
    )


def test_stop_first_update_survives_kill9_of_the_daemon(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(node_name="steadfast")
    init_swarm(daemon)
    daemon.create_service(
        "upd",
        "--stop-grace-period",
        f"{STOP_GRACE_S}s",
        "--update-monitor",
        "1s",
        "busybox",
        *STUBBORN,
    )
    (old_task, old_pid) = next(iter(daemon.wait_processes("upd", 1).items()))
    wait_until(
        lambda: "armed" in daemon.docker("service", "logs", "--raw", "upd").stdout,
        what="the old task's trap to be set",
    )

    daemon.docker("service", "update", "--detach", "--env-add", "V=2", "upd")
    (new,) = wait_until(lambda: held(daemon, "upd"), what="the new task held ready")
    # The old task ignores SIGTERM: the new one waits for its grace period to end.
    assert pid_alive(old_pid)
    daemon.kill9()
    daemon.start()
    restarted_at = time.monotonic()
    assert [t["ID"] for t in held(daemon, "upd")] == [new["ID"]]

    def updated() -> bool:
        service = daemon.service("upd")
        state = (service.get("UpdateStatus") or {}).get("State")
        return replicas(daemon, "upd") == "1/1" and state == "completed"

    wait_until(
        updated,
        timeout=STOP_GRACE_S + SLACK_S,
        what="upd 1/1 with its update completed after the daemon came back",
    )
    back_at = time.monotonic()
    assert not pid_alive(old_pid)
    (new_pid,) = daemon.wait_processes("upd", 1).values()
    assert daemon.live_pids() == {new["ID"]: new_pid}, old_task
    holds_for(lambda: replicas(daemon, "upd") == "1/1", seconds=2, what="upd 1/1")
    print(f"upd: 1/1 and completed {back_at - restarted_at:.1f}s after the restart")
