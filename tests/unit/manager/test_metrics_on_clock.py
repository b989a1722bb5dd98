"""The counters and histograms updated where things happen, on a whole cluster on a
FakeClock (sim.py: the real store, manager and agents): the scheduler's throughput and
its latency from a task's creation to its assignment, the dispatcher's heartbeats and
sessions, the executor's starts (and failed starts), the agent's tasks by state."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import msgspec

from shoal.agent.metrics import AgentCollector
from shoal.manager.controlapi.services import create_service
from shoal.manager.dispatcher.dispatcher import HEARTBEAT_GRACE
from shoal.manager.metrics import ManagerCollector
from shoal.manager.store import Tx
from shoal.metrics import SCHEDULING_BUCKETS_S, Metrics
from shoal.types.service import (
    ContainerSpec,
    Placement,
    ReplicatedService,
    ServiceMode,
    ServiceSpec,
    TaskSpec,
)
from shoal.types.swarm import DEFAULT_HEARTBEAT_PERIOD_NS

from .sim import Sim

SETTLE_S = 1.0
WAIT_S = 40.0  # how long the constrained service's tasks wait for a node


def on_sim(test: Callable[[Sim], Awaitable[None]], nodes: int = 3) -> None:
    async def main() -> None:
        async with Sim(nodes) as sim:
            await test(sim)

    asyncio.run(main())


def spec(
    name: str, replicas: int, env: list[str] | None = None, constraints: list[str] | None = None
) -> ServiceSpec:
    return ServiceSpec(
        name=name,
        mode=ServiceMode(replicated=ReplicatedService(replicas=replicas)),
        task_template=TaskSpec(
            container_spec=ContainerSpec(image="busybox", command=["run"], env=env),
            placement=Placement(constraints=constraints),
        ),
    )


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    v = metrics.registry.get_sample_value(name, labels)
    return 0.0 if v is None else v


def test_scheduled_tasks_are_counted_and_timed_from_their_creation() -> None:
    async def test(sim: Sim) -> None:
        m = sim.manager.metrics
        assert m is sim.store.metrics  # one set of instruments for the whole manager
        await sim.create(replicas=3)
        await sim.advance(SETTLE_S)
        assert sample(m, "shoal_scheduler_tasks_scheduled_total") == 3
        assert sample(m, "shoal_scheduler_latency_seconds_count") == 3
        # on the fake clock nothing waited: every one in the first bucket
        first = str(float(SCHEDULING_BUCKETS_S[0]))
        assert sample(m, "shoal_scheduler_latency_seconds_bucket", le=first) == 3

        # two tasks no node fits wait WAIT_S, until a node gets the label they need
        await create_service(sim.store, spec("zoned", 2, constraints=["node.labels.zone==b"]))
        await sim.advance(WAIT_S)
        assert sample(m, "shoal_scheduler_tasks_scheduled_total") == 3

        def label(tx: Tx) -> None:
            n = tx.get_node("node1")
            assert n is not None
            tx.update(
                msgspec.structs.replace(
                    n, spec=msgspec.structs.replace(n.spec, labels={"zone": "b"})
                )
            )

        await sim.store.update(label)
        await sim.advance(SETTLE_S)
        assert sample(m, "shoal_scheduler_tasks_scheduled_total") == 5
        # they waited WAIT_S (and no more than the settling after it): between 30 s and 60 s
        assert sample(m, "shoal_scheduler_latency_seconds_bucket", le="30.0") == 3
        assert sample(m, "shoal_scheduler_latency_seconds_bucket", le="60.0") == 5
        assert sample(m, "shoal_scheduler_latency_seconds_sum") >= 2 * WAIT_S

    on_sim(test)


def test_heartbeats_are_counted_and_sessions_shown() -> None:
    async def test(sim: Sim) -> None:
        m = sim.manager.metrics
        m.register(ManagerCollector(lambda: sim.manager))
        assert sample(m, "shoal_dispatcher_sessions") == 3
        before = sample(m, "shoal_dispatcher_heartbeats_total")
        assert before >= 3  # each registration gives the first period
        period_s = DEFAULT_HEARTBEAT_PERIOD_NS / 1e9
        await sim.advance(10 * period_s)
        beats = sample(m, "shoal_dispatcher_heartbeats_total") - before
        # about one beat per period per node (the period is jittered by a little)
        assert 3 * 8 <= beats <= 3 * 12
        await sim.kill_agent("node3")  # silent: its session ends when its beats are missed
        assert sample(m, "shoal_dispatcher_sessions") == 3
        await sim.advance((HEARTBEAT_GRACE + 1) * period_s)
        assert sample(m, "shoal_dispatcher_sessions") == 2

    on_sim(test)


def test_starts_are_timed_failures_counted_and_tasks_shown_by_the_agent() -> None:
    async def test(sim: Sim) -> None:
        await sim.create(replicas=3)
        await sim.advance(SETTLE_S)
        agents = list(sim.agents.values())
        starts = sum(
            sample(a.metrics, "shoal_executor_start_duration_seconds_count", runtime="fake")
            for a in agents
        )
        assert starts == 3
        shown = Metrics()
        for agent in agents:
            shown.register(AgentCollector(lambda agent=agent: agent))
        running = [
            s
            for family in shown.registry.collect()
            if family.name == "shoal_agent_tasks"
            for s in family.samples
            if s.labels["state"] == "running" and s.labels["service"] == "web"
        ]
        assert len(running) >= 2  # spread: tasks on several nodes
        assert sum(s.value for s in running) == 3

        await create_service(sim.store, spec("broken", 1, env=["FAIL=start"]))
        await sim.advance(SETTLE_S)
        failed = sum(
            sample(a.metrics, "shoal_executor_start_failures_total", runtime="fake") for a in agents
        )
        assert failed >= 1

    on_sim(test)
