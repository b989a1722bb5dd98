"""Per-task supervisor of the process executor, in the role containerd-shim plays for
containers: `python -I shim.py <task_dir>`.

The agent starts one shim per task in a session of its own, so the task outlives the
agent (a restart, a `kill -9`) and a new agent adopts it by reading the task directory.
The shim talks to the agent only through files in that directory, never through a pipe:

    spec.json   what to run (written by the agent): argv, env, cwd, uid, gid, groups,
                the mounts of its private mount namespace (secrets and configs,
                see shoal/agent/secrets.py), which the shim enters before the task
                starts, and `log`: the log driver ({"driver": "json-file" | "none"},
                or "gelf" with where and how to send, see gelf.py); for a task on
                swarm networks, `netns` (the file naming its network namespace, which
                the task process joins), `hold` (its networks' sandbox namespaces, which
                the shim keeps open while the task runs) and `hostname` (set in a UTS
                namespace of its own), its /etc/hosts and /etc/resolv.conf being `bind`
                mounts
    shim.pid    the shim's identity, written first: "<pid> <start time> <boot id>" (the
                start time in clock ticks, as in /proc/<pid>/stat, so that a pid reused
                by another process, even after a reboot, is not taken for the shim)
    pid         the task process's pid, once it has been exec'd
    log.jsonl   one JSON object per line of output: {"ts": <wall clock ns>,
                "stream": 1 | 2, "data": <the bytes, decoded as UTF-8 with
                surrogateescape and written with ASCII escapes>}; also under gelf
                (as Docker's dual logging keeps a local cache), not under `none`
    exit.json   {"exit_code": N, "signal": S | null} once the task has exited, or
                {"exit_code": 127 | 126, "signal": null, "error": "..."} when it could
                not be exec'd; written atomically, after the last log line

The task process leads its own process group, so the agent signals the whole tree.
When it exits, the shim kills what is left of the group (as a container's processes
die with its init), drains the pipes for a bounded time, writes exit.json and exits.

Standard library only, and nothing slow to import: one Python process runs per task.
This module is also imported by the agent for the file names and the record format.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import signal
import subprocess
import sys
import time

# Annotations only: `typing` costs every shim ~2 ms to import (mypy reads this block).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType
    from typing import Any

SPEC_FILE = "spec.json"
TASK_UMASK = 0o022  # what a container's process starts with
STARTED_FILE = "started"
SHIM_PID_FILE = "shim.pid"
PID_FILE = "pid"
LOG_FILE = "log.jsonl"
SHIM_LOG_FILE = "shim.log"
EXIT_FILE = "exit.json"

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"

STDOUT = 1
STDERR = 2

# After the task process exits, how long to keep reading output that processes it left
# behind (or that escaped its process group) may still write.
DRAIN_TIMEOUT_S = 2.0
# Only on kernels without pidfd_open (< 5.3): how often to check for the task's exit.
CHILD_POLL_S = 0.1
READ_CHUNK_BYTES = 65536
# Longer lines are cut into records of this size, as Docker cuts them at 16 KiB.
MAX_LINE_BYTES = 16384
# Exit codes a shell (and Docker) reports for a command it could not run.
EXIT_CODE_NOT_FOUND = 127
EXIT_CODE_CANNOT_EXEC = 126


def encode_record(ts_ns: int, stream: int, data: bytes) -> bytes:
    """One line of log.jsonl."""
    text = data.decode("utf-8", "surrogateescape")
    record = {"ts": ts_ns, "stream": stream, "data": text}
    return json.dumps(record, separators=(",", ":")).encode("ascii") + b"\n"


def decode_record(line: bytes) -> tuple[int, int, bytes]:
    """(timestamp ns, stream, data) of one line of log.jsonl; ValueError if malformed."""
    try:
        record = json.loads(line)
        data = record["data"].encode("utf-8", "surrogateescape")
        return int(record["ts"]), int(record["stream"]), data
    except (KeyError, TypeError, AttributeError, UnicodeError) as e:
        raise ValueError(f"malformed log record: {e}") from e


def write_atomic(path: str, data: bytes) -> None:
    """Write a file so that readers see either nothing or all of it."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


Line = tuple[int, int, bytes]  # (timestamp ns, stream, data)


