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

This module is the executor: the node's description, the tasks directory, the shims it
starts and reaps. One task's lifecycle is process_task.py's; what it rests on:
process_spec.py (spec.json: command, environment, user via process_user.py, hostname),
process_limits.py (cgroups and limits), process_network.py (the task's namespaces),
process_logs.py (the log's driver and reading it back) and process_taskdir.py (the task
directory and its shim, read afresh: adoption).
"""

from __future__ import annotations

import asyncio
import os
import platform
import re
import sys
from collections.abc import Callable
from pathlib import Path

import shoal
from shoal.agent.executor import cgroups, logdriver, shim, spawner
from shoal.agent.executor.base import ExecutorError
from shoal.agent.executor.process_spec import DEFAULT_PATH
from shoal.agent.executor.process_task import ProcessController
from shoal.agent.executor.process_taskdir import ZOMBIE_STATES
from shoal.agent.network.plumbing import Plumbing
from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.log import get_logger
from shoal.types.agent import Dependency
from shoal.types.meta import NO_TASK_META, TaskMeta
from shoal.types.node import EngineDescription, EnginePlugin, NodeDescription, NodeResources
from shoal.types.service import Platform
from shoal.types.task import Task

EXECUTOR_NAME = "process"
TASKS_DIR = "tasks"
# The shim launcher's own stderr (spawner.py), in the data dir.
LAUNCHER_LOG = "launcher.log"
SHIM_PATH = Path(shim.__file__).resolve()
MEMINFO_PATH = Path("/proc/meminfo")

TASK_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

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
