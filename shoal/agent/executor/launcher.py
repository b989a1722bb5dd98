"""The shim launcher of the process executor (a "zygote"): `python -I -S launcher.py`.

Starting a Python interpreter for each task's shim costs some 20 ms of CPU (the
interpreter, then json, subprocess and the rest imported afresh): a hundred tasks on
two cores spend a second on that alone. The launcher is one interpreter that has
imported the shim and everything it uses once; for each task it forks, and the forked
child, a warm copy, becomes the task's shim (~1-2 ms).

The forked shim is exactly the shim `python -I -S shim.py <task_dir>` would be (shim.py
`run`): a session of its own, stdin on /dev/null, stdout and stderr on the task's
`shim.log`, no other descriptor inherited, the same environment (the launcher's, which
the agent gives it as it gave each shim), signals at their defaults. It is the
launcher's child, not the agent's: the launcher lets the kernel reap its children
(SIGCHLD ignored), and when the launcher exits they are reparented like any orphan, so
a shim outlives the launcher and the agent alike and a restarted agent adopts it as
before, through the task directory.

The protocol, one request per line on stdin, one answer per line on stdout (the agent
sends the next request only after the answer):

    <task_dir>\\n   ->   <shim pid>\\n   or   !<why it could not fork>\\n

The launcher exits at the end of its input: when the agent closes the pipe or dies.
Standard library only, like the shim.
"""

from __future__ import annotations

import ctypes  # also imported once for every shim (confinement, mounts)
import importlib
import os
import signal
import sys
import traceback

# Run as a script with -I, the launcher has no package: its siblings (stdlib only) are
# found on the path, at its end so that no stdlib module is shadowed (as shim.py does).
sys.path.append(os.path.dirname(os.path.abspath(__file__)))
# What every shim uses, imported once here: the shim (json, select, subprocess...), its
# cgroups (limits) and gelf (the log driver).
shim = importlib.import_module("shim")
for _name in ("cgroups", "gelf"):
    importlib.import_module(_name)

READ_CHUNK_BYTES = 65536
SHIM_LOG_MODE = 0o600
PR_SET_DUMPABLE = 4


def _set_dumpable(value: int) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, value, 0, 0, 0)


def launch(task_dir: str) -> int:
    """Fork the shim of `task_dir`; returns its pid (in the launcher)."""
    log_fd = os.open(
        os.path.join(task_dir, shim.SHIM_LOG_FILE),
        os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
        SHIM_LOG_MODE,
    )
    try:
        pid = os.fork()
    except OSError:
        os.close(log_fd)
        raise
    if pid == 0:  # the shim
        code = 1
        try:
            os.setsid()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            _set_dumpable(1)  # as a shim started as an interpreter of its own is
            null_fd = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null_fd, 0)
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
            os.closerange(3, os.sysconf("SC_OPEN_MAX"))
            shim.run(task_dir)
            code = 0
        except BaseException:  # noqa: BLE001 - the shim's last words go to shim.log
            traceback.print_exc()
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:  # noqa: BLE001
                    pass
            os._exit(code)
    os.close(log_fd)
    return pid


def serve(requests_fd: int, answers_fd: int) -> None:
    """Answer requests until the end of input. Answers are written with os.write, never
    through a buffer a fork would copy."""
    pending = b""
    while True:
        data = os.read(requests_fd, READ_CHUNK_BYTES)
        if not data:
            return
        pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            try:
                answer = b"%d\n" % launch(os.fsdecode(line))
            except OSError as e:
                answer = b"!" + str(e).replace("\n", " ").encode(errors="replace") + b"\n"
            os.write(answers_fd, answer)


def main() -> int:
    # Shims are reaped by the kernel: the launcher never waits for them.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    # Like the daemon (process.py protect_daemon): a task running as the daemon's user
    # can neither ptrace the launcher nor read its memory (its shims are as before).
    _set_dumpable(0)
    serve(0, 1)
    return 0


if __name__ == "__main__":
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    sys.exit(main())
