"""Rolling updates and rollbacks, end to end in one event loop on a FakeClock: the real
orchestrator, updater, restart supervisor, scheduler, dispatcher and agents (fake
executor, see sim.py). Delay and Monitor are waited out by advancing the clock, so a
test that spans a minute of cluster time runs in milliseconds."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from shoal.manager.orchestrator.update import (
    COMPLETED,
    PAUSED,
    ROLLBACK_COMPLETED,
    ROLLBACK_PAUSED,
    UPDATING,
)
from shoal.types.service import UpdateConfig
from shoal.types.task import TaskState

from .sim import S, Sim, env_of

# Long enough for a task to be scheduled, started and reported (a few debounce and
# batching periods), short against the Delay and Monitor periods below.
SETTLE_S = 1.0


def on_sim(test: Callable[[Sim], Awaitable[None]], nodes: int = 3) -> None:
    async def main() -> None:
        async with Sim(nodes) as sim:
            await test(sim)

    asyncio.run(main())


def versions_running(sim: Sim, service_id: str) -> list[int]:
    return sorted(sim.version_of(t) for t in sim.running(service_id))


def test_rolling_update_two_at_a_time_with_a_delay() -> None:
    async def test(sim: Sim) -> None:
        cfg = UpdateConfig(parallelism=2, delay=10 * S, monitor=5 * S)
        sid = await sim.create(replicas=4, update=cfg)
        await sim.advance(SETTLE_S)
        old = sim.spec_version(sid)
        assert versions_running(sim, sid) == [old] * 4

        await sim.update(sid, env=["V=2"])
        new = sim.spec_version(sid)
        await sim.advance(SETTLE_S)
        assert versions_running(sim, sid) == [old, old, new, new]  # two slots at once
        await sim.advance(8)  # within the delay: nothing more
        assert versions_running(sim, sid) == [old, old, new, new]
        assert sim.status(sid) == UPDATING
        await sim.advance(2 + SETTLE_S)  # the delay passed: the next two
        assert versions_running(sim, sid) == [new] * 4
        # then 10 s of delay after the last pair and one monitor period
        await sim.advance(10 + 5)
        assert sim.status(sid) == COMPLETED
        assert sim.service(sid).update_status.message == "update completed"  # type: ignore[union-attr]

    on_sim(test)


def test_a_task_failing_within_the_monitor_window_pauses_the_update() -> None:
    async def test(sim: Sim) -> None:
        cfg = UpdateConfig(parallelism=1, delay=10 * S, monitor=5 * S, failure_action="pause")
        sid = await sim.create(replicas=2, update=cfg)
        await sim.advance(SETTLE_S)
        await sim.update(sid, env=["EXIT=3:1"])  # runs 3 s, then exits 1
        await sim.advance(SETTLE_S)
        assert sim.status(sid) == UPDATING
        await sim.advance(3)
        assert sim.status(sid) == PAUSED
        failed = [t for t in sim.tasks(sid) if t.state == TaskState.FAILED]
        assert len(failed) == 1
        message = sim.service(sid).update_status.message  # type: ignore[union-attr]
        assert (
            message == f"update paused due to failure or early termination of task {failed[0].id}"
        )
        # the second slot was never touched
        assert len([t for t in sim.running(sid) if "EXIT" not in env_of(t)]) == 1

    on_sim(test)


def test_a_task_failing_after_the_monitor_window_is_no_failure() -> None:
    async def test(sim: Sim) -> None:
        cfg = UpdateConfig(parallelism=1, delay=10 * S, monitor=5 * S, failure_action="pause")
        sid = await sim.create(replicas=2, update=cfg)
        await sim.advance(SETTLE_S)
        await sim.update(sid, env=["EXIT=7:1"])  # exits after 7 s: past the 5 s monitor
        # each slot: started, then the 10 s delay; then one monitor period
        await sim.advance(SETTLE_S + 10 + SETTLE_S + 10 + 5)
        assert sim.status(sid) == COMPLETED
        assert any(t.state == TaskState.FAILED for t in sim.tasks(sid))

    on_sim(test)


def test_failures_up_to_the_max_failure_ratio_are_tolerated() -> None:
    async def test(sim: Sim) -> None:
        cfg = UpdateConfig(parallelism=1, monitor=5 * S, max_failure_ratio=0.5)
        sid = await sim.create(replicas=4, update=cfg)
        await sim.advance(SETTLE_S)
        old = sim.spec_version(sid)
        await sim.update(sid, env=["FAIL=start"])
        await sim.advance(SETTLE_S * 4)
        # 1/4 and 2/4 are within the ratio; the third failure (3/4 > 0.5) pauses
        assert sim.status(sid) == PAUSED
        still_old = [
            t for t in sim.tasks(sid) if sim.version_of(t) == old and t.desired <= TaskState.RUNNING
        ]
        assert len(still_old) == 1

    on_sim(test)


def test_failure_action_continue_goes_through_every_slot() -> None:
    async def test(sim: Sim) -> None:
        cfg = UpdateConfig(parallelism=1, monitor=5 * S, failure_action="continue")
        sid = await sim.create(replicas=3, update=cfg)
        await sim.advance(SETTLE_S)
        old = sim.spec_version(sid)
        await sim.update(sid, env=["FAIL=start"])
        await sim.advance(SETTLE_S * 3 + 5)
        assert sim.status(sid) == COMPLETED
        assert not [
            t for t in sim.tasks(sid) if sim.version_of(t) == old and t.desired <= TaskState.RUNNING
        ]

    on_sim(test)


def test_a_failed_update_rolls_back_automatically() -> None:
    async def test(sim: Sim) -> None:
        cfg = UpdateConfig(parallelism=1, monitor=5 * S, failure_action="rollback")
        rollback = UpdateConfig(parallelism=0, monitor=2 * S)
        sid = await sim.create(replicas=2, update=cfg, rollback=rollback, env=["V=1"])
        await sim.advance(SETTLE_S)
        await sim.update(sid, env=["V=2", "FAIL=start"])
        await sim.advance(SETTLE_S)
        service = sim.service(sid)
        assert service.spec.task_template.container_spec.env == ["V=1"]  # type: ignore[union-attr]
        await sim.advance(SETTLE_S + 2)
        assert sim.status(sid) == ROLLBACK_COMPLETED
        running = sim.running(sid)
        assert len(running) == 2 and all(env_of(t) == {"V": "1"} for t in running)

    on_sim(test)


def test_a_failing_rollback_pauses_and_is_never_rolled_back() -> None:
    async def test(sim: Sim) -> None:
        cfg = UpdateConfig(parallelism=1, monitor=5 * S, failure_action="rollback")
        rollback = UpdateConfig(parallelism=1, monitor=5 * S, failure_action="rollback")
        # the original tasks run 3 s and exit: fine before, a failure once monitored
        sid = await sim.create(replicas=1, update=cfg, rollback=rollback, env=["EXIT=3:0"])
        await sim.advance(SETTLE_S)
        await sim.update(sid, env=["FAIL=start"])
        await sim.advance(SETTLE_S + 3 + SETTLE_S)
        assert sim.status(sid) == ROLLBACK_PAUSED
        message = sim.service(sid).update_status.message  # type: ignore[union-attr]
        assert message.startswith("rollback paused due to failure or early termination of task")
        await sim.advance(30)
        assert sim.status(sid) == ROLLBACK_PAUSED

    on_sim(test)


def test_start_first_never_runs_fewer_tasks_than_replicas() -> None:
    async def test(sim: Sim) -> None:
        cfg = UpdateConfig(parallelism=1, monitor=2 * S, order="start-first")
        sid = await sim.create(replicas=3, update=cfg)
        await sim.advance(SETTLE_S)
        # count running tasks after every committed transaction
        running = {t.id for t in sim.running(sid)}
        lowest = len(running)
        watcher = sim.store.watch("task")

        async def count() -> None:
            nonlocal lowest
            async for events in watcher:
                for ev in events:
                    if ev.action != "remove" and ev.obj.state == TaskState.RUNNING:
                        running.add(ev.obj.id)
                    else:
                        running.discard(ev.obj.id)
                lowest = min(lowest, len(running))

        counter = asyncio.create_task(count())
        new_versions: list[int] = []
        for env in (["V=2"], ["V=3", "FAIL=start"]):  # one that works, one that fails
            await sim.update(sid, env=env)
            new_versions.append(sim.spec_version(sid))
            await sim.advance(SETTLE_S * 3 + 2 + SETTLE_S)
        counter.cancel()
        watcher.close()
        assert lowest == 3
        assert sim.status(sid) == PAUSED  # the failing one paused, old tasks kept
        assert versions_running(sim, sid) == [new_versions[0]] * 3

    on_sim(test)


def test_a_slot_replaced_while_the_update_waited_is_not_updated_twice() -> None:
    """The updater took its slots when the update began; while it waits out its delay,
    the node running a slot it has not reached goes down and the orchestrator replaces
    that task. When the updater reaches the slot, its old task is already shut down: it
    must not add a task of its own beside the replacement (SwarmKit's removeOldTasks:
    "already shut down when reached by updater"). Found by the crash suite."""

    async def test(sim: Sim) -> None:
        cfg = UpdateConfig(parallelism=1, delay=60 * S, monitor=1 * S)
        sid = await sim.create(replicas=2, update=cfg)
        await sim.advance(SETTLE_S)
        old = sim.spec_version(sid)
        await sim.update(sid, env=["V=2"])
        new = sim.spec_version(sid)
        await sim.advance(SETTLE_S)
        assert versions_running(sim, sid) == [old, new]  # one slot done, the delay runs
        (waiting,) = sim.running(sid, old)
        await sim.kill_agent(waiting.node_id or "")
        await sim.advance(30)  # the node is down, its task replaced elsewhere
        await sim.advance(60 + SETTLE_S)  # the updater reaches that slot
        desired: dict[int, int] = {}
        for t in sim.tasks(sid):
            if t.desired <= TaskState.RUNNING:
                desired[t.slot or 0] = desired.get(t.slot or 0, 0) + 1
        assert sorted(desired.values()) == [1, 1], [
            (t.slot, t.state, t.desired, t.node_id) for t in sim.tasks(sid)
        ]
        # (the task on the dead node is still last reported running: desired shut down)
        wanted = [t for t in sim.running(sid) if t.desired == TaskState.RUNNING]
        assert sorted(sim.version_of(t) for t in wanted) == [new, new]

    on_sim(test)
