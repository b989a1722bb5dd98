"""The sim runtime: an executor that only pretends, for scale tests (docs/sim.md).

A task "starts" after a configurable delay and then "runs" until it is shut down; a
job's task exits 0 after a configurable run time. A given ratio of starts fail, chosen
by a seeded hash of the task's ID, so a run with the same tasks fails the same ones
whatever order they start in. Nothing touches the system: no process, no file, no
network; every wait goes through the clock (a FakeClock in unit tests).
"""

from __future__ import annotations

import asyncio
import hashlib
import platform
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass

import shoal
from shoal.agent.executor.base import ExecutorError, ExitStatus, RuntimeState
from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.types.agent import Dependency, LogMessage, LogOptions
from shoal.types.meta import NO_TASK_META, TaskMeta
from shoal.types.node import EngineDescription, NodeDescription, NodeResources, Platform
from shoal.types.task import Task

EXECUTOR_NAME = "sim"
# What a hollow node offers the scheduler unless told otherwise: a mid-size machine.
DEFAULT_NANO_CPUS = 8 * 1_000_000_000
DEFAULT_MEMORY_BYTES = 32 * 1024**3
ERR_SIM_FAILURE = "sim: start failed (simulated failure)"
_HASH_SCALE = float(2**64)


@dataclass(frozen=True, slots=True)
class SimConfig:
    """`start_delay_s`: from start() to RUNNING. `job_run_s`: how long a job's task
    runs before it exits 0 (services run until shut down). `fail_ratio`: the share of
    starts that fail (0..1), drawn from `seed` and the task's ID."""

    start_delay_s: float = 0.0
    job_run_s: float = 0.0
    fail_ratio: float = 0.0
    seed: int = 0
    nano_cpus: int = DEFAULT_NANO_CPUS
    memory_bytes: int = DEFAULT_MEMORY_BYTES

    def fails(self, task_id: str) -> bool:
        if self.fail_ratio <= 0:
            return False
        digest = hashlib.blake2b(f"{self.seed}:{task_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / _HASH_SCALE < self.fail_ratio


class _SimTask:
    """What the pretend runtime holds for one task: whether it runs, and its exit."""

    __slots__ = ("exit", "exited", "running")

    def __init__(self) -> None:
        self.running = False
        self.exit: ExitStatus | None = None
        self.exited: asyncio.Future[ExitStatus] | None = None

    def end(self, status: ExitStatus) -> None:
        self.running = False
        if self.exit is None:
            self.exit = status
        if self.exited is not None and not self.exited.done():
            self.exited.set_result(self.exit)


class SimExecutor:
    name = EXECUTOR_NAME

    def __init__(
        self,
        hostname: str,
        engine_labels: dict[str, str] | None = None,
        config: SimConfig | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.hostname = hostname
        self.engine_labels = dict(engine_labels or {})
        self.config = config if config is not None else SimConfig()
        self.clock = clock
        self.dependencies: dict[str, Dependency] = {}
        self._tasks: dict[str, _SimTask] = {}

    def describe(self) -> NodeDescription:
        return NodeDescription(
            hostname=self.hostname,
            platform=Platform(os="linux", architecture=platform.machine()),
            resources=NodeResources(
                nano_cpus=self.config.nano_cpus, memory_bytes=self.config.memory_bytes
            ),
            engine=EngineDescription(
                engine_version=shoal.__version__, labels=dict(self.engine_labels) or None
            ),
        )

    def controller(self, task: Task, meta: TaskMeta = NO_TASK_META) -> SimController:
        return SimController(self, task)

    def known_task_ids(self) -> list[str]:
        return sorted(self._tasks)

    def running_count(self) -> int:
        return sum(1 for t in self._tasks.values() if t.running)

    async def close(self) -> None:
        for t in self._tasks.values():
            t.end(ExitStatus(128 + signal.SIGKILL, signal=signal.SIGKILL))


class SimController:
    def __init__(self, executor: SimExecutor, task: Task) -> None:
        self._ex = executor
        self.task = task
        self.task_id = task.id

    def _state(self) -> _SimTask | None:
        return self._ex._tasks.get(self.task_id)

    async def inspect(self) -> RuntimeState:
        t = self._state()
        if t is None:
            return RuntimeState(exists=False, running=False)
        return RuntimeState(
            exists=True, running=t.running, container_id=self._container_id(), exit=t.exit
        )

    async def prepare(self) -> None:
        self._ex._tasks.setdefault(self.task_id, _SimTask())

    async def start(self) -> RuntimeState:
        t = self._ex._tasks.setdefault(self.task_id, _SimTask())
        config = self._ex.config
        if config.start_delay_s > 0:
            await self._ex.clock.sleep(config.start_delay_s)
        if config.fails(self.task_id):
            t.exit = ExitStatus(1)
            raise ExecutorError(ERR_SIM_FAILURE)
        t.running = True
        if self.task.job_iteration is not None:  # a job's task ends by itself
            self._ex.clock.call_later(config.job_run_s, lambda: t.end(ExitStatus(0)))
        return RuntimeState(exists=True, running=True, container_id=self._container_id())

    async def wait(self) -> ExitStatus:
        t = self._state()
        if t is None:
            raise ExecutorError("sim: no such task")
        if t.exit is not None:
            return t.exit
        if t.exited is None:
            t.exited = asyncio.get_running_loop().create_future()
        return await asyncio.shield(t.exited)

    async def shutdown(self, grace_s: float) -> None:
        t = self._state()
        if t is not None and t.exit is None:
            t.end(ExitStatus(128 + signal.SIGTERM, signal=signal.SIGTERM))

    async def remove(self) -> None:
        t = self._ex._tasks.pop(self.task_id, None)
        if t is not None:
            t.end(ExitStatus(128 + signal.SIGKILL, signal=signal.SIGKILL))

    async def logs(self, options: LogOptions) -> AsyncIterator[LogMessage]:
        return
        yield  # an async generator with nothing to say: a hollow task writes no output

    def _container_id(self) -> str:
        return f"sim-{self.task_id}"
