"""The agent's side of the shim launcher (launcher.py): one warm interpreter, the
daemon's child, that forks each task's shim.

`Launcher.spawn(task_dir)` asks it for a shim and returns the shim's pid. The launcher is
started with the agent (`ensure`) and started again when a spawn finds it dead (gone,
or a zombie). When it cannot be started, or says it could not fork, spawn raises
LauncherUnavailable: no shim was forked, and the executor starts that shim as its own
interpreter, as it did before the launcher. When the launcher dies with a request sent
and unanswered, spawn raises LauncherLost: a shim may have been forked, so none is
started again (never two shims for one task); the start then waits for the task's
files as for a start an earlier agent made. Requests go one at a time (a fork takes a
millisecond or two).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path

from shoal.log import get_logger

# A script, never imported by the agent (importing it sets up the shim's path).
LAUNCHER_PATH = Path(__file__).resolve().parent / "launcher.py"
# The environment variable that turns the launcher off (0: one interpreter per shim;
# the benchmarks compare with and without).
LAUNCHER_ENV = "SHOAL_SHIM_LAUNCHER"
# How long the launcher may take to exit once its input is closed.
CLOSE_TIMEOUT_S = 5.0

log = get_logger("shoal.agent.launcher")


class LauncherUnavailable(Exception):
    """The launcher could not be started or could not fork: no shim was forked."""


class LauncherLost(Exception):
    """The launcher died with a request unanswered: a shim may have been forked."""


def enabled() -> bool:
    return os.environ.get(LAUNCHER_ENV, "1").strip() != "0"


class Launcher:
    """The launcher process and the pipe to it. `env` is the environment every shim
    gets; `log_path` takes the launcher's own stderr (a shim's goes to its shim.log)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self.started = 0  # launcher processes started (more than one: restarts)
        self.spawned = 0
        # requests sent whose answers were not read (their callers were cancelled)
        self._unanswered = 0

    async def spawn(self, task_dir: Path) -> int:
        """The pid of a new shim for `task_dir`, forked by the launcher."""
        async with self._lock:
            proc = await self._running()
            sent = False
            try:
                assert proc.stdin is not None and proc.stdout is not None
                # Answers of requests whose callers were cancelled come first: left
                # in the pipe, one would be taken for this request's (another task's
                # shim pid). Their shims are found through their tasks' files.
                while self._unanswered and proc.stdout is not None:
                    if not await proc.stdout.readline():
                        break  # the launcher is gone: nothing more to read
                    self._unanswered -= 1
                proc.stdin.write(os.fsencode(task_dir) + b"\n")
                sent = True
                await proc.stdin.drain()
                answer = await proc.stdout.readline()
                sent = False
            except (ConnectionError, OSError) as e:
                log.warning("launcher_pipe_failed", error=str(e))
                answer = b""
            finally:
                if sent:  # cancelled with the request out: its answer is still to come
                    self._unanswered += 1
            if answer.startswith(b"!"):
                raise LauncherUnavailable(answer[1:].decode(errors="replace").strip())
            if answer.strip().isdigit():
                self.spawned += 1
                return int(answer)
            await self._discard(proc)
            raise LauncherLost("the shim launcher exited without an answer")

    async def ensure(self) -> None:
        """Start the launcher now if it is not running (the first spawn is then as
        quick as the others)."""
        async with self._lock:
            await self._running()

    async def close(self) -> None:
        """End the launcher (shims it started go on running)."""
        async with self._lock:
            if self._proc is not None:
                await self._discard(self._proc)

    async def _running(self) -> asyncio.subprocess.Process:
        if self._proc is not None and self._proc.returncode is None and _alive(self._proc.pid):
            return self._proc
        if self._proc is not None:
            await self._discard(self._proc)
        argv = [sys.executable, "-I", "-S", str(LAUNCHER_PATH)]
        try:
            err_fd = _open_log(self.log_path)
            try:
                self._proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=err_fd,
                    env=self.env,
                    # Like a shim: no signal meant for the agent's session reaches it.
                    start_new_session=True,
                )
            finally:
                os.close(err_fd)
        except OSError as e:
            raise LauncherUnavailable(f"cannot start the shim launcher: {e}") from e
        self.started += 1
        log.info("launcher_started", pid=self._proc.pid, starts=self.started)
        return self._proc

    async def _discard(self, proc: asyncio.subprocess.Process) -> None:
        """Close its input (it exits at the end of it) and reap it."""
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        if self._proc is proc:
            self._proc = None
            self._unanswered = 0

    @property
    def pid(self) -> int | None:
        """The running launcher's pid, if one runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    def statistics(self) -> dict[str, int]:
        return {"started": self.started, "spawned": self.spawned}


def _alive(pid: int) -> bool:
    """True while `pid` (our child: not reaped, so not reused) runs; a zombie has died
    even if asyncio has not reaped it yet."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def _open_log(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
