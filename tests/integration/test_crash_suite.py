"""The crash suite: `kill -9` at random moments while 8 clients write.

- The manager: SHOAL_CRASH_ROUNDS rounds (default CRASH_ROUNDS) in which 8 clients
  create, update, scale and remove services of their own, the manager is killed with
  SIGKILL at a random moment and restarted. After each restart every acknowledged write
  is there (creates exist, the last acknowledged update's value, removes gone), a write
  cut off by the kill is there entirely or not at all, no slot has two tasks, and every
  service converges with exactly its task processes.
- A worker's agent, in a two-node cluster on loopback: the same workload on the
  manager while the worker's daemon is killed and restarted, sometimes quickly (its
  tasks are adopted: same processes), sometimes after it was seen down (its tasks were
  replaced on the manager, and the restarted worker stops its stale copies): never a
  duplicate.

Seeded: the seed is printed; SHOAL_CRASH_SEED=N replays it. The 100-round soak is
`bench/crash_soak.py --rounds 100`."""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import conftest
from .cluster_harness import DOWN_TIMEOUT_S, Cluster, ClusterNode
from .crash import Figures, manager_rounds, worker_rounds
from .harness import DaemonFactory, cleanup_daemons, init_swarm

pytestmark = pytest.mark.integration

CRASH_ROUNDS = 5
WORKER_ROUNDS = 3


def seed() -> int:
    value = int(os.environ.get("SHOAL_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    print(f"crash suite seed {value} (replay with SHOAL_CRASH_SEED={value})")
    return value


def rounds() -> int:
    return int(os.environ.get("SHOAL_CRASH_ROUNDS") or CRASH_ROUNDS)


def test_kill9_of_the_manager_loses_no_acknowledged_write(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(node_name="crashy")
    init_swarm(daemon)
    figures: Figures = manager_rounds(daemon, seed(), rounds())
    print(figures.line("manager crash suite"))
    assert figures.rounds == rounds()
    assert figures.acked > 0 and figures.lost == 0


@pytest.fixture
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A manager and a worker on loopback (dispatcher heartbeat 1 s), cleaned up after
    the test by the pids each recorded (a worker killed and restarted is no leak)."""
    logs = tmp_path_factory.mktemp("pair-logs")
    nodes: list[ClusterNode] = []
    try:
        for name in ("boss", "hand"):
            root = Path(tempfile.mkdtemp(prefix="shoal-", dir="/tmp"))
            node = ClusterNode(root, logs / f"{name}-{root.name}.log", name)
            nodes.append(node)
            conftest._LIVE.append(node)  # its log goes into a failure's report
            node.start()
        cluster = Cluster.init(nodes[0])
        cluster.join(nodes[1])
        yield cluster
    finally:
        for node in nodes:
            conftest._LIVE.remove(node)
        cleanup_daemons(list(reversed(nodes)))


def test_kill9_of_a_workers_agent_adopts_and_duplicates_nothing(pair: Cluster) -> None:
    manager, worker = pair.manager, pair.workers[0]
    count = max(2, rounds() // 2) if "SHOAL_CRASH_ROUNDS" in os.environ else WORKER_ROUNDS
    figures, adopted = worker_rounds(
        manager,
        worker,
        lambda: pair.wait_node_state(worker.node_name, "down", timeout=DOWN_TIMEOUT_S),
        seed(),
        count,
    )
    print(figures.line("worker crash suite") + f", {adopted} tasks adopted")
    assert figures.rounds == count and figures.acked > 0
    assert adopted > 0, "no task survived a worker's restart: adoption was not exercised"
