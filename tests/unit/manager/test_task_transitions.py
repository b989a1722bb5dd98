"""Who moves a task, and only forward, seen from the components that do it against a
real in-memory store: the allocator (NEW → PENDING), the scheduler (PENDING →
ASSIGNED), the orchestrator (a finished task is shut down and replaced, never revived).
The dispatcher's side (agents' reports) is in test_dispatcher_reports.py."""

from __future__ import annotations

import asyncio

import msgspec

from shoal.manager.allocator.allocator import Allocator
from shoal.manager.orchestrator.replicated import ReplicatedOrchestrator
from shoal.manager.orchestrator.restart import RestartSupervisor
from shoal.manager.orchestrator.update import UpdateSupervisor
from shoal.manager.store import Store, Tx
from shoal.types.service import (
    ContainerSpec,
    ReplicatedService,
    Service,
    ServiceMode,
    ServiceSpec,
    TaskSpec,
)
from shoal.types.task import Task, TaskState

from ..storeutil import commit, run
from .test_scheduler import make_node, make_task, new_store, scheduler_for, stored


def moved_to(store: Store, task_id: str, state: TaskState, by: TaskState) -> Task:
    def move(tx: Tx) -> None:
        t = tx.get_task(task_id)
        assert t is not None
        status = msgspec.structs.replace(t.status, state=state.wire, message="agent")
        tx.update(msgspec.structs.replace(t, status=status))

    commit(store, move)
    t = stored(store, task_id)
    assert t.state == state and by < state
    return t


def test_the_scheduler_assigns_a_pending_task() -> None:
    store = new_store(make_node("n1"), make_task("t1"))
    run(scheduler_for(store).tick())
    t = stored(store, "t1")
    assert (t.state, t.node_id) == (TaskState.ASSIGNED, "n1")


def test_the_scheduler_never_moves_a_task_back_to_assigned() -> None:
    """A decision made on a view the store has since overtaken (the task was assigned
    and started elsewhere meanwhile) is dropped, not written over the newer state."""
    store = new_store(make_node("n1"), make_task("t1"))
    sched = scheduler_for(store)  # sees t1 pending
    moved_to(store, "t1", TaskState.RUNNING, by=TaskState.PENDING)
    run(sched.tick())
    t = stored(store, "t1")
    assert (t.state, t.status.message, t.node_id) == (TaskState.RUNNING, "agent", None)


def run_until_quiet(*loops: Allocator | ReplicatedOrchestrator) -> None:
    """Start the loops, let their start-up sweeps commit, then stop them."""

    async def main() -> None:
        tasks = [asyncio.create_task(loop.run()) for loop in loops]
        for _ in range(10):  # each sweep is one transaction; a few turns suffice
            await asyncio.sleep(0)
        for loop, task in zip(loops, tasks, strict=True):
            loop.stop()
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


def test_the_allocator_moves_new_tasks_only() -> None:
    store = new_store(
        make_task("fresh", state=TaskState.NEW),
        make_task("ahead", node_id="n1", state=TaskState.RUNNING),
    )
    run_until_quiet(Allocator(store))
    assert stored(store, "fresh").state == TaskState.PENDING
    assert stored(store, "ahead").state == TaskState.RUNNING


def test_the_orchestrator_replaces_a_failed_task_without_reviving_it() -> None:
    spec = ServiceSpec(
        name="web",
        mode=ServiceMode(replicated=ReplicatedService(replicas=1)),
        task_template=TaskSpec(container_spec=ContainerSpec(image="busybox")),
    )
    failed = msgspec.structs.replace(
        make_task("old", "svc", slot=1, node_id="n1", state=TaskState.FAILED),
        spec=spec.task_template,
    )
    store = new_store(make_node("n1"), failed)
    commit(store, lambda tx: tx.create(Service(id="svc", spec=spec)))
    restarts = RestartSupervisor(store)
    run_until_quiet(ReplicatedOrchestrator(store, restarts, UpdateSupervisor(store)))

    old = stored(store, "old")
    assert (old.state, old.desired) == (TaskState.FAILED, TaskState.SHUTDOWN)
    (new,) = [t for t in store.view().tasks_of_service("svc") if t.id != "old"]
    # created NEW in the same slot, held until its restart delay has passed
    assert (new.state, new.desired, new.slot) == (TaskState.NEW, TaskState.READY, 1)
