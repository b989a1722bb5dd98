"""A process task's directory as its shim keeps it (`<data_dir>/tasks/<task_id>/`):
the pids and exit record it writes, read afresh each time, which is how an agent adopts
the tasks an earlier one started; telling the shim from a process that reused its pid;
waiting for the shim and signalling the task."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from shoal.agent.executor import shim
from shoal.agent.executor.base import ExitStatus

# Waiting for a shim to exit where pidfd_open is missing, and for the files it writes.
POLL_INTERVAL_S = 0.1
# How often start() looks for the task's pid, and how long it waits for it.
START_POLL_S = 0.01
START_TIMEOUT_S = 10.0

# /proc/<pid>/stat states of a process that has exited (zombie, dead).
ZOMBIE_STATES = frozenset({"Z", "X"})

SUPERVISOR_EXITED_ERROR = "task process supervisor exited unexpectedly"


class TaskDir:
    """One task's directory (`path`) and its shim, which recorded `boot_id` (the boot
    it runs in) beside its pid."""

    def __init__(self, path: Path, boot_id: str) -> None:
        self.path = path
        self.boot_id = boot_id

    def read_pid(self, name: str) -> int | None:
        """The pid in `name` (for shim.pid, the first word of the shim's identity)."""
        try:
            return int((self.path / name).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def read_exit_record(self) -> dict[str, Any] | None:
        try:
            record = json.loads((self.path / shim.EXIT_FILE).read_bytes())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def read_exit(self) -> ExitStatus | None:
        record = self.read_exit_record()
        if record is None:
            return None
        return ExitStatus(
            exit_code=int(record["exit_code"]),
            signal=record.get("signal"),
            oom_killed=bool(record.get("oom_killed")),
        )

    def is_shim(self, pid: int) -> bool:
        """True when process `pid` (alive or a zombie) is this task's shim, not another
        process that reused the pid: its start time and boot are those it recorded."""
        try:
            words = (self.path / shim.SHIM_PID_FILE).read_text().split()
        except OSError:
            return False
        stat = shim.proc_stat(pid)
        return (
            stat is not None
            and len(words) == 3
            and words[0] == str(pid)
            and words[1] == str(stat[1])
            and words[2] == self.boot_id
        )

    def is_our_shim(self, pid: int) -> bool:
        """True while this task's shim runs (a zombie has exited)."""
        stat = shim.proc_stat(pid)
        return stat is not None and stat[0] not in ZOMBIE_STATES and self.is_shim(pid)

    def finished(self) -> bool:
        """True once the task has exited (or its shim is gone) and its log is complete."""
        if not self.path.is_dir() or (self.path / shim.EXIT_FILE).exists():
            return True
        shim_pid = self.read_pid(shim.SHIM_PID_FILE)
        return shim_pid is not None and not self.is_our_shim(shim_pid)

    def supervisor_error(self) -> str:
        """SUPERVISOR_EXITED_ERROR, with the shim's last words if it left any."""
        try:
            lines = (self.path / shim.SHIM_LOG_FILE).read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        last = next((line.strip() for line in reversed(lines) if line.strip()), "")
        return f"{SUPERVISOR_EXITED_ERROR}: {last}" if last else SUPERVISOR_EXITED_ERROR

    async def wait_shim_pid(self) -> int | None:
        """The shim's pid, waiting a little if the task is being started right now."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while (pid := self.read_pid(shim.SHIM_PID_FILE)) is None:
            if time.monotonic() > deadline or (self.path / shim.EXIT_FILE).exists():
                return None
            await asyncio.sleep(START_POLL_S)
        return pid

    async def wait_child_pid(self, shim_pid: int) -> int | None:
        """The task process's pid once the shim has started it; None if it never will
        or it has already exited."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if (self.path / shim.EXIT_FILE).exists():
                return None
            child = self.read_pid(shim.PID_FILE)
            if child is not None or time.monotonic() > deadline:
                return child
            if not self.is_our_shim(shim_pid):
                return None
            await asyncio.sleep(START_POLL_S)

    def signal_group(self, pgid: int, sig: int) -> None:
        # Signals only while the shim has not reported the exit: until then the task
        # process, leader of the group, is unreaped and its pid cannot have been reused.
        if (self.path / shim.EXIT_FILE).exists():
            return
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    async def wait_shim_exit(self, shim_pid: int, timeout_s: float | None) -> bool:
        """Wait until the shim has exited; False if `timeout_s` passed first. Works for
        a shim an earlier agent started (not our child)."""
        try:
            pidfd = os.pidfd_open(shim_pid)
        except ProcessLookupError:
            return True
        except (AttributeError, OSError):
            return await self._poll_shim_exit(shim_pid, timeout_s)
        try:
            # Checked after pidfd_open: if the pid is the shim's now, so is the pidfd.
            # A zombie is still the shim (the pidfd is then readable at once); one that
            # is exiting is too, and becomes a zombie we can reap once the pidfd says so.
            if not self.is_shim(shim_pid):
                return True
            loop = asyncio.get_running_loop()
            exited: asyncio.Future[None] = loop.create_future()
            try:
                loop.add_reader(pidfd, _resolve, exited)
            except NotImplementedError:
                return await self._poll_shim_exit(shim_pid, timeout_s)
            try:
                async with asyncio.timeout(timeout_s):
                    await exited
            except TimeoutError:
                return False
            finally:
                loop.remove_reader(pidfd)
            return True
        finally:
            os.close(pidfd)

    async def _poll_shim_exit(self, shim_pid: int, timeout_s: float | None) -> bool:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.is_our_shim(shim_pid):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await asyncio.sleep(POLL_INTERVAL_S)
        return True


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
