"""Jobs through the docker CLI (`--mode replicated-job`), checked against what the
task processes themselves recorded on the host:

- 5 completions with `--max-concurrent 2` run exactly 5 times, never more than 2 at
  once; the CLI's progress display returns when the job is complete; `service ls`
  shows `0/2 (5/5 completed)` and `inspect` the JobStatus, as dockerd does; a task that
  exited 0 is never restarted;
- `service update --force` runs the job again: a new JobIteration, 5 more runs;
- a failing task follows the restart policy, then its slot stays failed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .harness import PROGRESS_TIMEOUT_S, Daemon, holds_for, parse_table, wait_until

pytestmark = pytest.mark.integration

RUN_S = 1  # how long each run of the job lasts
QUIET_S = 3.0  # how long nothing more may happen once the job is complete


def job_command(log: Path) -> list[str]:
    """A task that records its start and end (its task ID, which the `--env` template
    gives it, and nanoseconds) in `log`: not its pid, which is 2 in the pid namespace
    every process task has."""
    h = "$T"
    script = f'echo "start {h} $(date +%s%N)" >> {log}; sleep {RUN_S}; echo "end {h} $(date +%s%N)" >> {log}'
    return ["--env", "T={{.Task.ID}}", "busybox", "sh", "-c", script]


def runs(log: Path) -> dict[str, tuple[int, int | None]]:
    """{task id: (start ns, end ns or None)} as the task processes recorded them."""
    out: dict[str, tuple[int, int | None]] = {}
    if not log.exists():
        return out
    for line in log.read_text().splitlines():
        what, task, at = line.split()
        if what == "start":
            out[task] = (int(at), None)
        else:
            out[task] = (out[task][0], int(at))
    return out


def most_at_once(recorded: dict[str, tuple[int, int | None]]) -> int:
    events = sorted(
        [(start, 1) for start, _ in recorded.values()]
        + [(end, -1) for _, end in recorded.values() if end is not None]
    )
    most = now = 0
    for _, delta in events:  # an end sorts before a start at the same instant
        now += delta
        most = max(most, now)
    return most


def ls_row(daemon: Daemon, name: str) -> dict[str, str]:
    rows = [r for r in parse_table(daemon.docker("service", "ls").stdout) if r["NAME"] == name]
    assert len(rows) == 1, rows
    return rows[0]


def test_a_replicated_job_completes_exactly_five_times_two_at_most(
    cluster: Daemon, tmp_path: Path
) -> None:
    log = tmp_path / "runs"
    result = cluster.docker(
        "service",
        "create",
        "--name",
        "batch",
        "--mode",
        "replicated-job",
        "--replicas",
        "5",
        "--max-concurrent",
        "2",
        *job_command(log),
        timeout=PROGRESS_TIMEOUT_S,
    )
    # Without --detach the CLI follows the job's progress and returns once it is done.
    assert "5/5:" in result.stdout, result.stdout  # a bar per completion
    assert result.stdout.endswith("active tasks: 0 out of 0 tasks\njob complete\n"), result.stdout
    recorded = runs(log)
    assert len(recorded) == 5 and all(end is not None for _, end in recorded.values()), recorded
    assert most_at_once(recorded) == 2, recorded

    # The task list says the same: five tasks, slots 1..5 as the CLI shows them, all
    # complete, each the process that recorded itself.
    tasks = cluster.tasks("batch")
    # Slot 0 is left out, as dockerd leaves a zero Slot out (the CLI reads it as 0).
    assert sorted(t.get("Slot", 0) for t in tasks) == [0, 1, 2, 3, 4], tasks
    assert {(t["Status"]["State"], t["DesiredState"]) for t in tasks} == {("complete", "complete")}
    assert {str(t.get("JobIteration")) for t in tasks} == {"{}"}  # iteration 0, as dockerd
    assert {t["ID"] for t in tasks} == set(recorded)

    row = ls_row(cluster, "batch")
    assert (row["MODE"], row["REPLICAS"]) == ("replicated job", "0/2 (5/5 completed)"), row
    service = cluster.service("batch")
    assert service["Spec"]["Mode"] == {"ReplicatedJob": {"MaxConcurrent": 2, "TotalCompletions": 5}}
    assert service["JobStatus"]["JobIteration"] == {}
    assert service["JobStatus"]["LastExecution"].endswith("Z")
    assert "UpdateConfig" not in service["Spec"]  # jobs have none, even with defaults

    # Exit 0 is done: nothing is restarted (the default condition `any` acts as
    # on-failure for a job).
    holds_for(lambda: len(cluster.tasks("batch")) == 5 and len(runs(log)) == 5, QUIET_S)

    # `update --force` runs the job again, as a new iteration.
    result = cluster.docker("service", "update", "--force", "batch", timeout=PROGRESS_TIMEOUT_S)
    assert "job complete" in result.stdout, result.stdout
    assert cluster.service("batch")["JobStatus"]["JobIteration"] == {"Index": 1}
    recorded = runs(log)
    assert len(recorded) == 10 and most_at_once(recorded) == 2, recorded
    tasks = cluster.tasks("batch")
    now = [t for t in tasks if t.get("JobIteration") == {"Index": 1}]
    before = [t for t in tasks if t.get("JobIteration") == {}]
    assert len(now) == 5 and {t["Status"]["State"] for t in now} == {"complete"}
    assert len(before) == 5 and {t["DesiredState"] for t in before} == {"shutdown"}
    assert ls_row(cluster, "batch")["REPLICAS"] == "0/2 (5/5 completed)"


def test_a_failing_job_task_follows_the_restart_policy(cluster: Daemon) -> None:
    cluster.docker(
        "service",
        "create",
        "--detach",
        "--name",
        "flaky",
        "--mode",
        "replicated-job",
        "--restart-condition",
        "on-failure",
        "--restart-max-attempts",
        "1",
        "--restart-delay",
        "100ms",
        "busybox",
        "sh",
        "-c",
        "exit 3",
    )

    def failed() -> list[dict[str, object]]:
        tasks = cluster.tasks("flaky")
        return tasks if [t["Status"]["State"] for t in tasks] == ["failed"] * 2 else []

    tasks = wait_until(failed, what="the task and its one restart, both failed")
    assert {t.get("Slot", 0) for t in tasks} == {0}
    assert all("Slot" not in t for t in tasks)
    holds_for(lambda: len(cluster.tasks("flaky")) == 2, QUIET_S)
    assert ls_row(cluster, "flaky")["REPLICAS"] == "0/1 (0/1 completed)"
