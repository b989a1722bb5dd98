"""A whole cluster in one event loop, on a FakeClock: a real Store(MemoryBackend()), the
real Manager (every loop), and real Agents talking to its dispatcher in-process, each
with a fake executor whose tasks run until stopped, fail to start, or exit after some
(fake) seconds. Time moves only through `await sim.advance(s)`: nothing sleeps.

What a fake task does is read from its container spec's environment:
  FAIL=start          the start fails (the task ends FAILED before it runs)
  EXIT=<s>:<code>     it runs <s> seconds, then exits with <code>
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from shoal.agent.agent import Agent
from shoal.agent.executor.base import ExecutorError, ExitStatus, RuntimeState
from shoal.clock import FakeClock, TimerHandle
from shoal.manager.controlapi.services import create_service, update_service
from shoal.manager.manager import Manager
from shoal.manager.store import MemoryBackend, Store, Tx
from shoal.types.agent import Dependency, LogMessage, LogOptions
from shoal.types.meta import NO_TASK_META, TaskMeta
from shoal.types.node import Node, NodeDescription, NodeResources, NodeSpec, NodeStatus
from shoal.types.service import (
    ContainerSpec,
    ReplicatedService,
    RestartPolicy,
    Service,
    ServiceMode,
    ServiceSpec,
    TaskSpec,
    UpdateConfig,
)
from shoal.types.task import Task, TaskState

S = 1_000_000_000  # one second in ns, as specs count


def env_of(task: Task) -> dict[str, str]:
    cs = task.spec.container_spec
    return dict(e.split("=", 1) for e in (cs.env or [])) if cs else {}


class FakeController:
    def __init__(self, clock: FakeClock, task: Task) -> None:
        self.task_id = task.id
        self._clock = clock
        self._env = env_of(task)
        self._exit: asyncio.Future[ExitStatus] = asyncio.get_running_loop().create_future()
        self._timer: TimerHandle | None = None

    async def inspect(self) -> RuntimeState:
        return RuntimeState(exists=False, running=False)

    async def prepare(self) -> None:
        pass

    async def start(self) -> RuntimeState:
        if self._env.get("FAIL") == "start":
            raise ExecutorError("fake: the task failed to start")
        if "EXIT" in self._env:
            after, code = self._env["EXIT"].split(":")
            self._timer = self._clock.call_later(
                float(after), lambda: self._end(ExitStatus(int(code)))
            )
        return RuntimeState(exists=True, running=True, pid=1)

    def _end(self, status: ExitStatus) -> None:
        if not self._exit.done():
            self._exit.set_result(status)

    async def wait(self) -> ExitStatus:
        return await asyncio.shield(self._exit)

    async def shutdown(self, grace_s: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._end(ExitStatus(128 + signal.SIGTERM, signal=signal.SIGTERM))

    async def remove(self) -> None:
        pass

    async def logs(self, options: LogOptions) -> AsyncIterator[LogMessage]:
        return
        yield  # an async generator with nothing to say


class FakeExecutor:
    name = "fake"

    def __init__(self, clock: FakeClock, hostname: str) -> None:
        self._clock = clock
        self._hostname = hostname
        self.controllers: dict[str, FakeController] = {}
        self.dependencies: dict[str, Dependency] = {}  # secrets and configs delivered

    def describe(self) -> NodeDescription:
        return NodeDescription(
            hostname=self._hostname,
            resources=NodeResources(nano_cpus=4 * S, memory_bytes=8 << 30),
        )

    def controller(self, task: Task, meta: TaskMeta = NO_TASK_META) -> FakeController:
        c = self.controllers.get(task.id)
        if c is None:
            c = self.controllers[task.id] = FakeController(self._clock, task)
        return c

    def known_task_ids(self) -> list[str]:
        return list(self.controllers)

    async def close(self) -> None:
        pass


class Sim:
    def __init__(self, nodes: int = 3) -> None:
        self.clock = FakeClock()
        self.store = Store(MemoryBackend(), self.clock)
        self.manager = Manager(self.store, self.clock)
        self.node_ids = [f"node{i}" for i in range(1, nodes + 1)]
        self.agents: dict[str, Agent] = {}

    async def __aenter__(self) -> Sim:
        def create(tx: Tx) -> None:
            for node_id in self.node_ids:
                tx.create(
                    Node(
                        id=node_id,
                        spec=NodeSpec(role="worker", availability="active"),
                        status=NodeStatus(state="unknown"),
                    )
                )

        await self.store.update(create)
        self.manager.start()
        for node_id in self.node_ids:
            self.start_agent(node_id)
        await self.advance(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for agent in self.agents.values():
            await agent.stop()
        await self.manager.stop()

    def start_agent(self, node_id: str) -> Agent:
        executor = FakeExecutor(self.clock, node_id)
        agent = Agent(node_id, "10.0.0.1", executor, self.manager.dispatcher, clock=self.clock)
        agent.start()
        self.agents[node_id] = agent
        return agent

    async def kill_agent(self, node_id: str) -> None:
        """The node goes silent: no heartbeat, no report (its tasks left as they are)."""
        await self.agents.pop(node_id).stop(stop_tasks=False)

    async def advance(self, seconds: float) -> None:
        await self.clock.advance(seconds)

    # services --------------------------------------------------------------------------
    async def create(
        self,
        replicas: int = 1,
        env: list[str] | None = None,
        update: UpdateConfig | None = None,
        rollback: UpdateConfig | None = None,
        restart: RestartPolicy | None = None,
    ) -> str:
        spec = ServiceSpec(
            name="web",
            mode=ServiceMode(replicated=ReplicatedService(replicas=replicas)),
            task_template=TaskSpec(
                container_spec=ContainerSpec(image="busybox", command=["run"], env=env),
                restart_policy=restart,
            ),
            update_config=update,
            rollback_config=rollback,
        )
        service = await create_service(self.store, spec)
        return service.id

    async def update(self, service_id: str, **template: Any) -> None:
        """A new spec: the container spec's fields in `template` changed."""
        current = self.service(service_id)
        tt = current.spec.task_template
        assert tt is not None and tt.container_spec is not None
        cs = msgspec.structs.replace(tt.container_spec, **template)
        spec = msgspec.structs.replace(
            current.spec, task_template=msgspec.structs.replace(tt, container_spec=cs)
        )
        await update_service(self.store, service_id, current.version.index, spec)

    def service(self, service_id: str) -> Service:
        s = self.store.view().get_service(service_id)
        assert s is not None
        return s

    def spec_version(self, service_id: str) -> int:
        return self.store.view().service_meta(service_id).spec_version

    def version_of(self, task: Task) -> int:
        return self.store.view().task_meta(task.id).spec_version

    def status(self, service_id: str) -> str | None:
        us = self.service(service_id).update_status
        return us.state if us else None

    def tasks(self, service_id: str) -> list[Task]:
        return sorted(
            self.store.view().tasks_of_service(service_id), key=lambda t: (t.created_at, t.id)
        )

    def running(self, service_id: str, version: int | None = None) -> list[Task]:
        return [
            t
            for t in self.tasks(service_id)
            if t.state == TaskState.RUNNING and (version is None or self.version_of(t) == version)
        ]
