"""A global job on three nodes, and on a fourth that joins afterwards: it runs exactly
once on every node, as the task processes recorded themselves on the host and in each
daemon's own data dir; `docker service ls` shows it as dockerd does."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..cluster_harness import Cluster, NodeFactory
from ..harness import PROGRESS_TIMEOUT_S, holds_for, parse_table, wait_until

pytestmark = pytest.mark.integration

QUIET_S = 3.0  # how long nothing more may run once every node ran the job


def job_command(log: Path) -> list[str]:
    """A task that records its task ID (by the `--env` template) in `log` once it ran
    (for one second): not its pid, which is 2 in every process task's pid namespace."""
    return ["--env", "T={{.Task.ID}}", "busybox", "sh", "-c", f'sleep 1; echo "$T" >> {log}']


def recorded(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def replicas(cluster: Cluster, name: str) -> str:
    rows = parse_table(cluster.manager.docker("service", "ls").stdout)
    return next(r["REPLICAS"] for r in rows if r["NAME"] == name)


def runs_per_node(cluster: Cluster, name: str, log: Path) -> dict[str, int]:
    """{node name: how many of the job's completed runs its own data dir recorded}."""
    done = {
        t["ID"]
        for t in cluster.manager.tasks(name)
        if t["Status"]["State"] == "complete" and t["DesiredState"] == "complete"
    }
    ran = set(recorded(log))
    out: dict[str, int] = {}
    for node_name, node in cluster.nodes.items():
        mine = {tid for tid in node.pids_of_tasks() if tid in done}
        assert mine <= ran, (node_name, mine, ran)
        out[node_name] = len(mine)
    return out


def test_a_global_job_runs_once_per_node_and_on_a_node_that_joins_later(
    cluster: Cluster, node_factory: NodeFactory, tmp_path: Path
) -> None:
    log = tmp_path / "runs"
    result = cluster.manager.docker(
        "service",
        "create",
        "--name",
        "everywhere",
        "--mode",
        "global-job",
        *job_command(log),
        timeout=PROGRESS_TIMEOUT_S,
    )
    assert result.stdout.endswith("job complete\n"), result.stdout  # the CLI waited for it
    assert len(recorded(log)) == 3
    assert runs_per_node(cluster, "everywhere", log) == {"node-1": 1, "node-2": 1, "node-3": 1}
    assert replicas(cluster, "everywhere") == "0/0 (3/3 completed)"

    late = node_factory("node-4")
    cluster.join(late)
    wait_until(
        lambda: (
            len(recorded(log)) == 4 and replicas(cluster, "everywhere") == "0/0 (4/4 completed)"
        ),
        what="the job's run on the node that joined",
    )
    assert runs_per_node(cluster, "everywhere", log) == {
        "node-1": 1,
        "node-2": 1,
        "node-3": 1,
        "node-4": 1,
    }
    tasks = cluster.manager.tasks("everywhere")
    assert {str(t.get("JobIteration")) for t in tasks} == {"{}"}
    assert sorted(t["NodeID"] for t in tasks) == sorted(n["ID"] for n in cluster.node_objects())
    holds_for(
        lambda: len(cluster.manager.tasks("everywhere")) == 4 and len(recorded(log)) == 4, QUIET_S
    )
