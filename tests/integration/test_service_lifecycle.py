"""A replicated service's life through the docker CLI: create (following the CLI's own
progress display), scale, update, remove, checked against the processes on the host."""

from __future__ import annotations

import re
import subprocess

import pytest

from .harness import PROGRESS_TIMEOUT_S, Daemon, environ, parse_table, pid_alive, wait_until

pytestmark = pytest.mark.integration

SLEEP = ("sleep", "1000")


def ls_row(daemon: Daemon, name: str) -> dict[str, str]:
    rows = [r for r in parse_table(daemon.docker("service", "ls").stdout) if r["NAME"] == name]
    assert len(rows) == 1, rows
    return rows[0]


def host_ps(pids: list[int]) -> dict[int, str]:
    """What `ps` on the host says these processes run."""
    out = subprocess.run(
        ["ps", "-o", "pid=,args=", "-p", ",".join(map(str, pids))],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    rows = {}
    for line in out.splitlines():
        pid, _, args = line.strip().partition(" ")
        rows[int(pid)] = args.strip()
    return rows


def test_create_without_detach_returns_once_converged(cluster: Daemon) -> None:
    result = cluster.docker(
        "service",
        "create",
        "--name",
        "sleeper",
        "--replicas",
        "3",
        "busybox",
        *SLEEP,
        timeout=PROGRESS_TIMEOUT_S,
    )
    service_id = result.stdout.splitlines()[0].strip()
    assert re.fullmatch(r"[0-9a-z]{25}", service_id), result.stdout
    # The CLI's progress display saw every task running, waited out the monitor
    # period, and said so.
    assert "overall progress: 3 out of 3 tasks" in result.stdout, result.stdout
    assert f"verify: Service {service_id} converged" in result.stdout, result.stdout

    row = ls_row(cluster, "sleeper")
    assert row["REPLICAS"] == "3/3", row
    assert row["MODE"] == "replicated", row
    assert row["ID"] == service_id[:12], row
    assert row["IMAGE"].startswith("busybox"), row

    tasks = parse_table(cluster.docker("service", "ps", "sleeper").stdout)
    assert sorted(t["NAME"] for t in tasks) == ["sleeper.1", "sleeper.2", "sleeper.3"], tasks
    for task in tasks:
        assert task["DESIRED STATE"] == "Running", task
        assert task["CURRENT STATE"].startswith("Running"), task
        assert task["NODE"] == cluster.node_name, task

    pids = cluster.wait_processes("sleeper", 3, argv=SLEEP)
    seen_by_ps = host_ps(sorted(pids.values()))
    assert sorted(seen_by_ps) == sorted(pids.values()), seen_by_ps
    assert all(args == "sleep 1000" for args in seen_by_ps.values()), seen_by_ps


def test_scale_up_and_down(cluster: Daemon) -> None:
    cluster.create_service("scaler", "--replicas", "3", "busybox", *SLEEP)
    cluster.wait_processes("scaler", 3, argv=SLEEP)

    result = cluster.docker("service", "scale", "scaler=5", timeout=PROGRESS_TIMEOUT_S)
    assert "scaler scaled to 5" in result.stdout, result.stdout
    assert "verify: Service scaler converged" in result.stdout, result.stdout
    assert ls_row(cluster, "scaler")["REPLICAS"] == "5/5"
    five = cluster.wait_processes("scaler", 5, argv=SLEEP)

    cluster.docker("service", "scale", "--detach", "scaler=2")
    two = cluster.wait_processes("scaler", 2, argv=SLEEP)
    assert set(two.values()) <= set(five.values()), "scaling down must not restart tasks"
    wait_until(lambda: sum(map(pid_alive, five.values())) == 2, what="3 processes to stop")
    wait_until(lambda: ls_row(cluster, "scaler")["REPLICAS"] == "2/2", what="2/2")


def test_update_env_replaces_the_tasks(cluster: Daemon) -> None:
    cluster.create_service("updater", "--replicas", "2", "busybox", *SLEEP)
    old = cluster.wait_processes("updater", 2, argv=SLEEP)

    result = cluster.docker(
        "service", "update", "--env-add", "A=1", "updater", timeout=PROGRESS_TIMEOUT_S
    )
    assert result.stdout.splitlines()[0] == "updater", result.stdout
    assert "verify: Service updater converged" in result.stdout, result.stdout

    spec = cluster.service("updater")["Spec"]["TaskTemplate"]["ContainerSpec"]
    assert "A=1" in spec.get("Env", []), spec

    wait_until(
        lambda: not any(pid_alive(p) for p in old.values()), what="the old processes to stop"
    )
    new = cluster.wait_processes("updater", 2, argv=SLEEP)
    assert not set(new) & set(old), (old, new)
    for pid in new.values():
        assert environ(pid).get("A") == "1", environ(pid)

    tasks = parse_table(cluster.docker("service", "ps", "updater").stdout)
    running = [t for t in tasks if t["DESIRED STATE"] == "Running"]
    shut = [t for t in tasks if t["DESIRED STATE"] == "Shutdown"]
    assert len(running) == 2 and all(t["CURRENT STATE"].startswith("Running") for t in running)
    assert len(shut) == 2 and all(t["CURRENT STATE"].startswith("Shutdown") for t in shut), tasks


def test_rm_leaves_no_process(cluster: Daemon) -> None:
    cluster.create_service("doomed", "--replicas", "3", "busybox", *SLEEP)
    pids = cluster.wait_processes("doomed", 3, argv=SLEEP)
    shims = {t: p for t, p in cluster.shim_pids().items() if t in pids}
    assert len(shims) == 3, shims

    result = cluster.docker("service", "rm", "doomed")
    assert result.stdout.strip() == "doomed"
    assert "doomed" not in cluster.service_names()
    everything = [*pids.values(), *shims.values()]
    wait_until(
        lambda: not any(pid_alive(p) for p in everything),
        what="the tasks' processes and their supervisors to exit",
    )
    ls = parse_table(cluster.docker("service", "ls").stdout)
    assert all(r["NAME"] != "doomed" for r in ls), ls
