"""Draining on a fake clock, with the real manager and agents (sim.py): a leaving task
on a network gets its stop signal only once every node's table shows it not running
(the nodes acknowledged the update: `Assignment.network_seq`, `drained`), and at once
then, not after a timeout; a node that does not answer holds a stop no longer than
min(DRAIN_TIMEOUT_S, the task's stop grace period)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from shoal.agent.agent import Agent
from shoal.agent.task_runner import DRAIN_TIMEOUT_S
from shoal.manager.controlapi.services import create_service, update_service
from shoal.types.agent import Assignment
from shoal.types.service import ContainerSpec, UpdateConfig
from shoal.types.task import Task, TaskState

from .sim import FakeController, FakeExecutor, S, Sim
from .test_networks_on_clock import make_network, scale, spec

STEP_S = 0.05
# How late each node gets its assignments (a slow link): node3's lag is what a stop
# must wait for.
LAG_S = {"node1": 0.0, "node2": 0.1, "node3": 0.3}


class Lagging:
    """The dispatcher as an agent sees it over a slow link: every assignment arrives
    LAG_S late (in order)."""

    def __init__(self, inner: Any, clock: Any) -> None:
        self._inner = inner
        self._clock = clock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def assignments(self, node_id: str) -> AsyncIterator[Assignment]:
        lag = LAG_S.get(node_id, 0.0)
        arrived: asyncio.Queue[tuple[float, Assignment] | None] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for a in self._inner.assignments(node_id):
                    arrived.put_nowait((self._clock.monotonic() + lag, a))
            finally:
                arrived.put_nowait(None)

        task = asyncio.create_task(pump())
        try:
            while (item := await arrived.get()) is not None:
                due, a = item
                await self._clock.sleep(due - self._clock.monotonic())
                yield a
        finally:
            task.cancel()


class Stop:
    """One stop signal: when it came, and which nodes' tables still showed the task
    running then."""

    def __init__(self, at: float, still_running_on: list[str]) -> None:
        self.at = at
        self.still_running_on = still_running_on


class DrainSim(Sim):
    def __init__(self, nodes: int = 3) -> None:
        super().__init__(nodes)
        self.stops: dict[str, Stop] = {}
        self.desired_changed: dict[str, float] = {}
        # (time, node, task): a node's table showed a task running that its own
        # node's table did not (a connection handed to that node would be refused)
        self.ahead_of_own_node: list[tuple[float, str, str]] = []

    def start_agent(self, node_id: str) -> Agent:
        sim = self

        class Recording(FakeController):
            async def shutdown(self, grace_s: float) -> None:
                if self.task_id not in sim.stops:
                    sim.stops[self.task_id] = Stop(
                        sim.clock.monotonic(),
                        [
                            n
                            for n, a in sim.agents.items()
                            if any(
                                p.running and p.task_id == self.task_id
                                for p in a.network.peers.values()
                            )
                        ],
                    )
                await super().shutdown(grace_s)

        class Executor(FakeExecutor):
            def controller(self, task: Task, meta: object = None) -> FakeController:  # type: ignore[override]
                c = self.controllers.get(task.id)
                if c is None:
                    c = self.controllers[task.id] = Recording(self._clock, task)
                return c

        executor = Executor(self.clock, node_id)
        session = Lagging(self.manager.dispatcher, self.clock)
        agent = Agent(node_id, f"192.168.0.{node_id[-1]}", executor, session, clock=self.clock)
        agent.start()
        self.agents[node_id] = agent
        return agent

    async def run_for(self, seconds: float) -> None:
        """Advance in small steps, noting when each task's desired state moved past
        RUNNING."""
        for _ in range(round(seconds / STEP_S)):
            await self.advance(STEP_S)
            for t in self.store.view().tasks():
                if t.desired > TaskState.RUNNING and t.id not in self.desired_changed:
                    self.desired_changed[t.id] = self.clock.monotonic()
            self.check_own_node_first()

    def check_own_node_first(self) -> None:
        """A task is a backend on its own node whenever it is one on any other: its
        own node takes it in first and out last."""
        running = {
            n: {p.task_id for p in a.network.peers.values() if p.running}
            for n, a in self.agents.items()
        }
        for n, agent in self.agents.items():
            for p in agent.network.peers.values():
                own = running.get(p.node_id)
                if p.running and own is not None and p.task_id not in own:
                    self.ahead_of_own_node.append((self.clock.monotonic(), n, p.task_id))


async def setup(sim: DrainSim, replicas: int, grace_s: float | None = None) -> str:
    await make_network(sim.store, "app")
    s = spec("web", replicas, ["app"])
    if grace_s is not None:
        tt = s.task_template
        assert tt is not None and tt.container_spec is not None
        cs = msgspec.structs.replace(tt.container_spec, stop_grace_period=int(grace_s * S))
        s = msgspec.structs.replace(s, task_template=msgspec.structs.replace(tt, container_spec=cs))
    svc = await create_service(sim.store, s)
    await sim.run_for(5.0)
    assert len(sim.running(svc.id)) == replicas
    # every node's table shows every replica running
    for agent in sim.agents.values():
        assert sum(p.running for p in agent.network.peers.values()) == replicas
    return svc.id


def test_scale_down_stops_only_after_every_node_took_it_out() -> None:
    async def main() -> None:
        async with DrainSim(3) as sim:
            svc = await setup(sim, 3)
            await scale(sim.store, svc, 1)
            await sim.run_for(1.0)
            assert len(sim.running(svc)) == 1
            assert len(sim.stops) == 2
            for task_id, stop in sim.stops.items():
                assert stop.still_running_on == [], (task_id, stop.still_running_on)
                # confirmed, not timed out: the stop came well before the hold's end
                assert stop.at - sim.desired_changed[task_id] < DRAIN_TIMEOUT_S / 2
            assert sim.ahead_of_own_node == []

    asyncio.run(main())


def test_rolling_update_stop_first_and_start_first() -> None:
    async def main() -> None:
        async with DrainSim(3) as sim:
            svc = await setup(sim, 3)
            for order in ("stop-first", "start-first"):
                s = sim.service(svc)
                tt = s.spec.task_template
                assert tt is not None and tt.container_spec is not None
                cs: ContainerSpec = tt.container_spec
                new = msgspec.structs.replace(
                    s.spec,
                    task_template=msgspec.structs.replace(
                        tt, container_spec=msgspec.structs.replace(cs, env=[f"V={order}"])
                    ),
                    update_config=UpdateConfig(parallelism=1, order=order, monitor=S // 2),
                )
                before = set(sim.stops)
                await update_service(sim.store, svc, s.version.index, new)
                await sim.run_for(6.0)
                assert sim.status(svc) == "completed", sim.status(svc)
                stopped = set(sim.stops) - before
                assert len(stopped) == 3, order
                for task_id in stopped:
                    stop = sim.stops[task_id]
                    assert stop.still_running_on == [], (order, stop.still_running_on)
                    assert stop.at - sim.desired_changed[task_id] < DRAIN_TIMEOUT_S / 2
            assert sim.ahead_of_own_node == []

    asyncio.run(main())


async def silent_node_case(grace_s: float | None) -> float:
    async with DrainSim(3) as sim:
        svc = await setup(sim, 3, grace_s)
        # node3 goes silent: it keeps its session until its heartbeats expire, but
        # acknowledges nothing; its task stays on the network
        silent = "node3"
        await sim.kill_agent(silent)
        await scale(sim.store, svc, 1)
        await sim.run_for(4.0)
        held = [
            sim.stops[t].at - sim.desired_changed[t] for t in sim.stops if t in sim.desired_changed
        ]
        assert held, "no task was stopped"
        return max(held)


def test_a_silent_node_holds_a_stop_at_most_the_drain_timeout() -> None:
    # The hold is measured on the fake clock in steps of STEP_S.
    held = asyncio.run(silent_node_case(None))
    assert DRAIN_TIMEOUT_S - 2 * STEP_S <= held <= DRAIN_TIMEOUT_S + 2 * STEP_S, held
    held = asyncio.run(silent_node_case(0.5))
    assert 0.5 - 2 * STEP_S <= held <= 0.5 + 2 * STEP_S, held
