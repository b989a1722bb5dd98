"""The task state machine: SwarmKit's values, one owner per move, never backwards."""

from __future__ import annotations

import itertools

import pytest

from shoal.types.task import (
    TRANSITION_OWNERS,
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

ALL_PAIRS = list(itertools.product(TaskState, TaskState))


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


def test_every_state_but_remove_has_an_owner() -> None:
    for state in TaskState:
        owners = TRANSITION_OWNERS.get(state, frozenset())
        if state is TaskState.REMOVE:
            # Only ever a desired state: no component observes a task into it.
            assert not owners
        else:
            assert owners, f"{state.name} has no owner"


def test_owner_table_keys_are_states() -> None:
    assert set(TRANSITION_OWNERS) <= set(TaskState)
    assert all(isinstance(o, Owner) for owners in TRANSITION_OWNERS.values() for o in owners)


def test_owners_are_swarmkits() -> None:
    """The table of SwarmKit's task model (design/task_model.md, design/tla/Tasks.tla)."""
    agent = frozenset({Owner.AGENT})
    assert TRANSITION_OWNERS == {
        TaskState.NEW: frozenset({Owner.ORCHESTRATOR}),
        TaskState.PENDING: frozenset({Owner.ALLOCATOR}),
        TaskState.ASSIGNED: frozenset({Owner.SCHEDULER}),
        TaskState.ACCEPTED: agent,
        TaskState.PREPARING: agent,
        TaskState.READY: agent,
        TaskState.STARTING: agent,
        TaskState.RUNNING: agent,
        TaskState.COMPLETE: agent,
        # the scheduler shuts down a still-pending task of an old spec version
        TaskState.SHUTDOWN: frozenset({Owner.AGENT, Owner.SCHEDULER}),
        TaskState.FAILED: agent,
        # the constraint enforcer (an orchestrator) rejects tasks on nodes that no longer fit
        TaskState.REJECTED: frozenset({Owner.AGENT, Owner.ORCHESTRATOR}),
        TaskState.ORPHANED: frozenset({Owner.DISPATCHER}),
    }


@pytest.mark.parametrize("owner", list(Owner), ids=lambda o: o.value)
def test_states_never_move_backwards_or_stay(owner: Owner) -> None:
    for current, new in ALL_PAIRS:
        if new <= current:
            assert not can_transition(current, new, owner), (current.name, new.name)


@pytest.mark.parametrize("owner", list(Owner), ids=lambda o: o.value)
def test_forward_moves_follow_the_owner_table(owner: Owner) -> None:
    for current, new in ALL_PAIRS:
        if new > current:
            expected = owner in TRANSITION_OWNERS.get(new, frozenset())
            assert can_transition(current, new, owner) is expected, (
                current.name,
                new.name,
                owner.value,
            )


def test_every_owned_state_is_reachable_by_its_owner() -> None:
    for state, owners in TRANSITION_OWNERS.items():
        for owner in owners:
            earlier = [s for s in TaskState if s < state]
            if state is TaskState.NEW:
                assert earlier == []  # NEW is where tasks are created, not moved to
                continue
            assert any(can_transition(s, state, owner) for s in earlier), (state.name, owner)


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
    assert not can_transition(TaskState.RUNNING, TaskState.FAILED, Owner.DISPATCHER)
    # REMOVE is never an observed state
    assert not any(can_transition(TaskState.RUNNING, TaskState.REMOVE, o) for o in Owner)


def test_task_reads_its_states_from_the_wire_names() -> None:
    status = TaskStatus(timestamp="", state="running", message="started")
    task = Task(id="t1", status=status, desired_state="shutdown")
    assert status.task_state is TaskState.RUNNING
    assert task.state is TaskState.RUNNING
    assert task.desired is TaskState.SHUTDOWN
