"""Tasks and their state machine, as SwarmKit defines it.

States are spaced by 64 so new ones can be inserted; a task's observed state only ever
moves forward ("given two observations, the greater is correct").
"""

from __future__ import annotations

import enum
from typing import Literal, cast, get_args

import msgspec

from shoal.types.base import Model, Version
from shoal.types.network import NetworkAttachment
from shoal.types.service import TaskSpec


class TaskState(enum.IntEnum):
    NEW = 0
    PENDING = 64
    ASSIGNED = 192
    ACCEPTED = 256
    PREPARING = 320
    READY = 384
    STARTING = 448
    RUNNING = 512
    COMPLETE = 576
    SHUTDOWN = 640
    FAILED = 704
    REJECTED = 768
    REMOVE = 800
    ORPHANED = 832

    @property
    def wire(self) -> StateName:
        """The lowercase name Docker puts on the wire ("running")."""
        return _WIRE_OF[self]

    @classmethod
    def from_wire(cls, name: str) -> TaskState:
        return _BY_WIRE[name]

    @property
    def terminal(self) -> bool:
        return self > TaskState.RUNNING


# The states' names as Docker writes them: a TaskStatus with any other state does not
# decode, so a bad report from an agent is refused where it arrives.
StateName = Literal[
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
_BY_WIRE: dict[str, TaskState] = {s.name.lower(): s for s in TaskState}
# Looked up, not computed: the scheduler writes a state per task (100k in one pass).
_WIRE_OF: dict[TaskState, StateName] = {s: cast(StateName, w) for w, s in _BY_WIRE.items()}
assert set(get_args(StateName)) == set(_BY_WIRE), "StateName and TaskState disagree"


class Owner(enum.Enum):
    """The component that may move a task into a state."""

    ALLOCATOR = "allocator"
    SCHEDULER = "scheduler"
    AGENT = "agent"


# Who moves a task into each observed state (SwarmKit's design/task_model.md), as shoal's
# code does it: each owner asks `can_transition` before it writes. A task is created NEW
# (by an orchestrator), which is no transition. REMOVE is only ever a desired state.
# Moves SwarmKit makes and shoal does not yet (the scheduler shutting down a pending
# task, the constraint enforcer rejecting one, the dispatcher orphaning the tasks of a
# node down for a day) get their owner when the code that makes them lands.
TRANSITION_OWNERS: dict[TaskState, frozenset[Owner]] = {
    TaskState.PENDING: frozenset({Owner.ALLOCATOR}),
    TaskState.ASSIGNED: frozenset({Owner.SCHEDULER}),
    TaskState.ACCEPTED: frozenset({Owner.AGENT}),
    TaskState.PREPARING: frozenset({Owner.AGENT}),
    TaskState.READY: frozenset({Owner.AGENT}),
    TaskState.STARTING: frozenset({Owner.AGENT}),
    TaskState.RUNNING: frozenset({Owner.AGENT}),
    TaskState.COMPLETE: frozenset({Owner.AGENT}),
    TaskState.SHUTDOWN: frozenset({Owner.AGENT}),
    TaskState.FAILED: frozenset({Owner.AGENT}),
    TaskState.REJECTED: frozenset({Owner.AGENT}),
}


def can_transition(current: TaskState, new: TaskState, owner: Owner) -> bool:
    """True when `owner` may move a task observed in `current` to `new`."""
    if new <= current:
        return False
    return owner in TRANSITION_OWNERS.get(new, frozenset())


class ContainerStatus(Model):
    container_id: str | None = msgspec.field(default=None, name="ContainerID")
    pid: int | None = msgspec.field(default=None, name="PID")
    exit_code: int | None = None


class PortStatus(Model):
    ports: list[dict[str, object]] | None = None


class TaskStatus(Model, kw_only=True):
    timestamp: str
    state: StateName
    message: str
    err: str | None = None
    container_status: ContainerStatus | None = None
    port_status: PortStatus | None = None

    @property
    def task_state(self) -> TaskState:
        return TaskState.from_wire(self.state)


class Task(Model, kw_only=True):
    id: str = msgspec.field(name="ID")
    version: Version = Version()
    created_at: str = ""
    updated_at: str = ""
    name: str | None = None
    labels: dict[str, str] | None = None
    spec: TaskSpec = TaskSpec()
    service_id: str = msgspec.field(default="", name="ServiceID")
    slot: int | None = None
    node_id: str | None = msgspec.field(default=None, name="NodeID")
    status: TaskStatus
    desired_state: str
    # The JobStatus.JobIteration of the job this task runs for; None for services.
    job_iteration: Version | None = None
    # Set by the allocator: the networks the task attaches to and its address on each.
    networks_attachments: list[NetworkAttachment] | None = None

    @property
    def state(self) -> TaskState:
        return _BY_WIRE[self.status.state]

    @property
    def desired(self) -> TaskState:
        return _BY_WIRE[self.desired_state]


def stub_task(task_id: str) -> Task:
    """A task with only its ID: enough to reach a runtime's state for a task the agent no
    longer knows (left behind by an earlier daemon)."""
    return Task(
        id=task_id,
        status=TaskStatus(timestamp="", state=TaskState.NEW.wire, message=""),
        desired_state=TaskState.SHUTDOWN.wire,
    )
