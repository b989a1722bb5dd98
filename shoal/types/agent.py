"""What agents and the dispatcher say to each other, and the seams between them.

The agent never imports the manager: both sides meet in these types. Today the
daemon wires them in-process; the cluster port (mutual TLS) carries the same messages.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

import msgspec

from shoal.types.base import Model
from shoal.types.meta import NO_TASK_META, TaskMeta
from shoal.types.network import NetworkUpdate
from shoal.types.node import NodeDescription
from shoal.types.task import Task, TaskStatus


class AssignedTask(Model):
    """A task a node must run: Docker's task, and beside it what shoal keeps about it
    that the agent needs (the service's name, the registry credentials)."""

    task: Task
    meta: TaskMeta = NO_TASK_META


class Dependency(Model):
    """A secret's or config's payload a task on the node needs: `key` is
    "secret:<id>" or "config:<id>". Kept in the agent's memory only."""

    key: str
    data: bytes
    # the config or secret is a template (`--template-driver golang`), rendered per task
    template: bool = False


class Assignment(Model):
    """A change to the set of tasks a node must run. The first one a session sends is
    complete (`full`); later ones carry only what changed. Dependencies (secrets,
    configs) come with the first task that needs them on the node, and are dropped
    (`removed_dependencies`) when no task there needs them any more."""

    full: bool = False
    tasks: list[AssignedTask] = []
    removed: list[str] = []
    dependencies: list[Dependency] = []
    removed_dependencies: list[str] = []
    # The networks the node's tasks attach to, their peers and names (types/network.py);
    # None when nothing changed.
    network: NetworkUpdate | None = None
    # Draining (docs/networking.md): each assignment that carries a network update has
    # the session's next `network_seq` (from 1); the agent acknowledges the highest it
    # has applied (`update_task_status(..., applied=)`). `drained`: tasks of this node
    # that are leaving and that every node has taken out of its backends: the agent
    # may give them their stop signal now (it does not wait for this longer than
    # min(DRAIN_TIMEOUT_S, the task's stop grace period)).
    network_seq: int = 0
    drained: list[str] = []


class TaskStatusUpdate(Model):
    task_id: str = msgspec.field(name="TaskID")
    status: TaskStatus


class LogOptions(Model):
    follow: bool = False
    tail: int | None = None  # None: everything
    since_ns: int = 0
    until_ns: int = 0
    stdout: bool = True
    stderr: bool = True


class LogMessage(Model):
    task_id: str = msgspec.field(name="TaskID")
    timestamp_ns: int
    stream: int  # 1 stdout, 2 stderr
    data: bytes
    # The log driver's extra attributes (`--log-opt env=...`), which `details` shows.
    attrs: dict[str, str] | None = None


class LogSource(Protocol):
    """What a node offers the manager's log broker: its tasks' logs."""

    def task_logs(self, task_id: str, options: LogOptions) -> AsyncIterator[LogMessage]: ...


class DispatcherSession(Protocol):
    """The agent's view of the dispatcher (one session per node)."""

    async def register(
        self, node_id: str, description: NodeDescription, addr: str, logs: LogSource
    ) -> float:
        """Start a session; answers the heartbeat period in seconds."""
        ...

    async def heartbeat(self, node_id: str) -> float: ...

    def assignments(self, node_id: str) -> AsyncIterator[Assignment]: ...

    async def update_task_status(
        self, node_id: str, updates: list[TaskStatusUpdate], applied: int = 0
    ) -> None:
        """Report task statuses; `applied`, when not 0, acknowledges that the node
        has applied every network update up to that `Assignment.network_seq`."""
        ...
