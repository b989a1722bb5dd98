"""The agent's bound on task starts in flight (shoal.agent.starts): at most `limit`
tasks between PREPARING and the end of their start, slots given in arrival order, a
slot freed by a start that fails as by one that succeeds. Starts here block until the
test lets them go (no time involved)."""

from __future__ import annotations

import asyncio

from shoal.agent.agent import Agent
from shoal.agent.executor.base import ExecutorError, RuntimeState
from shoal.agent.starts import StartSlots
from shoal.clock import FakeClock
from shoal.types.agent import Assignment
from shoal.types.task import TaskState

from ..manager.sim import FakeController, FakeExecutor
from .test_agent_discard import assigned

WAIT_S = 5.0
LIMIT = 3
TASKS = 10


class GatedController(FakeController):
    """A start that waits for its gate; records the order starts began in."""

    gates: dict[str, asyncio.Event]
    began: list[str]
    fail: bool = False

    async def start(self) -> RuntimeState:
        self.began.append(self.task_id)
        await self.gates[self.task_id].wait()
        if self.fail:
            raise ExecutorError("fake: the task failed to start")
        return await super().start()


async def settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


def test_starts_in_flight_are_bounded_and_served_in_order() -> None:
    async def main() -> None:
        clock = FakeClock()
        executor = FakeExecutor(clock, "n1")
        ids = [f"t{i:02d}" for i in range(TASKS)]
        gates = {i: asyncio.Event() for i in ids}
        began: list[str] = []
        for i in ids:
            c = GatedController(clock, assigned(i).task)
            c.gates, c.began, c.fail = gates, began, i == "t01"
            executor.controllers[i] = c
        agent = Agent("n1", "10.0.0.1", executor, session=None, max_starts=LIMIT)  # type: ignore[arg-type]
        await asyncio.wait_for(
            agent._apply(Assignment(full=True, tasks=[assigned(i) for i in ids])), WAIT_S
        )
        await settle()
        assert began == ids[:LIMIT]
        assert agent.starts.in_flight == LIMIT
        # one start succeeds, one fails: both free their slot, to the next in order
        gates["t00"].set()
        gates["t01"].set()
        await settle()
        assert began == ids[: LIMIT + 2]
        assert agent._statuses["t00"].state == TaskState.RUNNING.wire
        assert agent._statuses["t01"].state == TaskState.FAILED.wire
        for i in ids:
            gates[i].set()
        await settle()
        assert began == ids
        assert all(agent._statuses[i].state == TaskState.RUNNING.wire for i in ids if i != "t01")
        assert agent.starts.in_flight == 0
        assert agent.starts.peak == LIMIT
        await agent.stop(stop_tasks=True)

    asyncio.run(main())


def test_no_bound_when_the_limit_is_zero() -> None:
    async def main() -> None:
        slots = StartSlots(0)
        for _ in range(100):
            await asyncio.wait_for(slots.acquire(), WAIT_S)
        assert slots.in_flight == slots.peak == 100 and slots.waited == 0

    asyncio.run(main())
