"""Jobs on a FakeClock (see sim.py): a replicated job completes exactly TotalCompletions
times, never running more than MaxConcurrent tasks at once; a task that exits 0 is not
restarted, one that fails follows the restart policy; an update runs the job again (a
new JobIteration); a global job runs once on every node, and on a node that joins
later."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import msgspec

from shoal.api.services import service_status
from shoal.manager.controlapi.services import create_service, update_service
from shoal.manager.store import Tx
from shoal.types.base import Version
from shoal.types.node import Node, NodeSpec, NodeStatus
from shoal.types.service import (
    ContainerSpec,
    GlobalJob,
    Placement,
    ReplicatedJob,
    RestartPolicy,
    ServiceMode,
    ServiceSpec,
    TaskSpec,
)
from shoal.types.task import Task, TaskState

from .sim import S, Sim

STEP_S = 0.25


def on_sim(test: Callable[[Sim], Awaitable[None]], nodes: int = 3) -> None:
    async def main() -> None:
        async with Sim(nodes) as sim:
            await test(sim)

    asyncio.run(main())


async def create_job(
    sim: Sim,
    mode: ServiceMode,
    env: list[str],
    restart: RestartPolicy | None = None,
    constraints: list[str] | None = None,
) -> str:
    spec = ServiceSpec(
        name="job",
        mode=mode,
        task_template=TaskSpec(
            container_spec=ContainerSpec(image="busybox", command=["run"], env=env),
            restart_policy=restart,
            placement=Placement(constraints=constraints) if constraints else None,
        ),
    )
    return (await create_service(sim.store, spec)).id


def replicated(total: int | None, concurrent: int | None) -> ServiceMode:
    return ServiceMode(
        replicated_job=ReplicatedJob(max_concurrent=concurrent, total_completions=total)
    )


def active(tasks: list[Task]) -> list[Task]:
    """Tasks that hold a place among the MaxConcurrent: desired to run, not ended."""
    return [
        t
        for t in tasks
        if t.desired <= TaskState.COMPLETE and TaskState.NEW < t.state <= TaskState.RUNNING
    ]


def status_line(sim: Sim, sid: str) -> tuple[int, int, int]:
    s = service_status(sim.store.view(), sim.service(sid), set())
    return s.running_tasks, s.desired_tasks, s.completed_tasks


def test_a_replicated_job_completes_exactly_its_total_never_above_max_concurrent() -> None:
    async def test(sim: Sim) -> None:
        sid = await create_job(sim, replicated(5, 2), ["EXIT=3:0"])
        most = 0
        for _ in range(int(30 / STEP_S)):
            await sim.advance(STEP_S)
            tasks = sim.tasks(sid)
            assert len(active(tasks)) <= 2
            most = max(most, sum(1 for t in tasks if t.state == TaskState.RUNNING))
            if 0 < len(tasks) < 5:
                assert status_line(sim, sid)[1:] == (2, sum(map(is_complete, tasks)))
        assert most == 2  # it did run two at once
        tasks = sim.tasks(sid)
        assert [t.state for t in tasks] == [TaskState.COMPLETE] * 5
        assert sorted(t.slot for t in tasks) == [0, 1, 2, 3, 4]  # the CLI counts slots 0..N-1
        assert {t.desired for t in tasks} == {TaskState.COMPLETE}
        assert {t.job_iteration for t in tasks} == {Version(index=0)}
        assert status_line(sim, sid) == (0, 2, 5)  # `docker service ls`: 0/2 (5/5 completed)
        await sim.advance(60)  # completed tasks are never restarted (condition `any`)
        assert len(sim.tasks(sid)) == 5

    on_sim(test)


def is_complete(t: Task) -> int:
    return 1 if t.state == TaskState.COMPLETE else 0


def test_job_counts_take_dockerd_defaults() -> None:
    async def test(sim: Sim) -> None:
        sid = await create_job(sim, replicated(None, None), ["EXIT=1:0"])
        rj = sim.service(sid).spec.mode
        assert rj is not None and rj.replicated_job == ReplicatedJob(
            max_concurrent=1, total_completions=1
        )
        sid2 = await create_job_named(sim, "job2", replicated(None, 3))
        rj2 = sim.service(sid2).spec.mode
        assert rj2 is not None and rj2.replicated_job == ReplicatedJob(
            max_concurrent=3, total_completions=3
        )
        js = sim.service(sid).job_status
        assert js is not None and js.job_iteration == Version(index=0) and js.last_execution
        wire = msgspec.json.decode(msgspec.json.encode(sim.service(sid)))
        assert wire["JobStatus"]["JobIteration"] == {}  # dockerd: Index 0 is omitted
        assert "UpdateConfig" not in wire["Spec"]

    on_sim(test)


async def create_job_named(sim: Sim, name: str, mode: ServiceMode) -> str:
    spec = ServiceSpec(
        name=name,
        mode=mode,
        task_template=TaskSpec(container_spec=ContainerSpec(image="busybox", command=["x"])),
    )
    return (await create_service(sim.store, spec)).id


def test_a_failing_task_follows_the_restart_policy_then_its_slot_ends() -> None:
    async def test(sim: Sim) -> None:
        policy = RestartPolicy(condition="on-failure", delay=1 * S, max_attempts=2)
        sid = await create_job(sim, replicated(1, 1), ["EXIT=1:1"], restart=policy)
        await sim.advance(30)
        tasks = sim.tasks(sid)
        assert len(tasks) == 3  # the first run and two restarts
        assert {t.state for t in tasks} == {TaskState.FAILED}
        assert {t.slot for t in tasks} == {0}
        assert {t.job_iteration for t in tasks} == {Version(index=0)}
        await sim.advance(30)
        assert len(sim.tasks(sid)) == 3  # failed for good: no new task in the slot
        assert status_line(sim, sid) == (0, 1, 0)

    on_sim(test)


def test_restart_condition_any_restarts_a_failed_job_task_after_the_delay() -> None:
    async def test(sim: Sim) -> None:
        policy = RestartPolicy(condition="any", delay=10 * S)
        sid = await create_job(sim, replicated(1, 1), ["EXIT=2:3"], restart=policy)
        await sim.advance(4)
        first, held = sim.tasks(sid)
        assert (first.state, first.desired) == (TaskState.FAILED, TaskState.SHUTDOWN)
        assert held.desired == TaskState.READY and held.job_iteration == Version(index=0)
        # The first run failed at 2 s (it runs 2 s): restarted at 12 s, it fails again
        # at 14 s (status reports leave at once: no batching delay adds to those).
        await sim.advance(9.5)
        assert sim.tasks(sid)[1].desired == TaskState.COMPLETE  # started to run to completion
        assert sim.tasks(sid)[1].state == TaskState.RUNNING

    on_sim(test)


def test_condition_none_never_restarts_a_failed_job_task() -> None:
    async def test(sim: Sim) -> None:
        policy = RestartPolicy(condition="none")
        sid = await create_job(sim, replicated(2, 2), ["EXIT=1:1"], restart=policy)
        await sim.advance(30)
        assert sorted(t.slot for t in sim.tasks(sid)) == [0, 1]

    on_sim(test)


def test_an_update_runs_the_job_again_as_a_new_iteration() -> None:
    async def test(sim: Sim) -> None:
        sid = await create_job(sim, replicated(3, 3), ["EXIT=1:0"])
        await sim.advance(5)
        assert status_line(sim, sid) == (0, 3, 3)
        s = sim.service(sid)
        tt = s.spec.task_template
        assert tt is not None
        forced = msgspec.structs.replace(
            s.spec, task_template=msgspec.structs.replace(tt, force_update=1)
        )
        await update_service(sim.store, sid, s.version.index, forced)
        js = sim.service(sid).job_status
        assert js is not None and js.job_iteration == Version(index=1)
        await sim.advance(0.5)
        assert status_line(sim, sid)[2] == 0  # only the new run counts
        await sim.advance(5)
        tasks = sim.tasks(sid)
        old = [t for t in tasks if t.job_iteration == Version(index=0)]
        new = [t for t in tasks if t.job_iteration == Version(index=1)]
        assert len(old) == 3 and {t.desired for t in old} == {TaskState.SHUTDOWN}
        assert len(new) == 3 and {t.state for t in new} == {TaskState.COMPLETE}
        assert status_line(sim, sid) == (0, 3, 3)

    on_sim(test)


def test_an_update_stops_the_running_tasks_of_the_previous_run() -> None:
    async def test(sim: Sim) -> None:
        sid = await create_job(sim, replicated(2, 2), ["EXIT=100:0"])
        await sim.advance(2)
        assert status_line(sim, sid) == (2, 2, 0)
        s = sim.service(sid)
        await update_service(sim.store, sid, s.version.index, s.spec)
        await sim.advance(2)
        tasks = sim.tasks(sid)
        old = [t for t in tasks if t.job_iteration == Version(index=0)]
        assert not old  # desired REMOVE, stopped, and deleted by the reaper
        assert len([t for t in tasks if t.state == TaskState.RUNNING]) == 2

    on_sim(test)


async def add_node(sim: Sim, node_id: str) -> None:
    def create(tx: Tx) -> None:
        tx.create(
            Node(
                id=node_id,
                spec=NodeSpec(role="worker", availability="active"),
                status=NodeStatus(state="unknown"),
            )
        )

    await sim.store.update(create)
    sim.start_agent(node_id)


def test_a_global_job_runs_once_per_node_and_on_a_node_that_joins_later() -> None:
    async def test(sim: Sim) -> None:
        sid = await create_job(sim, ServiceMode(global_job=GlobalJob()), ["EXIT=2:0"])
        await sim.advance(1)
        assert status_line(sim, sid) == (3, 3, 0)  # `3/3 (0/3 completed)`
        await sim.advance(5)
        tasks = sim.tasks(sid)
        assert sorted(t.node_id or "" for t in tasks) == ["node1", "node2", "node3"]
        assert {t.state for t in tasks} == {TaskState.COMPLETE}
        assert {t.slot for t in tasks} == {None}
        assert status_line(sim, sid) == (0, 0, 3)  # `0/0 (3/3 completed)`
        await add_node(sim, "node4")
        await sim.advance(5)
        tasks = sim.tasks(sid)
        assert sorted(t.node_id or "" for t in tasks) == ["node1", "node2", "node3", "node4"]
        assert {t.state for t in tasks} == {TaskState.COMPLETE}
        await sim.advance(30)
        assert len(sim.tasks(sid)) == 4

    on_sim(test)


def test_a_global_job_skips_nodes_that_do_not_meet_its_constraints() -> None:
    async def test(sim: Sim) -> None:
        sid = await create_job(
            sim, ServiceMode(global_job=GlobalJob()), ["EXIT=1:0"], constraints=["node.id!=node2"]
        )
        await sim.advance(5)
        assert sorted(t.node_id or "" for t in sim.tasks(sid)) == ["node1", "node3"]

    on_sim(test)


def test_a_replicated_job_task_on_a_drained_node_runs_elsewhere() -> None:
    async def test(sim: Sim) -> None:
        sid = await create_job(sim, replicated(1, 1), ["EXIT=50:0"])
        await sim.advance(1)
        (first,) = sim.tasks(sid)
        assert first.state == TaskState.RUNNING and first.node_id

        def drain(tx: Tx) -> None:
            n = tx.get_node(first.node_id or "")
            assert n is not None
            tx.update(
                msgspec.structs.replace(
                    n, spec=msgspec.structs.replace(n.spec, availability="drain")
                )
            )

        await sim.store.update(drain)
        await sim.advance(8)  # the restart delay (5 s) of a replacement forced by the node
        tasks = sim.tasks(sid)
        assert len(tasks) == 2
        assert tasks[0].desired == TaskState.SHUTDOWN
        assert tasks[1].slot == 0 and tasks[1].node_id != first.node_id
        assert tasks[1].state == TaskState.RUNNING
        await sim.advance(60)
        assert [t.state for t in sim.tasks(sid)][-1] == TaskState.COMPLETE
        assert status_line(sim, sid) == (0, 1, 1)

    on_sim(test)
