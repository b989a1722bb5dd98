"""A restarted agent adopts the tasks it runs at once, even while it discards slow
leftovers of an earlier daemon (a task whose start a kill -9 cut off waits out the
executor's start timeout before it can be discarded). Found by the crash soak: with a
few such leftovers discarded one after the other, the node started nothing for a
minute."""

from __future__ import annotations

import asyncio

from shoal.agent.agent import Agent
from shoal.clock import FakeClock
from shoal.types.agent import AssignedTask, Assignment
from shoal.types.task import Task, TaskState, TaskStatus

from ..manager.sim import FakeController, FakeExecutor

WAIT_S = 5.0


class StuckController(FakeController):
    """A leftover whose shutdown does not return until released."""

    released: asyncio.Event

    async def shutdown(self, grace_s: float) -> None:
        await self.released.wait()


def assigned(task_id: str) -> AssignedTask:
    task = Task(
        id=task_id,
        service_id="svc",
        slot=1,
        node_id="n1",
        status=TaskStatus(timestamp="", state=TaskState.ASSIGNED.wire, message=""),
        desired_state=TaskState.RUNNING.wire,
    )
    return AssignedTask(task=task)


def test_leftovers_are_discarded_aside_and_the_wanted_tasks_start_at_once() -> None:
    async def main() -> None:
        clock = FakeClock()
        executor = FakeExecutor(clock, "n1")
        released = asyncio.Event()
        for stale in ("stale1", "stale2", "stale3"):
            c = StuckController(clock, assigned(stale).task)
            c.released = released
            executor.controllers[stale] = c
        agent = Agent("n1", "10.0.0.1", executor, session=None)  # type: ignore[arg-type]
        full = Assignment(full=True, tasks=[assigned("wanted")])
        await asyncio.wait_for(agent._apply(full), WAIT_S)  # not held by the leftovers
        # The wanted task is on its way while every leftover's discard is still stuck.
        assert "wanted" in agent._runners
        assert set(agent._discarding) == {"stale1", "stale2", "stale3"}
        for _ in range(50):
            if agent._statuses.get("wanted", None) is not None and (
                agent._statuses["wanted"].state == TaskState.RUNNING.wire
            ):
                break
            await asyncio.sleep(0)
        assert agent._statuses["wanted"].state == TaskState.RUNNING.wire, agent._statuses
        released.set()
        await asyncio.wait_for(asyncio.gather(*agent._discarding.values()), WAIT_S)
        assert not agent._discarding
        await agent.stop(stop_tasks=True)

    asyncio.run(main())