class _LineSplitter:
    """Cuts one stream's output into lines: whole lines (newline kept), lines longer
    than MAX_LINE_BYTES in pieces, and what is left at the end as a partial line."""

    def __init__(self, stream: int) -> None:
        self.stream = stream
        self.buf = bytearray()

    def feed(self, data: bytes, ts_ns: int) -> list[Line]:
        self.buf += data
        records = []
        start = 0
        while True:
            end = self.buf.find(b"\n", start, start + MAX_LINE_BYTES)
            if end >= 0:
                stop = end + 1
            elif len(self.buf) - start >= MAX_LINE_BYTES:
                stop = start + MAX_LINE_BYTES
            else:
                break
            records.append((ts_ns, self.stream, bytes(self.buf[start:stop])))
            start = stop
        del self.buf[:start]
        return records

    def flush(self, ts_ns: int) -> list[Line]:
        if not self.buf:
            return []
        line = (ts_ns, self.stream, bytes(self.buf))
        self.buf.clear()
        return [line]


class _LogSink:
    """Where the task's lines go, as its log driver says: log.jsonl (json-file, and
    gelf's local cache), the GELF endpoint, or nowhere (none)."""

    def __init__(self, log_fd: int, config: dict[str, Any]) -> None:
        driver = config.get("driver", "json-file")
        self.log_fd = log_fd if driver != "none" else None
        self.gelf = _load_sibling("gelf").UDPSender(config) if driver == "gelf" else None

    def write(self, lines: list[Line]) -> None:
        if not lines:
            return
        if self.log_fd is not None:
            _write_all(self.log_fd, b"".join(encode_record(*line) for line in lines))
        if self.gelf is not None:
            for ts_ns, stream, data in lines:
                self.gelf.send(data, ts_ns, stream)

    def close(self) -> None:
        if self.gelf is not None:
            if self.gelf.errors or self.gelf.dropped:
                print(
                    f"gelf: {self.gelf.errors} send errors, {self.gelf.dropped} messages "
                    "too large to send",
                    file=sys.stderr,
                )
            self.gelf.close()


def _load_sibling(name: str) -> ModuleType:
    """A stdlib-only module beside this file: run as a script with -I, the shim has no
    package to import it from, so its directory goes at the end of the path (no stdlib
    module is shadowed). A plain import: importlib.util alone costs a shim some 6 ms."""
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.append(here)
    return importlib.import_module(name)


def _exec_error(e: BaseException, spec: dict[str, Any]) -> tuple[int, str]:
    """Exit code and message for a task process that could not be started."""
    argv0 = spec["argv"][0]
    if isinstance(e, OSError):
        if e.filename is not None and os.fsdecode(e.filename) == spec["cwd"]:
            return EXIT_CODE_CANNOT_EXEC, f"chdir to {spec['cwd']}: {e.strerror}"
        if isinstance(e, FileNotFoundError):
            if "/" not in argv0:
                return EXIT_CODE_NOT_FOUND, f"executable file not found in $PATH: {argv0}"
            return EXIT_CODE_NOT_FOUND, f"exec {argv0}: no such file or directory"
        return EXIT_CODE_CANNOT_EXEC, f"exec {argv0}: {e.strerror or e}"
    return EXIT_CODE_CANNOT_EXEC, f"exec {argv0}: {e}"


def proc_stat(pid: int | str) -> tuple[str, int] | None:
    """(state, start time in clock ticks) of a process, None when there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[0].decode(), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def boot_id() -> str:
    try:
        with open(BOOT_ID_PATH) as f:
            return f.read().strip()
    except OSError:
        return ""


def _exit_record(returncode: int) -> dict[str, Any]:
    if returncode < 0:
        return {"exit_code": 128 - returncode, "signal": -returncode}
    return {"exit_code": returncode, "signal": None}


def _exited(pid: int) -> bool:
    """True once the task process has exited; leaves it unreaped (so its pid, which is
    also its process group id, cannot be reused yet)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _open_pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


CLONE_NEWNS = 0x00020000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_MOVE = 8192
MNT_DETACH = 2
CLONE_NEWNET = 0x40000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWPID = 0x20000000
PR_SET_NAME = 15
INIT_NAME = b"shoal-init"


