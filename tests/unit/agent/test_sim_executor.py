"""The sim runtime (shoal/agent/executor/sim.py) on the FakeClock: a start takes the
configured delay, a service's task runs until shut down, a job's task exits 0 after its
run time, and the failure ratio picks the same tasks for the same seed."""

from __future__ import annotations

import asyncio
import re
import signal

import pytest

from shoal.agent.executor.base import ExecutorError
from shoal.agent.executor.sim import ERR_SIM_FAILURE, SimConfig, SimExecutor
from shoal.clock import FakeClock
from shoal.types.task import Task, TaskStatus, Version


def task(task_id: str, job: bool = False) -> Task:
    return Task(
        id=task_id,
        status=TaskStatus(timestamp="2026-01-01T00:00:00Z", state="assigned", message="assigned"),
        desired_state="running",
        job_iteration=Version(index=1) if job else None,
    )


def test_a_start_takes_the_delay_and_the_task_runs_until_shut_down() -> None:
    async def main() -> None:
        clock = FakeClock()
        ex = SimExecutor("hollow-0", config=SimConfig(start_delay_s=0.5), clock=clock)
        c = ex.controller(task("t1"))
        assert not (await c.inspect()).exists
        await c.prepare()
        starting = asyncio.ensure_future(c.start())
        await clock.advance(0.4)
        assert not starting.done()
        await clock.advance(0.1)
        rs = starting.result()
        assert rs.running and rs.container_id == "sim-t1"
        assert (await c.inspect()).running
        waiting = asyncio.ensure_future(c.wait())
        await clock.advance(3600)
        assert not waiting.done()  # a service's task runs on
        await c.shutdown(10)
        status = await waiting
        assert status.signal == signal.SIGTERM and status.exit_code == 128 + signal.SIGTERM
        await c.remove()
        assert ex.known_task_ids() == []

    asyncio.run(main())


def test_a_job_task_exits_zero_after_its_run_time() -> None:
    async def main() -> None:
        clock = FakeClock()
        ex = SimExecutor("hollow-0", config=SimConfig(job_run_s=2.0), clock=clock)
        c = ex.controller(task("j1", job=True))
        await c.prepare()
        await c.start()
        waiting = asyncio.ensure_future(c.wait())
        await clock.advance(1.9)
        assert not waiting.done()
        await clock.advance(0.1)
        assert (await waiting).exit_code == 0
        assert not (await c.inspect()).running

    asyncio.run(main())


def test_the_failure_ratio_is_seeded_and_near_its_value() -> None:
    ids = [f"task{i:05d}" for i in range(2000)]
    config = SimConfig(fail_ratio=0.25, seed=7)
    failing = {i for i in ids if config.fails(i)}
    assert 0.2 < len(failing) / len(ids) < 0.3
    assert failing == {i for i in ids if SimConfig(fail_ratio=0.25, seed=7).fails(i)}
    assert failing != {i for i in ids if SimConfig(fail_ratio=0.25, seed=8).fails(i)}
    assert not any(SimConfig(fail_ratio=0.0).fails(i) for i in ids)

    async def main() -> None:
        clock = FakeClock()
        ex = SimExecutor("hollow-0", config=config, clock=clock)
        c = ex.controller(task(sorted(failing)[0]))
        await c.prepare()
        with pytest.raises(ExecutorError, match=re.escape(ERR_SIM_FAILURE)):
            await c.start()
        assert (await c.inspect()).exit is not None

    asyncio.run(main())
