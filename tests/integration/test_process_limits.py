"""Process tasks confined as containers are: each in its own cgroups under the daemon's,
with the service's memory, CPU and pids limits, no_new_privs, its own session and user.

Real daemon, real processes, real cgroups (the tests are skipped where this process
cannot make cgroups: not root, no cgroup hierarchy). Every cgroup a task had is read
from the task's own record (spec.json) while it exists, and the module checks at its
end that every one of them is gone.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.agent.executor import cgroups

from .harness import Daemon, DaemonFactory, init_swarm, parse_table, pid_alive, wait_until

LAYOUT = cgroups.current()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(LAYOUT is None, reason="needs root and a cgroup hierarchy"),
]

# Every cgroup directory a task of this module was given.
SEEN: set[str] = set()

# --limit-cpu 0.2 allows 20% of one CPU; a generous bound for what is measured.
CPU_LIMIT = "0.2"
CPU_BOUND = 0.35
CPU_WINDOW_S = 2.0
PIDS_LIMIT = 16


@pytest.fixture(scope="module")
def swarm(daemon_factory: DaemonFactory) -> Iterator[Daemon]:
    daemon = daemon_factory(node_name="confined")
    init_swarm(daemon)
    yield daemon
    daemon.stop()
    left = sorted(d for d in SEEN if os.path.exists(d))
    assert not left, f"cgroups left behind: {left}"


def record_of(daemon: Daemon, task_id: str) -> dict[str, Any]:
    """The task's cgroups as its spec.json records them (remembered in SEEN)."""
    for task_dir in daemon.task_dirs():
        if task_dir.name == task_id:
            record = json.loads((task_dir / "spec.json").read_bytes())["cgroups"]
            SEEN.update(cgroups.dirs_of(record))
            return record
    raise AssertionError(f"no task directory for {task_id}")


def dir_with(record: dict[str, Any], name: str) -> Path:
    """The recorded cgroup directory that has control file `name`."""
    for d in cgroups.dirs_of(record):
        if (Path(d) / name).exists():
            return Path(d)
    raise AssertionError(f"no cgroup with {name} in {record}")