def enter_mounts(mounts: list[dict[str, str]]) -> None:
    """A private mount namespace for the shim and its task: the overlays that lay the
    task's secrets and configs over the host's directories, then /run/secrets read-only.
    OSError when the kernel refuses."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def check(rc: int, what: str) -> None:
        if rc != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    def mount(
        src: str | None, target: str, fstype: str | None, flags: int, data: str | None
    ) -> None:
        check(
            libc.mount(
                src and src.encode(), target.encode(), fstype and fstype.encode(), flags,
                data and data.encode(),
            ),
            f"mount {target}",
        )  # fmt: skip

    check(libc.unshare(CLONE_NEWNS), "unshare")
    mount(None, "/", None, MS_REC | MS_PRIVATE, None)
    for m in mounts:
        if "root" in m:
            enter_root(m["root"], mount)
        elif "overlay" in m:
            d = m["overlay"]
            opts = f"lowerdir={d},upperdir={m['upper']},workdir={m['work']}"
            mount("overlay", d, "overlay", MS_NODEV | MS_NOSUID, opts)
        elif "bind" in m:  # a file of the task's over the host's (/etc/hosts)
            mount(m["bind"], m["target"], None, MS_BIND, None)
        elif "detach" in m:
            # The node's namespace files (network/netns.py): this copy of the mount
            # table must not keep other tasks' namespaces alive.
            libc.umount2(m["detach"].encode(), MNT_DETACH)
        elif "readonly" in m:
            d = m["readonly"]
            mount(d, d, None, MS_BIND, None)
            mount(
                None,
                d,
                None,
                MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NODEV | MS_NOSUID | MS_NOEXEC,
                None,
            )


def enter_root(
    new: str, mount: Callable[[str | None, str, str | None, int, str | None], None]
) -> None:
    """Make `new` (a directory on the task's tmpfs, holding the files whose target is
    directly under /) the root of this mount namespace: every entry of the host's / is
    added to it (directories as recursive bind mounts, files bound, symlinks copied),
    then `new` is moved onto / and the process chroots into it, as switch_root does.
    Nothing is written to the host. Tools entering the namespace from outside need the
    task's root too (`nsenter -m -r`, or /proc/<pid>/root)."""
    mount(new, new, None, MS_BIND, None)
    for name in sorted(os.listdir("/")):
        src, dst = "/" + name, os.path.join(new, name)
        if os.path.lexists(dst):
            continue  # the task's own file
        if os.path.islink(src):
            os.symlink(os.readlink(src), dst)
        elif os.path.isdir(src):
            os.mkdir(dst, 0o755)
            mount(src, dst, None, MS_BIND | MS_REC, None)
        elif os.path.isfile(src):
            os.close(os.open(dst, os.O_WRONLY | os.O_CREAT, 0o600))
            mount(src, dst, None, MS_BIND, None)
    os.chdir(new)
    mount(new, "/", None, MS_MOVE, None)
    os.chroot(".")
    os.chdir("/")


PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38


class ConfinementError(Exception):
    """The task's cgroups or credentials could not be set up."""


# The task process's pid in its namespace: the shim's first child after the init.
TASK_PID_IN_NAMESPACE = 2
END_OF_TASK = b"x"


