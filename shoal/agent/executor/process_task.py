"""One process task's lifecycle (the Controller protocol, base.py): prepare its
directory and spec.json, start its shim (never two for one task), wait for it to be
healthy and for it to exit, stop it with its stop signal then SIGKILL, remove it. Every
method reads the task directory afresh (process_taskdir.py), so a controller made by a
restarted agent adopts the task where the old one left it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from shoal.agent import secrets as task_secrets
from shoal.agent.executor import probe, process_network, shim
from shoal.agent.executor.base import ExecutorError, ExitStatus, RuntimeState
from shoal.agent.executor.process_limits import remove_cgroups
from shoal.agent.executor.process_logs import TaskLog, log_config
from shoal.agent.executor.process_spec import DEFAULT_STOP_SIGNAL, LaunchSpec, parse_signal
from shoal.agent.executor.process_taskdir import START_POLL_S, START_TIMEOUT_S, TaskDir
from shoal.agent.health import UNHEALTHY, HealthMonitor, health_spec
from shoal.log import get_logger
from shoal.types.agent import LogMessage, LogOptions
from shoal.types.meta import NO_TASK_META, TaskMeta
from shoal.types.service import ContainerSpec
from shoal.types.task import Task

if TYPE_CHECKING:
    from shoal.agent.executor.process import ProcessExecutor

# After SIGKILL of the task's process group, how long the shim may take to drain its
# pipes (shim.DRAIN_TIMEOUT_S) and exit before it is killed too.
SHIM_EXIT_TIMEOUT_S = 10.0
# The stop grace period of a task without one (Docker's 10 s).
DEFAULT_STOP_GRACE_S = 10.0
# Swarm's container adapter's error for a task stopped because it turned unhealthy.
ERR_UNHEALTHY = "unhealthy container"

log = get_logger("shoal.agent.process")


class ProcessController:
    """Runs one task through a shim; every method reads the task directory afresh, so
    a controller made by a restarted agent picks up where the old one was."""

    def __init__(
        self, executor: ProcessExecutor, task: Task, meta: TaskMeta = NO_TASK_META
    ) -> None:
        self.task_id = task.id
        self.task = task
        self.meta = meta
        self.spec = task.spec.container_spec or ContainerSpec()
        self._executor = executor
        self._dir = executor.tasks_dir / task.id
        self._launch = LaunchSpec(executor, task, meta)
        self._files = TaskDir(self._dir, executor.boot_id)
        self._health: HealthMonitor | None = None

    # --- the Controller protocol -----------------------------------------------------

    async def inspect(self) -> RuntimeState:
        self._executor.reap()
        if not self._dir.is_dir():
            return RuntimeState(exists=False, running=False)
        status = self._files.read_exit()
        if status is None:
            shim_pid = self._files.read_pid(shim.SHIM_PID_FILE)
            if shim_pid is not None and self._files.is_our_shim(shim_pid):
                pid = self._files.read_pid(shim.PID_FILE)
                return RuntimeState(exists=True, running=True, pid=pid)
            # Read again: the shim may have written it and exited since the first look.
            status = self._files.read_exit()
            if status is None and shim_pid is not None:
                # The shim died without a word: end what it left in the task's cgroups,
                # as it would have done itself.
                await remove_cgroups(self._dir, self.task_id)
            if status is not None or shim_pid is not None:
                # The task has ended.
                await process_network.detach(self._executor.plumbing, self.task_id)
        else:
            await process_network.detach(self._executor.plumbing, self.task_id)
        return RuntimeState(exists=True, running=False, exit=status)

    async def prepare(self) -> None:
        if (self._dir / shim.STARTED_FILE).exists():
            return  # prepared and started by an earlier call (or an earlier agent)
        launch = self._launch.build()
        launch["log"] = await log_config(self.task, self.meta, self._executor.hostname, launch)
        self._dir.mkdir(parents=True, exist_ok=True)
        files = task_secrets.files_of(
            self.task, self._executor.dependencies, self._launch.template_context(launch)
        )
        launch["mounts"] = await asyncio.to_thread(task_secrets.prepare, self._dir, files)
        await process_network.attach(self._launch, self._dir, launch)
        shim.write_atomic(str(self._dir / shim.SPEC_FILE), json.dumps(launch).encode())

    async def start(self) -> RuntimeState:
        """Start the task; with a health check, return once it is healthy. Cancelled
        (the task is to stop before it ran), the start still finishes what it began (a
        shim forked, the task's files written) before the cancellation goes on, so the
        stop that follows finds the process; only the wait for health is cut short."""
        starting = asyncio.ensure_future(self._start_process())
        try:
            state, fresh = await asyncio.shield(starting)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await starting
            raise
        if fresh and state.running and state.pid is not None:
            await self._wait_healthy(state.pid)
        return state

    async def _start_process(self) -> tuple[RuntimeState, bool]:
        """The task's state once its process runs (or could not start), and whether
        this call started it."""
        state = await self.inspect()
        if state.running or state.exit is not None:
            return state, False  # started before (by this agent or an earlier one)
        if not (self._dir / shim.SPEC_FILE).exists():
            await self.prepare()
        # Claim the start: never two shims for one task, even if an earlier agent died
        # between this point and its shim writing shim.pid.
        try:
            os.close(os.open(self._dir / shim.STARTED_FILE, os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            return await self._wait_running(spawned=None), False
        spawned = await self._executor.start_shim(self._dir)
        state = await self._wait_running(spawned=spawned)
        # The task's namespace holds its own mounts of the tmpfs now: detached from the
        # host's tree, it lives exactly as long as the task (nothing left to clean up).
        await asyncio.to_thread(task_secrets.release, self._dir)
        return state, True

    # --- health checks (shoal/agent/health.py) -------------------------------------------

    def _start_health(self, pid: int) -> HealthMonitor | None:
        """Start probing the task (once per controller), if it has a health check."""
        if self._health is not None:
            return self._health
        spec = health_spec(self.spec.health_check)
        if spec is None:
            return None
        try:
            launch = json.loads((self._dir / shim.SPEC_FILE).read_bytes())
        except (OSError, ValueError):
            launch = {}

        async def run(argv: list[str]) -> int:
            return await probe.run_probe(launch, pid, argv)

        def changed(status: str) -> None:
            log.info("task health", task=self.task_id, status=status)
            if status == UNHEALTHY and self._executor.on_unhealthy is not None:
                self._executor.on_unhealthy(self.task_id)

        self._health = HealthMonitor(spec, run, self._executor.clock, changed)
        self._health.start()
        return self._health

    async def _wait_healthy(self, pid: int) -> None:
        """As Swarm's Start with a health check: return once the task is healthy (or
        has exited: wait() reports that); unhealthy first, stop it and fail the start."""
        monitor = self._start_health(pid)
        if monitor is None:
            return
        shim_pid = self._files.read_pid(shim.SHIM_PID_FILE)
        decided = asyncio.ensure_future(monitor.wait_decided())
        exited = asyncio.ensure_future(
            self._files.wait_shim_exit(shim_pid, timeout_s=None) if shim_pid else asyncio.sleep(0)
        )
        try:
            await asyncio.wait({decided, exited}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in (decided, exited):
                f.cancel()
        if monitor.status == UNHEALTHY:
            raise ExecutorError(await self._stop_unhealthy())

    async def _stop_unhealthy(self) -> str:
        """Stop an unhealthy task (its stop signal, then SIGKILL after its grace
        period); the error it fails with, in Swarm's words."""
        ns = self.spec.stop_grace_period
        grace = ns / 1e9 if ns is not None else DEFAULT_STOP_GRACE_S
        log.info("task unhealthy: stopping it", task=self.task_id)
        await self.shutdown(grace)
        status = self._files.read_exit()
        if status is not None and status.exit_code:
            return f"task: non-zero exit ({status.exit_code}): {ERR_UNHEALTHY}"
        return ERR_UNHEALTHY

    async def wait(self) -> ExitStatus:
        if not (self._dir / shim.STARTED_FILE).exists():
            raise ExecutorError("task was not started on this node")
        shim_pid = await self._files.wait_shim_pid()
        if shim_pid is not None:
            child = self._files.read_pid(shim.PID_FILE)
            monitor = (
                self._start_health(child) if child and self._files.is_our_shim(shim_pid) else None
            )
            if monitor is None:
                await self._files.wait_shim_exit(shim_pid, timeout_s=None)
            else:
                exited = asyncio.ensure_future(self._files.wait_shim_exit(shim_pid, timeout_s=None))
                unhealthy = asyncio.ensure_future(monitor.wait_unhealthy())
                try:
                    await asyncio.wait({exited, unhealthy}, return_when=asyncio.FIRST_COMPLETED)
                except asyncio.CancelledError:
                    exited.cancel()
                    raise
                finally:
                    unhealthy.cancel()
                if not exited.done() and monitor.status == UNHEALTHY:
                    exited.cancel()
                    error = await self._stop_unhealthy()
                    await process_network.detach(self._executor.plumbing, self.task_id)
                    raise ExecutorError(error)
                await exited
            self._executor.reap(shim_pid)
        await self._stop_health()
        await process_network.detach(self._executor.plumbing, self.task_id)
        status = self._files.read_exit()
        if status is None:
            raise ExecutorError(self._files.supervisor_error())
        return status

    async def _stop_health(self) -> None:
        if self._health is not None:
            await self._health.stop()

    async def shutdown(self, grace_s: float) -> None:
        await self._stop_health()
        if not (self._dir / shim.STARTED_FILE).exists():
            return
        shim_pid = await self._files.wait_shim_pid()
        if shim_pid is None:
            return
        if not self._files.is_our_shim(shim_pid):
            self._executor.reap(shim_pid)
            return
        child = await self._files.wait_child_pid(shim_pid)
        if child is not None:
            try:
                stop_signal = parse_signal(self.spec.stop_signal)
            except ExecutorError:
                stop_signal = DEFAULT_STOP_SIGNAL
            self._files.signal_group(child, stop_signal)
            if not await self._files.wait_shim_exit(shim_pid, timeout_s=max(grace_s, 0.0)):
                self._files.signal_group(child, signal.SIGKILL)
        if not await self._files.wait_shim_exit(shim_pid, timeout_s=SHIM_EXIT_TIMEOUT_S):
            if self._files.is_our_shim(shim_pid):
                os.kill(shim_pid, signal.SIGKILL)
            await self._files.wait_shim_exit(shim_pid, timeout_s=SHIM_EXIT_TIMEOUT_S)
        self._executor.reap(shim_pid)

    def logs(self, options: LogOptions) -> AsyncIterator[LogMessage]:
        return TaskLog(self._dir, self.task_id).read(options, self._files.finished)

    async def remove(self) -> None:
        await self.shutdown(0.0)
        await asyncio.to_thread(task_secrets.release, self._dir)
        # The shim removes the task's cgroups when the task ends; this is for a shim
        # that did not get to it (killed with the daemon). The record is spec.json.
        await remove_cgroups(self._dir, self.task_id)
        await process_network.detach(self._executor.plumbing, self.task_id)
        shutil.rmtree(self._dir, ignore_errors=True)

    async def _wait_running(self, spawned: int | None) -> RuntimeState:
        """After the start: wait for the task's pid (or the shim's report that it could
        not exec the command). `spawned` is the shim's pid when we started it."""
        deadline = time.monotonic() + START_TIMEOUT_S
        gone = False
        while True:
            child = self._files.read_pid(shim.PID_FILE)
            if child is not None:
                return RuntimeState(exists=True, running=True, pid=child)
            record = self._files.read_exit_record()
            if record is not None:
                if record.get("error"):
                    # The shim is on its way out: let it go, so that nothing of the
                    # task is left running once start() has failed.
                    shim_pid = self._files.read_pid(shim.SHIM_PID_FILE)
                    if shim_pid is not None:
                        await self._files.wait_shim_exit(shim_pid, timeout_s=SHIM_EXIT_TIMEOUT_S)
                        self._executor.reap(shim_pid)
                    raise ExecutorError(str(record["error"]))
                return RuntimeState(exists=True, running=False, exit=self._files.read_exit())
            if gone:  # files read once more after the shim was seen gone: nothing came
                raise ExecutorError(self._files.supervisor_error())
            if spawned is not None:
                gone = self._executor.shim_exited(spawned)
            else:
                shim_pid = self._files.read_pid(shim.SHIM_PID_FILE)
                gone = shim_pid is not None and not self._files.is_our_shim(shim_pid)
            if not gone:
                if time.monotonic() > deadline:
                    raise ExecutorError(
                        f"task process supervisor did not start the task within {START_TIMEOUT_S:g}s"
                    )
                await asyncio.sleep(START_POLL_S)
