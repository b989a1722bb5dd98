"""Restart policies and node failure detection on a FakeClock (see sim.py): the restart
delay, max attempts within a window and the window's expiry; a node whose heartbeats
stop is marked down after three periods and its tasks are replaced elsewhere."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from shoal.manager.dispatcher import dispatcher as dispatcher_mod
from shoal.manager.dispatcher.dispatcher import HEARTBEAT_EPSILON_S, HEARTBEAT_GRACE
from shoal.types.service import RestartPolicy
from shoal.types.swarm import DEFAULT_HEARTBEAT_PERIOD_NS
from shoal.types.task import TaskState

from .sim import S, Sim

SETTLE_S = 1.0  # scheduled, started and reported, well within any period below


def on_sim(test: Callable[[Sim], Awaitable[None]], nodes: int = 3) -> None:
    async def main() -> None:
        async with Sim(nodes) as sim:
            await test(sim)

    asyncio.run(main())


def test_a_failed_task_is_replaced_after_the_restart_delay() -> None:
    async def test(sim: Sim) -> None:
        policy = RestartPolicy(condition="any", delay=10 * S)
        sid = await sim.create(replicas=1, env=["EXIT=5:1"], restart=policy)
        await sim.advance(SETTLE_S + 5)  # it ran 5 s, then exited 1
        first, replacement = sim.tasks(sid)
        assert (first.state, first.desired) == (TaskState.FAILED, TaskState.SHUTDOWN)
        assert replacement.desired == TaskState.READY  # held for the delay
        # It failed at 5 s (status reports leave at once): released at 15 s, not before.
        await sim.advance(8.5)
        assert sim.tasks(sid)[1].desired == TaskState.READY
        await sim.advance(1 + SETTLE_S)
        assert sim.tasks(sid)[1].state == TaskState.RUNNING
        assert sim.manager.restarts.statistics()["restarts"] == 1

    on_sim(test)


def test_max_attempts_within_the_window_stop_the_restarts() -> None:
    async def test(sim: Sim) -> None:
        policy = RestartPolicy(condition="any", delay=1 * S, max_attempts=2, window=60 * S)
        sid = await sim.create(replicas=1, env=["EXIT=2:1"], restart=policy)
        await sim.advance(30)
        tasks = sim.tasks(sid)
        assert len(tasks) == 3  # the first and two restarts, all within 60 s
        assert all(t.state == TaskState.FAILED for t in tasks)
        assert not [t for t in tasks if t.desired <= TaskState.RUNNING]
        await sim.advance(30)
        assert len(sim.tasks(sid)) == 3

    on_sim(test)


def test_restarts_older_than_the_window_no_longer_count() -> None:
    async def test(sim: Sim) -> None:
        # each task runs 20 s: a restart 21 s after the last is outside a 10 s window
        policy = RestartPolicy(condition="any", delay=1 * S, max_attempts=1, window=10 * S)
        sid = await sim.create(replicas=1, env=["EXIT=20:1"], restart=policy)
        await sim.advance(SETTLE_S + 3 * 21)
        assert sim.manager.restarts.statistics()["restarts"] == 3
        tasks = sim.tasks(sid)
        # the reaper keeps MaxAttempts + 1 tasks of the slot, as SwarmKit's
        assert len(tasks) == 2
        assert tasks[-1].state == TaskState.RUNNING

    on_sim(test)


def test_a_silent_node_is_down_after_three_periods_and_its_tasks_move() -> None:
    async def test(sim: Sim) -> None:
        sid = await sim.create(replicas=3)
        await sim.advance(SETTLE_S)
        victim = next(t for t in sim.running(sid)).node_id
        assert victim is not None
        await sim.kill_agent(victim)
        period_s = DEFAULT_HEARTBEAT_PERIOD_NS / 1e9
        # Its last beat was at most one (jittered) period before it went silent, and set
        # its deadline three such periods later: it is still up two periods on, down
        # once three of the longest periods have passed.
        still_up_s = (HEARTBEAT_GRACE - 1) * (period_s - HEARTBEAT_EPSILON_S) - 0.1
        down_by_s = HEARTBEAT_GRACE * (period_s + HEARTBEAT_EPSILON_S) + 0.1
        await sim.advance(still_up_s)
        node = sim.store.view().get_node(victim)
        assert node is not None and node.status.state == "ready"
        await sim.advance(down_by_s - still_up_s)
        node = sim.store.view().get_node(victim)
        assert node is not None and node.status.state == "down"
        assert node.status.message == "heartbeat failure"
        # its task is shut down and replaced on another node after the restart delay
        await sim.advance(5 + SETTLE_S)
        lost = [t for t in sim.tasks(sid) if t.node_id == victim]
        assert len(lost) == 1 and lost[0].desired == TaskState.SHUTDOWN
        # (the store still says RUNNING for it: no agent reports on a down node)
        elsewhere = [t for t in sim.running(sid) if t.node_id != victim]
        assert len(elsewhere) == 3 and all(t.desired == TaskState.RUNNING for t in elsewhere)

    on_sim(test)


def test_nodes_silent_together_are_marked_down_in_one_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A failure wave (issue 14): nodes whose deadlines pass together go down in one
    transaction, not one each (each would make the orchestrator look at every task of
    every service they ran, once per node)."""
    # No jitter: every node beats at the same fake instants, so their deadlines match.
    monkeypatch.setattr(dispatcher_mod.random, "uniform", lambda a, b: 0.0)

    async def test(sim: Sim) -> None:
        sid = await sim.create(replicas=8)
        await sim.advance(SETTLE_S)
        victims = sim.node_ids[:5]
        watcher = sim.store.watch("node")
        for node_id in victims:
            await sim.kill_agent(node_id)
        await sim.advance(HEARTBEAT_GRACE * DEFAULT_HEARTBEAT_PERIOD_NS / 1e9 + 0.1)
        writes = []
        while not watcher.queue.empty():
            down = {
                ev.obj.id
                for ev in watcher.queue.get_nowait()
                if ev.obj.status.state == "down"
                and (ev.old is None or ev.old.status.state != "down")
            }
            if down:
                writes.append(down)
        watcher.close()
        assert writes == [set(victims)]
        await sim.advance(5 + SETTLE_S)  # the restart delay: all 8 run on the 3 left
        # (the store still says RUNNING for the lost ones: no agent reports on a down node)
        live = [t for t in sim.running(sid) if t.desired == TaskState.RUNNING]
        assert len(live) == 8 and not {t.node_id for t in live} & set(victims)

    on_sim(test, nodes=8)
