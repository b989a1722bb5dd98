"""Drives one task through its states with an executor controller.

As SwarmKit's exec.Do: each step moves the observed state one notch, towards the
desired state; PREPARING→READY, STARTING→RUNNING and RUNNING→COMPLETE may pass the
desired state, other steps wait until it is above. An error before STARTING rejects the
task, one after fails it. A task that an earlier daemon started is adopted: if its
process still runs, the runner just waits on it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Sequence

import msgspec

from shoal.agent.executor.base import Controller, ExecutorError, ExitStatus, RuntimeState
from shoal.agent.starts import StartSlots
from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.log import get_logger
from shoal.metrics import Metrics
from shoal.types.base import format_time
from shoal.types.network import PortMapping
from shoal.types.task import ContainerStatus, PortStatus, Task, TaskState, TaskStatus

DEFAULT_STOP_GRACE_S = 10.0
# How long a leaving task on networks waits, at most, for the manager's word that every
# node has taken it out of its backends before it gets its stop signal (never longer
# than its stop grace period): a node that does not answer must not hold a stop.
DRAIN_TIMEOUT_S = 2.0
MSG = {
    TaskState.ACCEPTED: "accepted",
    TaskState.PREPARING: "preparing",
    TaskState.READY: "prepared",
    TaskState.STARTING: "starting",
    TaskState.RUNNING: "started",
    TaskState.COMPLETE: "finished",
    TaskState.SHUTDOWN: "shutdown",
}
ERR_GONE = "task process is gone: it was not running when the agent restarted"

log = get_logger("shoal.agent")

Report = Callable[[str, TaskStatus], None]


def stop_grace_s(task: Task) -> float:
    cs = task.spec.container_spec
    if cs is not None and cs.stop_grace_period is not None:
        return cs.stop_grace_period / 1e9
    return DEFAULT_STOP_GRACE_S


def exit_error(status: ExitStatus) -> str:
    # dockerd's wording, OOM kill or not: it gives the cause only when the container's
    # State.Error has one, and an OOM kill sets State.OOMKilled, never State.Error.
    return f"task: non-zero exit ({status.exit_code})"


def port_status(host_ports: Sequence[PortMapping]) -> PortStatus:
    """A running task's PortStatus as dockerd shows it: each host-mode port bound on its
    node (SwarmKit's agent reads them from the container; a process task's are its
    spec's). A port with no number asked is left out: the node has not picked one."""
    ports: list[dict[str, object]] = [
        {
            "Protocol": p.protocol,
            "TargetPort": p.target,
            "PublishedPort": p.published,
            "PublishMode": "host",
        }
        for p in host_ports
        if p.published
    ]
    return PortStatus(ports=ports or None)


class TaskRunner:
    def __init__(
        self,
        task: Task,
        controller: Controller,
        report: Report,
        clock: Clock = SYSTEM_CLOCK,
        starts: StartSlots | None = None,
        host_ports: Sequence[PortMapping] = (),
        before_stop: Callable[[str], Awaitable[None]] | None = None,
        service_name: str = "",
        metrics: Metrics | None = None,
        runtime: str = "",
    ) -> None:
        """`metrics`: the daemon's, where each start is timed under the executor's
        `runtime` name."""
        self.task = task
        self.service_name = service_name
        self._metrics = metrics if metrics is not None else Metrics()
        self._runtime = runtime
        # The node's bound on starts in flight: a slot is held from PREPARING until the
        # start returned (none: unbounded).
        self._starts = starts if starts is not None else StartSlots(0)
        self._holding = False
        # the task's host-mode published ports, reported in PortStatus while it runs
        self._port_status = port_status(host_ports)
        self._clock = clock
        self.controller = controller
        self._report = report
        self.state = task.state
        self._container: ContainerStatus | None = task.status.container_status
        self._changed = asyncio.Event()
        self._removed = False
        self._runner: asyncio.Task[None] | None = None
        self._drained = asyncio.Event()
        # called with the task's ID before the stop signal of a running task, once it
        # has drained (the agent takes it out of the node's own backends)
        self._before_stop = before_stop

    def start(self) -> None:
        self._runner = asyncio.get_running_loop().create_task(
            self._run(), name=f"task-{self.task.id}"
        )

    def update(self, task: Task) -> None:
        self.task = task
        self._changed.set()

    def drained(self) -> None:
        """Every node has taken this leaving task out of its backends: stop it now."""
        self._drained.set()

    async def _hold_for_drain(self) -> None:
        """A running task on networks that is to stop waits until every node has taken
        it out of its backends (`drained`), or min(DRAIN_TIMEOUT_S, its grace period)."""
        if self.state != TaskState.RUNNING or not self.task.networks_attachments:
            return
        hold_s = min(DRAIN_TIMEOUT_S, stop_grace_s(self.task))
        if self._drained.is_set() or hold_s <= 0:
            return
        started = self._clock.monotonic()
        try:
            await self._clock.wait_for(self._drained.wait(), hold_s)
            log.info("task drained", task=self.task.id, after_s=self._clock.monotonic() - started)
        except TimeoutError:
            log.warning("task not confirmed drained in time: stopping it", task=self.task.id)

    async def remove(self) -> None:
        """The task is gone from the manager: stop it and release what it holds."""
        self._removed = True
        self._changed.set()
        if self._runner is not None:
            with contextlib.suppress(BaseException):
                await self._runner
        with contextlib.suppress(ExecutorError, OSError):
            await self.controller.shutdown(stop_grace_s(self.task))
            await self.controller.remove()

    async def detach(self) -> None:
        """The daemon is going away but its tasks stay (live restore): stop driving the
        task, leave its process running for the next daemon to adopt."""
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(BaseException):
                await self._runner

    async def stop_for_daemon_exit(self) -> None:
        """The daemon is stopping: stop the process, report nothing."""
        await self.detach()
        with contextlib.suppress(ExecutorError, OSError):
            await self.controller.shutdown(stop_grace_s(self.task))

    # reporting ------------------------------------------------------------------------------
    def _set(self, state: TaskState, message: str | None = None, err: str | None = None) -> None:
        self.state = state
        status = TaskStatus(
            timestamp=format_time(self._clock.time_ns()),
            state=state.wire,
            message=message if message is not None else MSG.get(state, state.wire),
            err=err,
            container_status=self._container,
            port_status=self._port_status if state == TaskState.RUNNING else PortStatus(),
        )
        self._report(self.task.id, status)

    def _note_runtime(self, rs: RuntimeState) -> None:
        if rs.host_ports is not None:
            self._port_status = port_status(rs.host_ports)
        self._container = ContainerStatus(container_id=rs.container_id, pid=rs.pid, exit_code=0)

    def _note_exit(self, status: ExitStatus) -> None:
        base = self._container or ContainerStatus()
        self._container = msgspec.structs.replace(base, exit_code=status.exit_code)

    # the state machine -------------------------------------------------------------------------
    async def _wait_change(self) -> None:
        await self._changed.wait()
        self._changed.clear()

    def _desired(self) -> TaskState:
        return self.task.desired

    async def _take_slot(self) -> None:
        if not self._holding:
            await self._starts.acquire()
            self._holding = True

    def _free_slot(self) -> None:
        if self._holding:
            self._holding = False
            self._starts.release()

    async def _run(self) -> None:
        try:
            await self._adopt()
            while not self._removed:
                desired = self._desired()
                if self.state not in (TaskState.PREPARING, TaskState.READY, TaskState.STARTING):
                    self._free_slot()  # started, failed, or shut down
                if desired >= TaskState.SHUTDOWN and self.state <= TaskState.RUNNING:
                    await self._hold_for_drain()
                    if self.state == TaskState.RUNNING and self._before_stop is not None:
                        await self._before_stop(self.task.id)
                    await self.controller.shutdown(stop_grace_s(self.task))
                    self._set(TaskState.SHUTDOWN)
                    continue
                if self.state > TaskState.RUNNING:
                    await self._wait_change()
                    continue
                if self.state == TaskState.ASSIGNED:
                    self._set(TaskState.ACCEPTED)
                elif self.state == TaskState.ACCEPTED:
                    self._set(TaskState.PREPARING)
                elif self.state == TaskState.PREPARING:
                    await self._take_slot()
                    await self._prepare()
                elif self.state == TaskState.READY:
                    if desired > TaskState.READY:
                        self._set(TaskState.STARTING)
                    else:
                        self._free_slot()  # prepared only: not starting yet
                        await self._wait_change()
                elif self.state == TaskState.STARTING:
                    await self._take_slot()
                    await self._start()
                    self._free_slot()
                elif self.state == TaskState.RUNNING:
                    await self._wait_exit()
                else:
                    await self._wait_change()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug, not a task failure: say so on the task
            log.exception("task runner failed", task=self.task.id)
            if self.state <= TaskState.RUNNING:
                self._set(
                    TaskState.FAILED if self.state >= TaskState.STARTING else TaskState.REJECTED,
                    err=f"agent error: {e}",
                )
        finally:
            self._free_slot()

    async def _adopt(self) -> None:
        """Pick up a task an earlier daemon already worked on."""
        if not TaskState.PREPARING <= self.state <= TaskState.RUNNING:
            return
        rs = await self.controller.inspect()
        if rs.running:
            known = self._container.pid if self._container else None
            self._note_runtime(rs)
            if self.state != TaskState.RUNNING or known != rs.pid:
                self._set(TaskState.RUNNING)  # also records the pid / container id
            log.info("task adopted", task=self.task.id, pid=rs.pid)
        elif rs.exit is not None:
            self._finish(rs.exit)
        elif self.state >= TaskState.STARTING:
            self._set(TaskState.FAILED, message=MSG[TaskState.RUNNING], err=ERR_GONE)
        elif self.state == TaskState.READY and not rs.exists:
            self.state = TaskState.PREPARING  # prepare again; not reported (no move back)
            await self._prepare(report_ready=False)

    async def _prepare(self, report_ready: bool = True) -> None:
        try:
            await self.controller.prepare()
        except ExecutorError as e:
            self._set(TaskState.REJECTED, message=MSG[TaskState.PREPARING], err=str(e))
            return
        if report_ready:
            self._set(TaskState.READY)
        else:
            self.state = TaskState.READY

    async def _start(self) -> None:
        started = self._clock.monotonic()
        # A start may wait long (for a health check to pass): a desired state past
        # RUNNING meanwhile cuts it short, and the loop stops what it started.
        starting = asyncio.ensure_future(self.controller.start())
        try:
            while not starting.done():
                changed = asyncio.ensure_future(self._wait_change())
                await asyncio.wait({starting, changed}, return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
                if not starting.done() and (self._removed or self._desired() >= TaskState.SHUTDOWN):
                    starting.cancel()
                    await asyncio.gather(starting, return_exceptions=True)
                    return
            rs = starting.result()
        except ExecutorError as e:
            self._metrics.executor_start_failures.labels(self._runtime).inc()
            self._set(TaskState.FAILED, message=MSG[TaskState.STARTING], err=str(e))
            return
        finally:
            if not starting.done():
                starting.cancel()
        elapsed = self._clock.monotonic() - started
        self._metrics.executor_start_seconds.labels(self._runtime).observe(elapsed)
        self._note_runtime(rs)
        self._set(TaskState.RUNNING)

    async def _wait_exit(self) -> None:
        waiter = asyncio.ensure_future(self.controller.wait())
        try:
            while not waiter.done():
                changed = asyncio.ensure_future(self._wait_change())
                await asyncio.wait({waiter, changed}, return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
                if not waiter.done() and (self._removed or self._desired() >= TaskState.SHUTDOWN):
                    return  # the loop shuts it down
            try:
                status = waiter.result()
            except ExecutorError as e:
                self._set(TaskState.FAILED, message=MSG[TaskState.RUNNING], err=str(e))
                return
            self._finish(status)
        finally:
            if not waiter.done():
                waiter.cancel()

    def _finish(self, status: ExitStatus) -> None:
        self._note_exit(status)
        desired = self._desired()
        if desired >= TaskState.SHUTDOWN and status.signal in (signal.SIGTERM, signal.SIGKILL):
            self._set(TaskState.SHUTDOWN)
        elif status.exit_code == 0:
            self._set(TaskState.COMPLETE)
        else:
            self._set(TaskState.FAILED, message=MSG[TaskState.RUNNING], err=exit_error(status))
