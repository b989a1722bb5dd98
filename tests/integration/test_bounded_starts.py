"""A hundred process tasks on one node, their starts bounded by the agent
(shoal.agent.starts): every one of them runs, each with its own process, and all are
gone after the service is removed. (How fast is bench/converge.py's figure.)"""

from __future__ import annotations

import json

import pytest

from .harness import PROGRESS_TIMEOUT_S, DaemonFactory, init_swarm

pytestmark = pytest.mark.integration

REPLICAS = 100
SLEEP = ("sleep", "1000")


def test_a_hundred_tasks_all_run_with_starts_bounded(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(node_name="shoal-starts")
    init_swarm(daemon)
    started = [
        json.loads(line)
        for line in daemon.log_path.read_text().splitlines()
        if '"agent started"' in line
    ]
    assert started and all(0 < e["max_concurrent_starts"] < REPLICAS for e in started), started
    daemon.create_service("many", "--replicas", str(REPLICAS), "busybox", *SLEEP)
    pids = daemon.wait_processes("many", REPLICAS, argv=SLEEP, timeout=PROGRESS_TIMEOUT_S)
    assert len(set(pids.values())) == REPLICAS
    daemon.docker("service", "rm", "many")
    daemon.wait_processes("many", 0, timeout=PROGRESS_TIMEOUT_S)