def start_init() -> tuple[int, int]:
    """A pid namespace for the task, its PID 1 a minimal init; returns (the init's pid,
    the pipe's end the shim ends it with). The shim stays in the host's namespace but
    its children go into the new one: first the init (PID 1), then the task process
    (PID 2, the shim's own child, so the shim waits for it and reads its real status,
    and the agent signals its group by its host pid as before). Not being PID 1, the
    task dies of a signal it does not handle, as it would without the namespace. The
    init reaps the orphans the task leaves (they are reparented to it) and has no
    handler for any signal but SIGCHLD (the kernel drops, for a PID 1, every other
    signal sent from inside its namespace, SIGKILL too). It exits when the shim writes
    END_OF_TASK (the task has exited), and the kernel then kills whatever is left in
    the namespace. Should the shim die first, the task, reparented to the init, lives
    on as it would without the namespace (the next agent finds it by its cgroups) and
    the init exits once it has exited. ConfinementError when the kernel refuses."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWPID) != 0:
        err = ctypes.get_errno()
        raise ConfinementError(f"unshare(CLONE_NEWPID): {os.strerror(err)}")
    life_r, life_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # the init, PID 1 of the namespace
        try:
            os.close(life_w)
            os.closerange(3, life_r)
            os.closerange(life_r + 1, os.sysconf("SC_OPEN_MAX"))
            libc.prctl(PR_SET_NAME, INIT_NAME, 0, 0, 0)
            _init(life_r)
        finally:
            os._exit(0)
    os.close(life_r)
    return pid, life_w


def _init(life_fd: int) -> None:
    wake_r, wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler: wakes the poll
    poller = select.poll()
    poller.register(life_fd, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    task_fd = None
    while True:
        while True:  # reap every child that has exited
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
        for fd, _events in poller.poll():
            if fd == wake_r:
                while True:
                    try:
                        if not os.read(wake_r, READ_CHUNK_BYTES):
                            break
                    except BlockingIOError:
                        break
            elif fd == task_fd:
                return  # the task has exited, its shim gone
            elif os.read(life_fd, 1):
                return  # END_OF_TASK
            else:
                # The shim died; the task lives on (reparented outside the namespace,
                # as the shim was there) until it exits.
                poller.unregister(life_fd)
                task_fd = _open_pidfd(TASK_PID_IN_NAMESPACE)
                if task_fd is None:
                    return
                poller.register(task_fd, select.POLLIN)


def end_init(init: tuple[int, int] | None, wait: bool = True) -> None:
    """Let the task's init exit, and with it whatever is left in its namespace; with
    `wait`, until it has. The init's exit waits for every process of the namespace to
    be reaped, the task process (the shim's child) too: wait only once it is."""
    if init is None:
        return
    pid, life_fd = init
    if life_fd >= 0:
        try:
            os.write(life_fd, END_OF_TASK)
        except OSError:
            pass  # the init is gone already
        os.close(life_fd)
    if wait:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def _confiner(
    spec: dict[str, Any], cgroups: ModuleType | None, err_fd: int, netns_fd: int | None = None
) -> Callable[[], None]:
    """What the task process does between fork and exec, in this order: join its
    cgroups (as root still), set no_new_privs (no setuid bit or file capability can
    raise its privileges again), then take the task's groups and user. Runs in the
    forked child of this single-threaded shim; a failure is written to `err_fd` and
    fails the start. A networked task first joins its network namespace (`netns_fd`:
    only the child joins it, so the shim, which may send GELF, stays in the node's) and
    gets a UTS namespace of its own with its hostname."""
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    record = spec.get("cgroups")
    uid, gid, groups = spec.get("uid"), spec.get("gid"), spec.get("groups")
    no_new_privs = spec.get("no_new_privs", False)
    libc = ctypes.CDLL(None, use_errno=True)
    hostname = spec.get("hostname")
    own_proc = bool(spec.get("pid_namespace"))

    def mount_proc() -> None:
        """A mount namespace of the task's own with a /proc of its pid namespace (the
        shim's /proc stays the host's)."""
        if libc.unshare(CLONE_NEWNS) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
        if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
            raise OSError(ctypes.get_errno(), "mount --make-rprivate /")
        flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
        if libc.mount(b"proc", b"/proc", b"proc", flags, None) != 0:
            raise OSError(ctypes.get_errno(), "mount /proc")

    def confine() -> None:
        try:
            if netns_fd is not None and libc.setns(netns_fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns(network namespace)")
            if hostname is not None:
                if libc.unshare(CLONE_NEWUTS) != 0:
                    raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUTS)")
                name = hostname.encode()
                if libc.sethostname(name, len(name)) != 0:
                    raise OSError(ctypes.get_errno(), "sethostname")
            if own_proc:
                mount_proc()
            if cgroups is not None:
                cgroups.join(record)
            if no_new_privs and prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
            if groups is not None:
                os.setgroups(groups)
            if gid is not None:
                os.setregid(gid, gid)
            if uid is not None:
                os.setreuid(uid, uid)
        except OSError as e:
            os.write(err_fd, str(e).encode(errors="replace"))
            raise

    return confine


def run(task_dir: str) -> None:
    """Supervise the task described by `task_dir`/spec.json until it exits."""

    def path(name: str) -> str:
        return os.path.join(task_dir, name)

    stat = proc_stat("self")
    identity = f"{os.getpid()} {stat[1] if stat else 0} {boot_id()}\n"
    write_atomic(path(SHIM_PID_FILE), identity.encode())
    with open(path(SPEC_FILE), "rb") as f:
        spec = json.load(f)
    log_fd = os.open(path(LOG_FILE), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    cgroup_record = spec.get("cgroups")
    cgroups = _load_sibling("cgroups") if cgroup_record else None
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    netns_fd = None
    held: list[int] = []
    init: tuple[int, int] | None = None
    try:
        if cgroups is not None:
            try:
                cgroups.create(cgroup_record)
            except OSError as e:
                raise ConfinementError(f"cannot create the task's cgroup: {e}") from None
        # Opened before the mounts: the task's mount namespace drops the namespace files.
        if spec.get("netns"):
            netns_fd = os.open(spec["netns"], os.O_RDONLY | os.O_CLOEXEC)
        # The sandboxes of its networks, held open for as long as the task runs: they
        # outlive the daemon even if its mount namespace (and their files) goes.
        held = [os.open(p, os.O_RDONLY | os.O_CLOEXEC) for p in spec.get("hold") or ()]
        if spec.get("mounts"):
            enter_mounts(spec["mounts"])
        if spec.get("pid_namespace"):
            init = start_init()
        proc = subprocess.Popen(
            spec["argv"],
            env=spec["env"],
            cwd=spec["cwd"],
            preexec_fn=_confiner(spec, cgroups, err_w, netns_fd),
            start_new_session=True,
            umask=TASK_UMASK,  # the daemon's own (0077) is not the task's
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            close_fds=True,
        )
    except (OSError, subprocess.SubprocessError, ValueError, ConfinementError) as e:
        os.close(err_w)
        reason = os.read(err_r, READ_CHUNK_BYTES).decode(errors="replace")
        os.close(err_r)
        os.close(log_fd)
        end_init(init)
        if cgroups is not None:
            cgroups.kill_and_remove(cgroup_record)
        if reason:
            code, message = EXIT_CODE_CANNOT_EXEC, f"cannot confine the task process: {reason}"
        elif isinstance(e, ConfinementError):
            code, message = EXIT_CODE_CANNOT_EXEC, str(e)
        else:
            code, message = _exec_error(e, spec)
        record = {"exit_code": code, "signal": None, "error": message}
        write_atomic(path(EXIT_FILE), json.dumps(record).encode() + b"\n")
        return
    os.close(err_w)
    os.close(err_r)
    write_atomic(path(PID_FILE), b"%d\n" % proc.pid)

    assert proc.stdout is not None and proc.stderr is not None
    splitters = {
        proc.stdout.fileno(): _LineSplitter(STDOUT),
        proc.stderr.fileno(): _LineSplitter(STDERR),
    }
    poller = select.poll()
    for fd in splitters:
        poller.register(fd, select.POLLIN)
    open_fds = set(splitters)
    pidfd = _open_pidfd(proc.pid)
    if pidfd is not None:
        poller.register(pidfd, select.POLLIN)

    sink = _LogSink(log_fd, spec.get("log") or {})

    def pump(timeout_ms: int | None) -> bool:
        """Log what is ready to read; True when the pidfd says the task has exited."""
        records: list[Line] = []
        child_ready = False
        for fd, _events in poller.poll(timeout_ms):
            if fd == pidfd:
                child_ready = True
                continue
            data = os.read(fd, READ_CHUNK_BYTES)
            if data:
                records += splitters[fd].feed(data, time.time_ns())
            else:
                records += splitters[fd].flush(time.time_ns())
                poller.unregister(fd)
                open_fds.discard(fd)
        sink.write(records)
        return child_ready

    if pidfd is not None:
        while not (pump(None) and _exited(proc.pid)):
            pass
        poller.unregister(pidfd)
        os.close(pidfd)
        pidfd = None
    else:
        while not _exited(proc.pid):
            pump(int(CHILD_POLL_S * 1000))
    # The group leader is gone: end the rest of the group, as Docker does when a
    # container's main process exits. The leader is still unreaped, so the group id is
    # still ours.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    # Its init ending, the kernel kills whatever else is in the task's pid namespace.
    end_init(init, wait=False)
    oom_killed = False
    if cgroups is not None:
        # Processes that left the group (a setsid of their own) are still in the cgroup.
        oom_killed = cgroups.oom_kills(cgroup_record) > 0
        if not cgroups.kill_and_remove(cgroup_record):
            print("cgroups: processes still in the task's cgroup, not removed", file=sys.stderr)
    returncode = proc.wait()
    if init is not None:
        end_init((init[0], -1))

    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while open_fds:
        left_ms = int((deadline - time.monotonic()) * 1000)
        if left_ms <= 0:
            break
        pump(left_ms)
    records = []
    for splitter in splitters.values():
        records += splitter.flush(time.time_ns())
    sink.write(records)
    sink.close()
    os.close(log_fd)
    for fd in held:
        os.close(fd)
    proc.stdout.close()
    proc.stderr.close()
    record = _exit_record(returncode)
    if oom_killed:
        record["oom_killed"] = True
    write_atomic(path(EXIT_FILE), json.dumps(record).encode() + b"\n")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} TASK_DIR", file=sys.stderr)
        return 2
    run(argv[1])
    return 0


if __name__ == "__main__":
    # Whatever the agent let us inherit by mistake (a listening socket...) must not be
    # held for the task's lifetime.
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    sys.exit(main(sys.argv))
