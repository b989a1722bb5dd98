"""The cluster-wide scheduling strategies: spread (default), binpack, random."""

from __future__ import annotations

from collections import Counter

from shoal.manager.scheduler.scheduler import STRATEGY_LABEL, Scheduler
from shoal.manager.store import MemoryBackend, Store, Tx
from shoal.types.swarm import Cluster, SwarmSpec

from ..storeutil import commit
from .test_scheduler import CPU, make_node, placed, replicas


def scheduler_with(strategy: str | None, nodes: int = 3) -> Scheduler:
    store = Store(MemoryBackend())
    labels = {STRATEGY_LABEL: strategy} if strategy else {}

    def create(tx: Tx) -> None:
        tx.create(
            Cluster(id="c", spec=SwarmSpec(labels=labels), subnet_size=24, data_path_port=4789)
        )
        for i in range(nodes):
            tx.create(make_node(f"n{i}", cpus=4 * CPU))

    commit(store, create)
    sched = Scheduler(store)
    sched.load(store.view())
    return sched


def test_spread_is_the_default() -> None:
    sched = scheduler_with(None)
    assert sched.strategy == "spread"
    assert sorted(placed(sched.schedule(replicas(6))).values()) == [2, 2, 2]


def test_binpack_fills_one_node_until_its_resources_run_out() -> None:
    sched = scheduler_with("binpack")
    counts = placed(sched.schedule(replicas(6, cpus=CPU)))
    # 4 CPUs a node, 1 reserved per task: the first node takes 4, the next the rest
    assert sorted(counts.values()) == [2, 4]


def test_random_places_everything_and_uses_several_nodes() -> None:
    sched = scheduler_with("random", nodes=5)
    counts: Counter[str] = placed(sched.schedule(replicas(200)))
    assert sum(counts.values()) == 200
    assert len(counts) == 5


def test_unknown_strategy_falls_back_to_spread() -> None:
    assert scheduler_with("tightest").strategy == "spread"
