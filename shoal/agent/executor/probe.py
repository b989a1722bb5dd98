"""Running a process task's health-check command where the task runs.

The probe enters the task process's namespaces (network, UTS, mount, pid: it sees the
task's addresses, hostname, /etc/hosts, secrets and processes) with `nsenter --target <pid>`, runs
as the task's user and group, with the task's environment and working directory, in
the task's cgroups (a shell moves itself there before it execs nsenter, so everything
the probe starts is counted with the task, as a container's exec is), in a session of
its own so that a probe past its timeout is killed whole. Without root the agent cannot
enter namespaces: the probe then runs on the host, as the agent, in the agent's
cgroup (a task there shares the node's network).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import Any

from shoal.agent.executor import cgroups

NSENTER = "nsenter"
# Moves the shell into each cgroup directory given before "--", then execs the rest.
JOIN_CGROUPS = (
    'p=$$; while [ "$1" != "--" ]; do echo "$p" > "$1/cgroup.procs" || exit 125; shift; '
    'done; shift; exec "$@"'
)


def probe_argv(launch: dict[str, Any], task_pid: int, argv: list[str]) -> list[str]:
    """The command line that runs `argv` in the task's namespaces as its user."""
    if os.geteuid() != 0:
        return list(argv)
    out = [NSENTER, f"--target={task_pid}", "--net", "--uts", "--mount", "--pid"]
    if launch.get("gid") is not None:
        out.append(f"--setgid={launch['gid']}")
    if launch.get("uid") is not None:
        out.append(f"--setuid={launch['uid']}")
    out.append(f"--wdns={launch.get('cwd') or '/'}")
    out = [*out, "--", *argv]
    dirs = cgroups.dirs_of(launch.get("cgroups"))
    if dirs:
        out = ["/bin/sh", "-c", JOIN_CGROUPS, "probe", *dirs, "--", *out]
    return out


async def run_probe(launch: dict[str, Any], task_pid: int, argv: list[str]) -> int:
    """Run one probe; its exit code. Cancelled (the health check's timeout), it kills
    the probe's whole session."""
    env = {str(k): str(v) for k, v in (launch.get("env") or {}).items()}
    proc = await asyncio.create_subprocess_exec(
        *probe_argv(launch, task_pid, argv),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
        cwd=None if os.geteuid() == 0 else launch.get("cwd") or "/",
        start_new_session=True,
    )
    try:
        return await proc.wait()
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(BaseException):
            await proc.wait()
        raise
