"""The cluster-wide scheduling strategy, chosen through the swarm spec's labels (the
Engine API's `POST /swarm/update`, as docker-py sends it): binpack fills one node before
using the next, spread (the default) evens them out again."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..cluster_harness import Cluster

pytestmark = pytest.mark.integration

STRATEGY_LABEL = "shoal.scheduler.strategy"
SLEEP = ("busybox", "sleep", "1000")


def set_strategy(cluster: Cluster, strategy: str | None) -> None:
    client = cluster.manager.client()
    try:
        spec = client.swarm.attrs["Spec"]
        labels = dict(spec.get("Labels") or {})
        if strategy is None:
            labels.pop(STRATEGY_LABEL, None)
        else:
            labels[STRATEGY_LABEL] = strategy
        client.swarm.update(labels=labels)
        client.swarm.reload()
        assert client.swarm.attrs["Spec"]["Labels"].get(STRATEGY_LABEL) == strategy
    finally:
        client.close()


@pytest.fixture
def binpack(cluster: Cluster) -> Iterator[Cluster]:
    set_strategy(cluster, "binpack")
    try:
        yield cluster
    finally:
        set_strategy(cluster, None)


def test_binpack_puts_every_task_on_one_node(binpack: Cluster) -> None:
    binpack.manager.create_service("packed", "--replicas", "4", *SLEEP)
    placed = binpack.wait_converged("packed", 4)
    assert sorted(len(tasks) for tasks in placed.values() if tasks) == [4], placed


def test_binpack_respects_reservations(binpack: Cluster) -> None:
    # Each node offers its measured CPUs; reserving all of them per task forces one task
    # a node even under binpack.
    client = binpack.manager.client()
    try:
        cpus = client.info()["NCPU"]
    finally:
        client.close()
    binpack.manager.create_service("wide", "--replicas", "3", "--reserve-cpu", str(cpus), *SLEEP)
    placed = binpack.wait_converged("wide", 3)
    assert sorted(len(tasks) for tasks in placed.values()) == [1, 1, 1], placed
