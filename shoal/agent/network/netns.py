"""Network namespaces kept alive by a file: a bind mount of the namespace's nsfs inode
onto a file of ours (what `ip netns add` does under /var/run/netns), so a namespace
outlives the process that made it and is named by a path any process can open.

The directory that holds them is a bind mount of itself made shared, as iproute2 makes
/var/run/netns: a mount namespace copied later (a task's private one) then sees the
removal of a namespace file and does not keep the namespace alive. `detach_dir` is for
such a copy: the task's shim drops the whole directory from its own mount namespace.

Creating one unshares in a short-lived thread of its own (setns and unshare of the
network namespace are per thread), so no process is forked.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from pathlib import Path

CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MS_REC = 16384
MS_SHARED = 1 << 20
MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src: str | None, target: str, fstype: str | None, flags: int) -> None:
    _check(
        _libc.mount(src and src.encode(), target.encode(), fstype and fstype.encode(), flags, None),
        f"mount {target}",
    )


def is_mountpoint(path: Path) -> bool:
    """True when `path` is the target of a mount (as /proc/self/mountinfo lists it)."""
    target = str(path.resolve())
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and _unescape(fields[4]) == target:
                return True
    return False


def _unescape(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape").encode().decode("unicode_escape")


def share_dir(path: Path) -> None:
    """Make `path` a shared bind mount of itself (iproute2's netns run dir). The caller
    records that it did this before calling, and undoes it with `unshare_dir`."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    _mount(str(path), str(path), None, MS_BIND | MS_REC)
    _mount(None, str(path), None, MS_SHARED | MS_REC)


def unshare_dir(path: Path) -> None:
    if path.exists() and is_mountpoint(path):
        _check(_libc.umount2(str(path).encode(), MNT_DETACH), f"umount {path}")


def create(path: Path, made: Callable[[int], None] | None = None) -> None:
    """A new, empty network namespace (only `lo`, down) named by `path`. `made` is
    called with the namespace's inode once it exists, before `path` is created and
    names it (the caller records both at once; if it raises, nothing is left)."""
    error: list[BaseException] = []
    named = False

    def make() -> None:
        nonlocal named
        try:
            _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
            tid = threading.get_native_id()
            if made is not None:
                made(os.stat(f"/proc/self/task/{tid}/ns/net").st_ino)
            os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o400))
            named = True
            _mount(f"/proc/self/task/{tid}/ns/net", str(path), None, MS_BIND)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            error.append(e)

    # The thread ends in the new namespace: it is not reused for anything else.
    thread = threading.Thread(target=make, name="netns-create")
    thread.start()
    thread.join()
    if error:
        if named:
            remove(path)
        raise error[0]


def remove(path: Path) -> None:
    """Unmount and delete the file naming a namespace (the namespace itself goes when
    nothing else holds it); nothing when the file is already gone."""
    _libc.umount2(str(path).encode(), MNT_DETACH)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def exists(path: Path) -> bool:
    """True when `path` names a live network namespace (an nsfs mount)."""
    try:
        return os.stat(path).st_dev != os.stat(path.parent).st_dev or is_mountpoint(path)
    except OSError:
        return False


def _setns(fd: int) -> None:
    _check(_libc.setns(fd, CLONE_NEWNET), "setns(CLONE_NEWNET)")


class Entered:
    """Run the calling thread in the namespace named by `path` for the `with` block,
    then back in its own: what a netlink socket is opened in is where it works, so
    sockets opened inside keep working after. (pyroute2's IPRoute(netns=...) forks a
    process for that: ~7 ms against ~0.4 ms.)"""

    def __init__(self, path: str) -> None:
        self.path = path
        self._own = -1

    def __enter__(self) -> None:
        self._own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        target = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
        except BaseException:
            os.close(self._own)
            raise
        finally:
            os.close(target)

    def __exit__(self, *exc: object) -> None:
        try:
            _setns(self._own)
        finally:
            os.close(self._own)


def inode(path: Path | str) -> int:
    return os.stat(path).st_ino


def bind(src: str, path: Path) -> None:
    """Name the namespace `src` refers to (/proc/<pid>/ns/net, /proc/<pid>/fd/<n>) by
    `path` again: what a restarted daemon does when its namespace files are not mounted
    in its mount namespace (a previous one's, gone with it)."""
    if not path.exists():
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT, 0o400))
    _mount(src, str(path), None, MS_BIND)


def find_holder(ino: int, pids: list[int]) -> str | None:
    """A path to the network namespace whose inode is `ino`, found among the namespaces
    and open files of processes `pids` (a task's process is in its namespace; its shim
    holds its networks' sandboxes open); None when none of them holds it. Compared by
    stat (device of nsfs and inode), not by the link's text: a file opened through a
    bind mount reads as the mount's path."""
    nsfs = os.stat("/proc/self/ns/net").st_dev

    def holds(path: str) -> bool:
        try:
            st = os.stat(path)
        except OSError:
            return False
        return st.st_ino == ino and st.st_dev == nsfs

    for pid in pids:
        if holds(f"/proc/{pid}/ns/net"):
            return f"/proc/{pid}/ns/net"
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            if holds(f"{fd_dir}/{fd}"):
                return f"{fd_dir}/{fd}"
    return None
