"""The `process` executor: a task's command run as a host process, without containers.

For hosts without Docker and for fast tests. Each task gets a directory
`<data_dir>/tasks/<task_id>/` and a supervisor process (`shim.py`, the role
containerd-shim plays for containers) started in a session of its own: it execs the
command, timestamps its output into `log.jsonl` and records how it exited in
`exit.json`. The agent and the shim share nothing but that directory, so tasks keep
running across agent restarts and a new agent adopts them (`inspect`, `wait`).

Each task is confined as far as a host process can be (docs/process-runtime.md): its
own cgroups under the daemon's with the service's limits (cgroups.py), its own session,
no_new_privs, and the service's user and groups. What a container would isolate beyond
that is shared with the host: the filesystem, the network and the process table. The
image is ignored; the command is the service's `Command + Args`, looked up in the
task's PATH.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import shoal
from shoal.agent import secrets as task_secrets
from shoal.agent.executor import cgroups, logdriver, probe, process_network, shim, spawner
from shoal.agent.executor.base import ExecutorError, ExitStatus, RuntimeState
from shoal.agent.executor.process_limits import remove_cgroups
from shoal.agent.executor.process_logs import TaskLog, log_config
from shoal.agent.executor.process_spec import (
    DEFAULT_PATH,
    DEFAULT_STOP_SIGNAL,
    LaunchSpec,
    parse_signal,
)
from shoal.agent.executor.process_taskdir import (
    START_POLL_S,
    START_TIMEOUT_S,
    ZOMBIE_STATES,
    TaskDir,
)
from shoal.agent.health import UNHEALTHY, HealthMonitor, health_spec
from shoal.agent.network.plumbing import Plumbing
from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.log import get_logger
from shoal.types.agent import Dependency, LogMessage, LogOptions
from shoal.types.meta import NO_TASK_META, TaskMeta
from shoal.types.node import EngineDescription, EnginePlugin, NodeDescription, NodeResources
from shoal.types.service import ContainerSpec, Platform
from shoal.types.task import Task

EXECUTOR_NAME = "process"
TASKS_DIR = "tasks"
# The shim launcher's own stderr (spawner.py), in the data dir.
LAUNCHER_LOG = "launcher.log"
SHIM_PATH = Path(shim.__file__).resolve()
MEMINFO_PATH = Path("/proc/meminfo")

# After SIGKILL of the task's process group, how long the shim may take to drain its
# pipes (shim.DRAIN_TIMEOUT_S) and exit before it is killed too.
SHIM_EXIT_TIMEOUT_S = 10.0

TASK_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

# The stop grace period of a task without one (Docker's 10 s).
DEFAULT_STOP_GRACE_S = 10.0
# Swarm's container adapter's error for a task stopped because it turned unhealthy.
ERR_UNHEALTHY = "unhealthy container"

PR_SET_DUMPABLE = 4
# The environment variable that turns the tasks' pid namespaces off (0), for debugging.
PID_NAMESPACE_ENV = "SHOAL_PID_NAMESPACE"

log = get_logger("shoal.agent.process")


class ProcessExecutor:
    """Runs tasks as host processes, one supervising shim per task, with their state in
    `data_dir/tasks/<task_id>/` so that a restarted agent finds them again."""

    name = EXECUTOR_NAME

    def __init__(
        self,
        data_dir: Path,
        hostname: str,
        engine_labels: dict[str, str],
        cgroup_layout: cgroups.Layout | None = None,
    ) -> None:
        """`cgroup_layout`: where the tasks' cgroups go (the daemon's own cgroups,
        `cgroups.current()`); None runs tasks without cgroups, and without limits."""
        self.data_dir = Path(data_dir).resolve()
        self.cgroup_layout = cgroup_layout
        self.tasks_dir = self.data_dir / TASKS_DIR
        self.hostname = hostname
        self.engine_labels = dict(engine_labels)
        # Shims this executor spawned and has not reaped yet.
        self._children: set[int] = set()
        self.boot_id = shim.boot_id()
        self.dependencies: dict[str, Dependency] = {}
        # The node's overlay plumbing (set by the daemon when it runs as root): a task
        # with network attachments gets its own namespaces through it.
        self.plumbing: Plumbing | None = None
        # Health checks wait on this clock; `on_unhealthy(task_id)` is told the moment
        # a running task turns unhealthy, before it is stopped (the agent takes it out
        # of the node's backends).
        self.clock: Clock = SYSTEM_CLOCK
        self.on_unhealthy: Callable[[str], None] | None = None
        # Forks shims from one warm interpreter (launcher.py); None: an interpreter each.
        self.launcher = (
            spawner.Launcher({"PATH": DEFAULT_PATH}, self.data_dir / LAUNCHER_LOG)
            if spawner.enabled()
            else None
        )
        # Each task in a pid namespace of its own (docs/process-runtime.md): only root
        # can create one.
        self.pid_namespace = (
            os.geteuid() == 0 and os.environ.get(PID_NAMESPACE_ENV, "1").strip() != "0"
        )

    def describe(self) -> NodeDescription:
        return NodeDescription(
            hostname=self.hostname,
            platform=Platform(os="linux", architecture=platform.machine()),
            resources=NodeResources(
                nano_cpus=(os.cpu_count() or 1) * 1_000_000_000,
                memory_bytes=_memory_bytes(),
            ),
            engine=EngineDescription(
                engine_version=shoal.__version__,
                labels=dict(self.engine_labels) or None,  # dockerd omits none
                plugins=[EnginePlugin(type="Log", name=n) for n in logdriver.PROCESS_DRIVERS],
            ),
        )

    def controller(self, task: Task, meta: TaskMeta = NO_TASK_META) -> ProcessController:
        """`meta` gives config templates the service's name."""
        if not TASK_ID_RE.fullmatch(task.id):
            raise ExecutorError(f"invalid task ID {task.id!r}")
        return ProcessController(self, task, meta)

    def known_task_ids(self) -> list[str]:
        try:
            return sorted(p.name for p in self.tasks_dir.iterdir() if p.is_dir())
        except FileNotFoundError:
            return []

    def holder_pids(self) -> list[int]:
        """The shims and task processes of the tasks in the tasks directory: what holds
        their network namespaces (network/plumbing.py `adopt`)."""
        pids = []
        for task_id in self.known_task_ids():
            for name in (shim.SHIM_PID_FILE, shim.PID_FILE):
                try:
                    pids.append(int((self.tasks_dir / task_id / name).read_text().split()[0]))
                except (OSError, ValueError, IndexError):
                    pass
        return pids

    async def close(self) -> None:
        """Reap the shims that have exited; running ones are left to run (adoption).
        The launcher ends (it is started again on the next spawn)."""
        self.reap()
        if self.launcher is not None:
            await self.launcher.close()

    async def warm(self) -> None:
        """Start the shim launcher before the first task needs it (its interpreter's
        start-up, some 50 ms, then delays no task)."""
        if self.launcher is not None:
            try:
                await self.launcher.ensure()
            except spawner.LauncherUnavailable as e:
                log.warning("launcher_unavailable", error=str(e))

    async def start_shim(self, task_dir: Path) -> int | None:
        """Start the shim for `task_dir`: forked by the launcher, or (without one, or
        when it forked nothing) as an interpreter of its own. Returns its pid; None when
        the launcher died with the request unanswered (a shim may run: not another)."""
        if self.launcher is not None:
            try:
                return await self.launcher.spawn(task_dir)
            except spawner.LauncherUnavailable as e:
                log.warning("launcher_unavailable", error=str(e))
            except spawner.LauncherLost as e:
                log.warning("launcher_lost", error=str(e), task_dir=str(task_dir))
                return None
        # posix_spawn of a Python process takes milliseconds: keep it off the event loop
        return await asyncio.to_thread(self.spawn_shim, task_dir)

    def shim_exited(self, pid: int) -> bool:
        """True once shim `pid`, which this executor started, has exited: reaped if it
        is our child, gone (the launcher's children are reaped by the kernel) or a
        zombie otherwise."""
        if pid in self._children:
            return self.reap(pid)
        stat = shim.proc_stat(pid)
        return stat is None or stat[0] in ZOMBIE_STATES

    def spawn_shim(self, task_dir: Path) -> int:
        """Start the shim for `task_dir` in a new session; returns its pid."""
        # -I: no environment or user site; -S: no site import at all (the shim is stdlib only)
        argv = [sys.executable, "-I", "-S", str(SHIM_PATH), str(task_dir)]
        shim_log = str(task_dir / shim.SHIM_LOG_FILE)
        try:
            pid = os.posix_spawn(
                sys.executable,
                argv,
                {"PATH": DEFAULT_PATH},
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (
                        os.POSIX_SPAWN_OPEN,
                        1,
                        shim_log,
                        os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                        0o600,
                    ),
                    (os.POSIX_SPAWN_DUP2, 1, 2),
                ],
                # Like start_new_session=True: no signal meant for the agent's session or
                # process group (a Ctrl-C, a hangup) reaches the task.
                setsid=True,
            )
        except OSError as e:
            raise ExecutorError(f"cannot start the task process supervisor: {e}") from e
        self._children.add(pid)
        return pid

    def reap(self, pid: int | None = None) -> bool:
        """Reap exited shims this executor spawned (all of them, or `pid`); True when
        `pid` has exited (or is not ours to wait for)."""
        for child in [pid] if pid is not None else list(self._children):
            if child not in self._children:
                continue
            try:
                done, _ = os.waitpid(child, os.WNOHANG)
            except ChildProcessError:
                done = child
            if done:
                self._children.discard(child)
        return pid is not None and pid not in self._children


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


def protect_daemon() -> None:
    """Make the daemon non-dumpable: a task running as the daemon's own user can then
    neither ptrace it nor read its memory, environment or open files through /proc.
    (Root tasks keep CAP_SYS_PTRACE and CAP_KILL: docs/process-runtime.md.)"""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _memory_bytes() -> int:
    """MemTotal of /proc/meminfo, in bytes."""
    try:
        for line in MEMINFO_PATH.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0
