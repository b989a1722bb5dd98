"""Restarting the daemon loses nothing: after `kill -9` it finds its services again,
adopts the task processes that kept running and replaces the ones that died; after a
graceful stop (SIGTERM, which stops the tasks too) it starts them all again."""

from __future__ import annotations

import os
import re
import signal
import threading

import pytest

from .harness import (
    STOP_TIMEOUT_S,
    DaemonFactory,
    holds_for,
    init_swarm,
    is_command,
    parse_table,
    pid_alive,
    wait_until,
)

pytestmark = pytest.mark.integration

SLEEP = ("sleep", "1000")


def test_kill9_then_restart_adopts_and_converges(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(node_name="phoenix")
    init_swarm(daemon)
    daemon.create_service("keeper", "--replicas", "3", "busybox", *SLEEP)
    before = daemon.wait_processes("keeper", 3, argv=SLEEP)
    shims = {t: p for t, p in daemon.shim_pids().items() if t in before}
    version = daemon.service("keeper")["Version"]["Index"]

    daemon.kill9()
    # The tasks outlive their agent, as containers outlive a killed dockerd.
    assert all(is_command(p, *SLEEP) for p in before.values()), before
    assert all(pid_alive(p) for p in shims.values()), shims

    # One task dies while no daemon is watching.
    victim_task, victim_pid = sorted(before.items())[0]
    os.kill(victim_pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(victim_pid), what="the killed task to die")
    survivors = {t: p for t, p in before.items() if t != victim_task}

    daemon.start()
    rows = [r for r in parse_table(daemon.docker("service", "ls").stdout) if r["NAME"] == "keeper"]
    assert len(rows) == 1, rows
    assert re.search(r"^\s*Swarm: active$", daemon.docker("info").stdout, re.M)
    assert daemon.service("keeper")["Spec"]["Mode"] == {"Replicated": {"Replicas": 3}}
    # Found again as it was: a restart does not rewrite the service.
    assert daemon.service("keeper")["Version"]["Index"] == version

    after = daemon.wait_processes("keeper", 3, argv=SLEEP)
    # The survivors were adopted: same tasks, same processes, not restarted.
    for task_id, pid in survivors.items():
        assert after.get(task_id) == pid, (survivors, after)
    # The dead one was replaced by a new task with a new process.
    assert victim_task not in after, after
    (replacement,) = set(after) - set(survivors)
    assert after[replacement] not in before.values()
    (victim,) = [t for t in daemon.tasks("keeper") if t["ID"] == victim_task]
    # Found dead by the restarted agent: failed with the SIGKILL's status, shut down.
    assert (victim["DesiredState"], victim["Status"]["State"]) == ("shutdown", "failed"), victim
    assert victim["Status"]["Err"] == "task: non-zero exit (137)", victim

    # And it stays that way: no duplicate copies started next to the adopted ones.
    holds_for(
        lambda: daemon.service_pids("keeper") == after, seconds=2, what="the same 3 processes"
    )
    wait_until(
        lambda: any(
            r["NAME"] == "keeper" and r["REPLICAS"] == "3/3"
            for r in parse_table(daemon.docker("service", "ls").stdout)
        ),
        what="3/3 in service ls",
    )
    (node,) = parse_table(daemon.docker("node", "ls").stdout)
    assert node["STATUS"] == "Ready" and node["MANAGER STATUS"] == "Leader", node


def test_sigterm_stops_the_tasks_and_a_restart_brings_them_back(
    daemon_factory: DaemonFactory,
) -> None:
    daemon = daemon_factory(node_name="lazarus")
    init_swarm(daemon)
    daemon.create_service("sleepy", "--replicas", "2", "busybox", *SLEEP)
    before = daemon.wait_processes("sleepy", 2, argv=SLEEP)
    service_id = daemon.service("sleepy")["ID"]

    code = daemon.stop()
    assert code is not None, "the daemon did not stop on SIGTERM in time"
    # A graceful stop stops the tasks' processes too.
    assert not any(pid_alive(p) for p in before.values()), before

    daemon.start()
    assert daemon.service("sleepy")["ID"] == service_id
    after = daemon.wait_processes("sleepy", 2, argv=SLEEP)
    assert not set(after.values()) & set(before.values())
    (node,) = parse_table(daemon.docker("node", "ls").stdout)
    assert node["STATUS"] == "Ready", node


def test_sigterm_is_graceful_after_a_log_follower_left(daemon_factory: DaemonFactory) -> None:
    """A `docker service logs -f` that went away must not hold the daemon up: the stream
    of a quiet service ends when its client disconnects, not at the next line."""
    daemon = daemon_factory(node_name="quiet")
    init_swarm(daemon)
    daemon.create_service("quiet", "busybox", "sh", "-c", "echo hello; exec sleep 1000")
    (pid,) = daemon.wait_processes("quiet", 1, argv=SLEEP).values()

    lines: list[str] = []
    with daemon.docker_popen("service", "logs", "-f", "--raw", "quiet") as follower:
        assert follower.stdout is not None
        reader = threading.Thread(target=lambda: lines.extend(follower.stdout or []), daemon=True)
        reader.start()
        try:
            wait_until(lambda: any("hello" in line for line in lines), what="the followed line")
        finally:
            follower.terminate()
            follower.wait(timeout=10)
            reader.join(timeout=10)

    code = daemon.stop()
    assert code is not None, (
        f"the daemon did not stop within {STOP_TIMEOUT_S}s of SIGTERM after a log follower "
        "disconnected (it had to be killed)"
    )
    assert not pid_alive(pid), "a graceful stop stops the tasks"
