"""The task state machine: SwarmKit's values and wire names, and a few moves pinned by
hand. How each component applies it is tested where it matters: the dispatcher
(manager/test_dispatcher_reports.py) and the allocator, scheduler and orchestrator
(manager/test_task_transitions.py)."""

from __future__ import annotations

import pytest

from shoal.types.task import (
    Owner,
    Task,
    TaskState,
    TaskStatus,
    can_transition,
)

# SwarmKit's api/types.proto, enum TaskState (the wire name is the lowercase name).
SWARMKIT_VALUES = {
    "NEW": 0,
    "PENDING": 64,
    "ASSIGNED": 192,
    "ACCEPTED": 256,
    "PREPARING": 320,
    "READY": 384,
    "STARTING": 448,
    "RUNNING": 512,
    "COMPLETE": 576,
    "SHUTDOWN": 640,
    "FAILED": 704,
    "REJECTED": 768,
    "REMOVE": 800,
    "ORPHANED": 832,
}


def test_values_are_swarmkits() -> None:
    assert {s.name: s.value for s in TaskState} == SWARMKIT_VALUES


def test_declaration_order_is_value_order() -> None:
    values = [s.value for s in TaskState]
    assert values == sorted(values)
    assert len(set(values)) == len(values)


@pytest.mark.parametrize("state", list(TaskState), ids=lambda s: s.name)
def test_wire_roundtrip(state: TaskState) -> None:
    assert state.wire == state.name.lower()
    assert TaskState.from_wire(state.wire) is state


def test_wire_names_are_dockers() -> None:
    # Engine API v1.41 TaskState, without "allocated" (SwarmKit dropped ALLOCATED, 128).
    assert [s.wire for s in TaskState] == [
        "new",
        "pending",
        "assigned",
        "accepted",
        "preparing",
        "ready",
        "starting",
        "running",
        "complete",
        "shutdown",
        "failed",
        "rejected",
        "remove",
        "orphaned",
    ]


def test_from_wire_rejects_unknown_names() -> None:
    with pytest.raises(KeyError):
        TaskState.from_wire("allocated")
    with pytest.raises(KeyError):
        TaskState.from_wire("")


def test_terminal_is_everything_after_running() -> None:
    assert [s for s in TaskState if s.terminal] == [
        TaskState.COMPLETE,
        TaskState.SHUTDOWN,
        TaskState.FAILED,
        TaskState.REJECTED,
        TaskState.REMOVE,
        TaskState.ORPHANED,
    ]


def test_the_ordinary_life_of_a_task() -> None:
    path = [
        (TaskState.PENDING, Owner.ALLOCATOR),
        (TaskState.ASSIGNED, Owner.SCHEDULER),
        (TaskState.ACCEPTED, Owner.AGENT),
        (TaskState.PREPARING, Owner.AGENT),
        (TaskState.READY, Owner.AGENT),
        (TaskState.STARTING, Owner.AGENT),
        (TaskState.RUNNING, Owner.AGENT),
        (TaskState.COMPLETE, Owner.AGENT),
    ]
    state = TaskState.NEW
    for new, owner in path:
        assert can_transition(state, new, owner), (state.name, new.name)
        state = new


def test_no_component_moves_a_task_it_does_not_own() -> None:
    assert not can_transition(TaskState.PENDING, TaskState.ASSIGNED, Owner.AGENT)
    assert not can_transition(TaskState.NEW, TaskState.RUNNING, Owner.SCHEDULER)
    assert not can_transition(TaskState.RUNNING, TaskState.ORPHANED, Owner.AGENT)
    assert not can_transition(TaskState.NEW, TaskState.ASSIGNED, Owner.ALLOCATOR)
    # never backwards, never in place
    assert not can_transition(TaskState.FAILED, TaskState.RUNNING, Owner.AGENT)
    assert not can_transition(TaskState.RUNNING, TaskState.RUNNING, Owner.AGENT)
    assert not can_transition(TaskState.ASSIGNED, TaskState.PENDING, Owner.ALLOCATOR)
    # REMOVE is never an observed state
    assert not any(can_transition(TaskState.RUNNING, TaskState.REMOVE, o) for o in Owner)


def test_task_reads_its_states_from_the_wire_names() -> None:
    status = TaskStatus(timestamp="", state="running", message="started")
    task = Task(id="t1", status=status, desired_state="shutdown")
    assert status.task_state is TaskState.RUNNING
    assert task.state is TaskState.RUNNING
    assert task.desired is TaskState.SHUTDOWN
