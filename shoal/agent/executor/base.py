"""The executor interface: how the agent runs one task, whatever the runtime.

Modelled on SwarmKit's exec.Executor / exec.Controller. The agent's task manager
drives a Controller through the task states; the controller only does the work.
Errors a controller raises are `ExecutorError`s; the agent maps them onto task states
(REJECTED before STARTING, FAILED after).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from shoal.types.agent import Dependency, LogMessage, LogOptions
from shoal.types.meta import NO_TASK_META, TaskMeta
from shoal.types.network import PortMapping
from shoal.types.node import NodeDescription
from shoal.types.task import Task


class ExecutorError(Exception):
    """A task could not be prepared, started or stopped; the message goes into the
    task's status `Err` as the user will read it."""


@dataclass(frozen=True, slots=True)
class ExitStatus:
    exit_code: int
    # For a task killed by a signal, the signal number (exit_code is then 128+signal).
    signal: int | None = None
    oom_killed: bool = False


@dataclass(frozen=True, slots=True)
class RuntimeState:
    """What the runtime knows of a task it may already run (after an agent restart)."""

    exists: bool
    running: bool
    pid: int | None = None
    container_id: str | None = None
    exit: ExitStatus | None = None
    # The host-mode ports the runtime bound for the running task, when it knows them
    # (the engine's, with the numbers it picked); None: the task's own spec says.
    host_ports: tuple[PortMapping, ...] | None = None


class Controller(Protocol):
    """Runs one task. Every method may be called again after a daemon restart."""

    task_id: str

    async def inspect(self) -> RuntimeState:
        """What the runtime already has for this task (for adoption on restart)."""
        ...

    async def prepare(self) -> None:
        """Everything short of starting: validate the spec, pull, create. Raises
        ExecutorError when the task can never run (it is then REJECTED)."""
        ...

    async def start(self) -> RuntimeState:
        """Start the task; returns once it runs (pid / container id set)."""
        ...

    async def wait(self) -> ExitStatus:
        """Block until the task exits; works for a task started by an earlier daemon."""
        ...

    async def shutdown(self, grace_s: float) -> None:
        """Stop: the stop signal (SIGTERM), then SIGKILL after `grace_s` seconds."""
        ...

    async def remove(self) -> None:
        """Release everything the task holds on the node (its files, its logs)."""
        ...

    def logs(self, options: LogOptions) -> AsyncIterator[LogMessage]: ...


class Executor(Protocol):
    name: str
    # The secrets and configs the dispatcher sent ("secret:<id>" -> payload), in
    # memory only; the agent keeps it up to date from its assignments.
    dependencies: dict[str, Dependency]

    def describe(self) -> NodeDescription:
        """Platform, resources and engine of this node as the runtime sees them."""
        ...

    def controller(self, task: Task, meta: TaskMeta = NO_TASK_META) -> Controller:
        """The controller of `task`; `meta` is what shoal keeps beside it (the
        service's name, registry credentials), empty for a task the agent only
        finds on the node."""
        ...

    def known_task_ids(self) -> list[str]:
        """IDs of tasks the runtime has state for (to clean up what no longer exists)."""
        ...

    async def close(self) -> None: ...
