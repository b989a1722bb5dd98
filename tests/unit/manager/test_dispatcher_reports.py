"""The dispatcher keeps a task's observed state moving forward, and lets a node report
only its own tasks: a late RUNNING after FAILED, or a report about another node's task,
changes nothing in the store. Driven through the public session API (`update_task_status`)
and the loop's own flush at `stop()`, against a real in-memory store."""

from __future__ import annotations

import asyncio

from shoal.manager.dispatcher.dispatcher import Dispatcher
from shoal.manager.store import MemoryBackend, Store, Tx
from shoal.types.agent import TaskStatusUpdate
from shoal.types.node import Node, NodeSpec, NodeStatus
from shoal.types.task import Task, TaskState, TaskStatus

from ..storeutil import commit


def node(node_id: str) -> Node:
    return Node(
        id=node_id,
        spec=NodeSpec(role="worker", availability="active"),
        status=NodeStatus(state="ready"),
    )


def task(task_id: str, node_id: str, state: TaskState) -> Task:
    return Task(
        id=task_id,
        service_id="svc",
        node_id=node_id,
        status=TaskStatus(timestamp="", state=state.wire, message="before"),
        desired_state=TaskState.RUNNING.wire,
    )


def report(task_id: str, state: TaskState, message: str) -> TaskStatusUpdate:
    return TaskStatusUpdate(
        task_id=task_id, status=TaskStatus(timestamp="", state=state.wire, message=message)
    )


def reported(tasks: list[Task], reports: list[tuple[str, TaskStatusUpdate]]) -> dict[str, Task]:
    """The tasks as stored after the dispatcher took `reports` ((node, update) pairs)
    and flushed them."""
    store = Store(MemoryBackend())

    def create(tx: Tx) -> None:
        for obj in [node("n1"), node("n2"), *tasks]:
            tx.create(obj)

    commit(store, create)

    async def main() -> None:
        dispatcher = Dispatcher(store)
        loop = asyncio.create_task(dispatcher.run())
        for node_id, update in reports:
            await dispatcher.update_task_status(node_id, [update])
        dispatcher.stop()  # the loop flushes what is pending as it ends
        await asyncio.wait_for(loop, timeout=5)

    asyncio.run(main())
    view = store.view()
    out = {}
    for t in tasks:
        stored = view.get_task(t.id)
        assert stored is not None
        out[t.id] = stored
    return out


def test_a_forward_report_is_written() -> None:
    after = reported(
        [task("t1", "n1", TaskState.ASSIGNED)],
        [("n1", report("t1", TaskState.RUNNING, "started"))],
    )
    assert (after["t1"].state, after["t1"].status.message) == (TaskState.RUNNING, "started")


def test_running_after_failed_is_ignored() -> None:
    after = reported(
        [task("t1", "n1", TaskState.FAILED), task("control", "n1", TaskState.RUNNING)],
        [
            ("n1", report("t1", TaskState.RUNNING, "late")),
            ("n1", report("control", TaskState.COMPLETE, "finished")),
        ],
    )
    assert (after["t1"].state, after["t1"].status.message) == (TaskState.FAILED, "before")
    # The same flush wrote the forward report beside it.
    assert after["control"].state == TaskState.COMPLETE


def test_a_report_for_another_nodes_task_is_ignored() -> None:
    after = reported(
        [task("theirs", "n2", TaskState.RUNNING), task("mine", "n1", TaskState.RUNNING)],
        [
            ("n1", report("theirs", TaskState.FAILED, "forged")),
            ("n1", report("mine", TaskState.FAILED, "crashed")),
        ],
    )
    assert (after["theirs"].state, after["theirs"].status.message) == (
        TaskState.RUNNING,
        "before",
    )
    assert after["mine"].state == TaskState.FAILED


def test_the_owner_node_still_reports_after_a_forged_report() -> None:
    """A forged report queued first does not replace the owner's own report."""
    after = reported(
        [task("t1", "n2", TaskState.RUNNING)],
        [
            ("n1", report("t1", TaskState.FAILED, "forged")),
            ("n2", report("t1", TaskState.COMPLETE, "done")),
        ],
    )
    assert (after["t1"].state, after["t1"].status.message) == (TaskState.COMPLETE, "done")