def one_task(daemon: Daemon, service: str, state: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        tasks = [t for t in daemon.tasks(service) if t["Status"]["State"] == state]
        return tasks[0] if tasks else None

    return wait_until(found, what=f"a {state} task of {service}")


def running(daemon: Daemon, service: str) -> tuple[str, int, dict[str, Any]]:
    """(task id, pid, cgroup record) of the service's one running task."""
    pids = daemon.wait_processes(service, 1)
    task_id, pid = next(iter(pids.items()))
    return task_id, pid, record_of(daemon, task_id)


def gone(record: dict[str, Any]) -> bool:
    return not any(os.path.exists(d) for d in cgroups.dirs_of(record))


def test_over_the_memory_limit_is_oom_killed_as_docker_reports_it(swarm: Daemon) -> None:
    swarm.create_service(
        "hog",
        "--restart-condition", "none",
        "--limit-memory", "32m",
        "busybox", "python3", "-c", "b = b'x' * (100 * 1024 * 1024); print(len(b))",
    )  # fmt: skip
    task = one_task(swarm, "hog", "failed")
    assert task["Status"]["Err"] == "task: non-zero exit (137)", task["Status"]
    assert task["Status"]["ContainerStatus"]["ExitCode"] == 137
    rows = parse_table(swarm.docker("service", "ps", "--no-trunc", "hog").stdout)
    assert rows[0]["ERROR"] == '"task: non-zero exit (137)"', rows
    assert rows[0]["CURRENT STATE"].startswith("Failed"), rows
    record = record_of(swarm, task["ID"])
    assert gone(record), record  # removed by the shim when the task ended
    exit_record = json.loads(
        next(d for d in swarm.task_dirs() if d.name == task["ID"])
        .joinpath("exit.json")
        .read_bytes()
    )
    assert exit_record["oom_killed"] is True, exit_record
    swarm.docker("service", "rm", "hog")


def test_cpu_limit_caps_a_busy_loop(swarm: Daemon) -> None:
    swarm.create_service(
        "spinner", "--limit-cpu", CPU_LIMIT, "busybox", "python3", "-c", "while True: pass"
    )
    _task_id, pid, record = running(swarm, "spinner")
    cpu = dir_with(record, "cpu.cfs_quota_us")
    assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "20000"
    assert (cpu / "cpu.cfs_period_us").read_text().strip() == "100000"
    usage = dir_with(record, "cpuacct.usage") / "cpuacct.usage"
    assert str(pid) in (usage.parent / "cgroup.procs").read_text().split()
    before_ns, start = int(usage.read_text()), time.monotonic()
    time.sleep(CPU_WINDOW_S)
    used_ns, elapsed = int(usage.read_text()) - before_ns, time.monotonic() - start
    share = used_ns / 1e9 / elapsed
    assert 0.0 < share < CPU_BOUND, f"{share:.2f} of a CPU"
    swarm.docker("service", "rm", "spinner")
    wait_until(lambda: gone(record) and not pid_alive(pid), what="the task and its cgroup gone")


FORK_BURST = """
import os, time
children, failed = 0, 0
for _ in range(64):
    try:
        if os.fork() == 0:
            time.sleep(1000)
            os._exit(0)
        children += 1
    except BlockingIOError:
        failed += 1
print(f"children={children} failed={failed}", flush=True)
time.sleep(1000)
"""


def test_pids_limit_contains_a_fork_burst(swarm: Daemon) -> None:
    swarm.create_service(
        "forker", "--limit-pids", str(PIDS_LIMIT), "busybox", "python3", "-c", FORK_BURST
    )
    _task_id, pid, record = running(swarm, "forker")
    pids = dir_with(record, "pids.max")
    assert (pids / "pids.max").read_text().strip() == str(PIDS_LIMIT)
    line = wait_until(
        lambda: swarm.docker("service", "logs", "--raw", "forker").stdout.strip(),
        what="the burst's report",
    )
    assert line == f"children={PIDS_LIMIT - 1} failed={64 - PIDS_LIMIT + 1}", line
    assert int((pids / "pids.current").read_text()) == PIDS_LIMIT
    members = cgroups.pids_in(record)
    swarm.docker("service", "rm", "forker")
    wait_until(
        lambda: gone(record) and not any(pid_alive(p) for p in members),
        what="every process of the burst and the cgroup gone",
    )


def test_no_new_privs_own_session_and_user(swarm: Daemon) -> None:
    assert swarm.proc is not None
    daemon_pid = swarm.proc.pid
    script = (
        f"kill -0 {daemon_pid} 2>/dev/null && echo signal-daemon=yes || echo signal-daemon=no; "
        f"cat /proc/{daemon_pid}/environ >/dev/null 2>&1 && echo environ=yes || echo environ=no; "
        "exec sleep 1000"
    )
    swarm.create_service("nobody", "--user", "65534:65534", "busybox", "sh", "-c", script)
    _task_id, pid, record = running(swarm, "nobody")
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Uid"].split()[:2] == ["65534", "65534"]
    assert status["Gid"].split()[:2] == ["65534", "65534"]
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    assert int(stat[3]) == pid, "the task leads its own session"
    logs = wait_until(
        lambda: (
            (out := swarm.docker("service", "logs", "--raw", "nobody").stdout).count("=") >= 2
            and out
        ),
        what="the task's report",
    )
    assert logs.split() == ["signal-daemon=no", "environ=no"], logs
    swarm.docker("service", "rm", "nobody")
    wait_until(lambda: gone(record), what="the cgroup gone")


def test_cgroups_survive_kill9_and_go_with_the_task(swarm: Daemon) -> None:
    """After kill -9 the tasks keep running in their cgroups; a restarted daemon adopts
    them, and removes the cgroups by its record, even of a task whose shim died."""
    swarm.create_service("kept", "--limit-memory", "64m", "busybox", "sleep", "1000")
    kept_id, kept_pid, kept_record = running(swarm, "kept")
    swarm.create_service("orphan", "--limit-pids", "8", "busybox", "sleep", "1000")
    orphan_id, orphan_pid, orphan_record = running(swarm, "orphan")
    shim_pid = swarm.shim_pids()[orphan_id]

    swarm.kill9()
    os.kill(shim_pid, signal.SIGKILL)  # the orphan's process lives on in its cgroup
    wait_until(lambda: not pid_alive(shim_pid), what="the shim to die")
    assert pid_alive(kept_pid) and pid_alive(orphan_pid)
    assert not gone(kept_record) and not gone(orphan_record)

    swarm.start()
    assert swarm.wait_processes("kept", 1) == {kept_id: kept_pid}
    swarm.docker("service", "rm", "kept", "orphan")
    wait_until(
        lambda: gone(kept_record) and gone(orphan_record),
        what="both tasks' cgroups gone",
    )
    wait_until(lambda: not pid_alive(kept_pid) and not pid_alive(orphan_pid), what="both gone")


def task_dir_of(daemon: Daemon, task_id: str) -> Path:
    return next(d for d in daemon.task_dirs() if d.name == task_id)


def test_a_root_task_sees_and_signals_only_its_own_processes(swarm: Daemon) -> None:
    """A task running as root (no --user) is in a pid namespace of its own: the daemon
    and another task's processes have no pid it can name, so `kill -9` fails and
    they live on; its /proc (and ps) lists only its own processes, under its init."""
    assert swarm.proc is not None
    daemon_pid = swarm.proc.pid
    swarm.create_service("victim", "busybox", "sleep", "1000")
    victim_id, victim_pid, _ = running(swarm, "victim")
    victim_shim = swarm.shim_pids()[victim_id]
    script = (
        "kill -9 $DAEMON_PID 2>/dev/null && echo daemon=killed || echo daemon=refused; "
        "kill -9 $VICTIM_PID 2>/dev/null && echo victim=killed || echo victim=refused; "
        "kill -9 $VICTIM_SHIM 2>/dev/null && echo shim=killed || echo shim=refused; "
        "kill -9 1; "  # the namespace's init: the kernel drops it
        # The shell's own glob: no process forked to list /proc.
        'cd /proc && set -- [0-9]* && IFS=, && echo "self=$$ procs=$*" && unset IFS && cd /; '
        'echo "init=$(cat /proc/1/comm)"; '
        "echo \"ps=$(ps -e -o comm= | tr '\\n' ,)\"; "
        "exec sleep 1000"
    )
    swarm.create_service(
        "attacker",
        "--env", f"DAEMON_PID={daemon_pid}",
        "--env", f"VICTIM_PID={victim_pid}",
        "--env", f"VICTIM_SHIM={victim_shim}",
        "busybox", "sh", "-c", script,
    )  # fmt: skip
    _attacker_id, attacker_pid, _ = running(swarm, "attacker")
    logs = wait_until(
        lambda: (
            "ps=" in (out := swarm.docker("service", "logs", "--raw", "attacker").stdout) and out
        ),
        what="the attacker's report",
    )
    report = dict(word.split("=", 1) for word in logs.split() if "=" in word)
    assert report["daemon"] == "refused", logs
    assert report["victim"] == "refused", logs
    assert report["shim"] == "refused", logs
    # PID 1 is the init, the task PID 2: /proc holds them alone.
    assert report["self"] == "2" and report["procs"] == "1,2", logs
    assert report["init"] == "shoal-init", logs
    # ps: the init, the task, and the pipeline that runs ps (no victim's sleep).
    seen = report["ps"].strip(",").split(",")
    assert seen[:2] == ["shoal-init", "sh"] and "sleep" not in seen, logs
    assert swarm.running, "the daemon lives on"
    assert pid_alive(daemon_pid) and pid_alive(victim_pid) and pid_alive(victim_shim)
    assert swarm.wait_processes("victim", 1) == {victim_id: victim_pid}
    # The pid the shim reports is the task's host pid (nsenter -t works), in a pid
    # namespace and a mount namespace that are not the host's.
    for ns in ("pid", "mnt"):
        assert os.readlink(f"/proc/{attacker_pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}")
    swarm.docker("service", "rm", "victim", "attacker")
    wait_until(lambda: not pid_alive(victim_pid) and not pid_alive(attacker_pid), what="both gone")


def test_stop_signal_ends_the_task_not_a_kill_after_the_grace_period(swarm: Daemon) -> None:
    """The task is not PID 1 of its namespace: a plain `sleep` dies of the stop signal
    (SIGTERM, or --stop-signal) as it would on the host, and is never killed after a
    grace period (here ten minutes: the test would time out waiting for that)."""
    swarm.create_service("termed", "--stop-grace-period", "10m", "busybox", "sleep", "1000")
    swarm.create_service(
        "inted",
        "--stop-grace-period", "10m",
        "--stop-signal", "SIGINT",
        "busybox", "sleep", "1000",
    )  # fmt: skip
    started = {name: running(swarm, name)[:2] for name in ("termed", "inted")}
    swarm.docker("service", "scale", "--detach", "termed=0", "inted=0")
    for name, signum in (("termed", signal.SIGTERM), ("inted", signal.SIGINT)):
        task_id, pid = started[name]
        assert_ended_by(swarm, name, task_id, pid, signum)
    swarm.docker("service", "rm", "termed", "inted")


def assert_ended_by(swarm: Daemon, name: str, task_id: str, pid: int, signum: int) -> None:
    """The task's process is gone, killed by `signum`, as its shim's record says."""
    wait_until(lambda: not pid_alive(pid), what=f"{name}'s task gone")
    exit_file = task_dir_of(swarm, task_id) / "exit.json"
    record = json.loads(wait_until(lambda: exit_file.exists() and exit_file.read_bytes()))
    assert record == {"exit_code": 128 + signum, "signal": signum}, (name, record)


def test_exit_codes_propagate_from_the_pid_namespace(swarm: Daemon) -> None:
    swarm.create_service("three", "--restart-condition", "none", "busybox", "sh", "-c", "exit 3")
    swarm.create_service(
        "killed", "--restart-condition", "none", "busybox", "sh", "-c", "kill -KILL $$"
    )
    three = one_task(swarm, "three", "failed")
    assert three["Status"]["Err"] == "task: non-zero exit (3)", three["Status"]
    killed = one_task(swarm, "killed", "failed")
    assert killed["Status"]["ContainerStatus"]["ExitCode"] == 137, killed["Status"]
    record = json.loads((task_dir_of(swarm, killed["ID"]) / "exit.json").read_bytes())
    assert record == {"exit_code": 137, "signal": 9}, record
    swarm.docker("service", "rm", "three", "killed")
