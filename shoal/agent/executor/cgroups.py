"""The control groups of the process runtime: one per task, as a container has.

Each task gets `<the daemon's own cgroup>/shoal/<task id>` in every hierarchy it
needs: on cgroup v1 the memory, cpu, cpuacct and pids hierarchies (one directory when
controllers are mounted together), on cgroup v2 the one unified directory. Being under
the daemon's cgroup, whatever limits and accounting apply to the daemon apply to its
tasks too. The limits are Docker's reading of the service's `Resources.Limits`:

    MemoryBytes  v1 memory.limit_in_bytes, and memory.memsw.limit_in_bytes at twice
                 that (dockerd's default MemorySwap); v2 memory.max, memory.swap.max
    NanoCPUs     a CFS quota over dockerd's 100 ms period (v1 cpu.cfs_quota_us and
                 cpu.cfs_period_us, v2 cpu.max)
    Pids         pids.max

The agent computes the directories and files (`plan`) and records them in the task's
spec.json before anything is created; the shim creates them (`create`), moves the task
process into them between fork and exec (`join`), and, when the task has ended, kills
whatever is left in them, reads whether the kernel OOM-killed anything (`oom_kills`)
and removes them (`kill_and_remove`). The agent calls `kill_and_remove` again on the
recorded directories when it removes the task, for a shim that did not get to it.

Standard library only: the shim loads this file beside itself.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from typing import Any, NamedTuple

CGROUP_MOUNTINFO = "/proc/self/mountinfo"
PROC_CGROUP = "/proc/self/cgroup"
# The directory, under the daemon's own cgroup, that holds the tasks' cgroups.
PARENT_NAME = "shoal"
# Version 1 hierarchies a task gets a cgroup in, when they are mounted.
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids")
# Version 2 controllers enabled for the tasks' cgroups, when the kernel offers them.
V2_CONTROLLERS = ("memory", "cpu", "pids")
# dockerd's CFS period for NanoCPUs, and the kernel's smallest quota.
CFS_PERIOD_US = 100_000
MIN_CFS_QUOTA_US = 1000
# How long kill_and_remove waits for killed processes to leave their cgroup.
EMPTY_TIMEOUT_S = 5.0
EMPTY_POLL_S = 0.01


class Layout(NamedTuple):
    """Where this process's cgroups are. v1: controller -> its directory for this
    process; v2: {"": the unified directory}, with the controllers it may enable.
    (A NamedTuple, not a dataclass: the shim loads this module for every task, and
    importing dataclasses costs it some 17 ms.)"""

    version: int
    dirs: dict[str, str]
    controllers: tuple[str, ...]

    def has(self, controller: str) -> bool:
        return controller in self.controllers


def parse_mountinfo(text: str) -> tuple[dict[str, tuple[str, str]], tuple[str, str] | None]:
    """The cgroup mounts of /proc/self/mountinfo: v1 controller -> (mount point, root
    of the mount), and the v2 mount (mount point, root) if any."""
    v1: dict[str, tuple[str, str]] = {}
    v2: tuple[str, str] | None = None
    for line in text.splitlines():
        fields = line.split()
        try:
            sep = fields.index("-")
        except ValueError:
            continue
        if len(fields) < sep + 4:
            continue
        root, mount_point, fstype = fields[3], fields[4], fields[sep + 1]
        if fstype == "cgroup2":
            v2 = v2 or (mount_point, root)
        elif fstype == "cgroup":
            for option in fields[sep + 3].split(","):
                if option in V1_CONTROLLERS and option not in v1:
                    v1[option] = (mount_point, root)
    return v1, v2


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """/proc/self/cgroup: controller -> path ("" is the v2 hierarchy's)."""
    paths: dict[str, str] = {}
    for line in text.splitlines():
        _hid, _, rest = line.partition(":")
        names, _, path = rest.partition(":")
        for name in names.split(",") if names else [""]:
            paths[name] = path
    return paths


def _join(mount_point: str, root: str, path: str) -> str:
    rel = os.path.relpath(path, root) if root != "/" else path.lstrip("/")
    return os.path.normpath(os.path.join(mount_point, rel)) if rel != "." else mount_point


def discover(mountinfo: str, proc_cgroup: str, v2_controllers: str = "") -> Layout | None:
    """The layout of a process from its mountinfo and /proc/<pid>/cgroup; v1 when any
    v1 hierarchy we use is mounted, else v2 (`v2_controllers`: its cgroup.controllers);
    None when neither is."""
    v1, v2 = parse_mountinfo(mountinfo)
    paths = parse_proc_cgroup(proc_cgroup)
    if v1:
        dirs = {c: _join(*v1[c], paths[c]) for c in V1_CONTROLLERS if c in v1 and c in paths}
        return Layout(1, dirs, tuple(dirs)) if dirs else None
    if v2 is not None and "" in paths:
        offered = set(v2_controllers.split())
        controllers = tuple(c for c in V2_CONTROLLERS if c in offered)
        return Layout(2, {"": _join(*v2, paths[""])}, controllers)
    return None


def current() -> Layout | None:
    """This process's layout, or None: not root, or no cgroup hierarchy mounted."""
    if os.geteuid() != 0:
        return None
    try:
        with open(CGROUP_MOUNTINFO) as f:
            mountinfo = f.read()
        with open(PROC_CGROUP) as f:
            proc_cgroup = f.read()
    except OSError:
        return None
    layout = discover(mountinfo, proc_cgroup)
    if layout is not None and layout.version == 2:
        # A v2 cgroup that holds processes cannot enable controllers for its children
        # (no internal processes): only those already enabled under the daemon's own
        # cgroup can be used, all that are offered when the daemon is at the root.
        own = layout.dirs[""]
        at_root = parse_proc_cgroup(proc_cgroup).get("") == "/"
        name = "cgroup.controllers" if at_root else "cgroup.subtree_control"
        try:
            with open(os.path.join(own, name)) as f:
                layout = discover(mountinfo, proc_cgroup, f.read())
        except OSError:
            return None
    return layout


def limit_files(
    version: int, memory_bytes: int | None, nano_cpus: int | None, pids: int | None
) -> dict[str, dict[str, str]]:
    """controller -> {file: value} for the limits given (None or 0: no limit), in the
    order they must be written."""
    files: dict[str, dict[str, str]] = {}
    if memory_bytes:
        if version == 1:
            files["memory"] = {
                "memory.limit_in_bytes": str(memory_bytes),
                "memory.memsw.limit_in_bytes": str(2 * memory_bytes),
            }
        else:
            files["memory"] = {
                "memory.max": str(memory_bytes),
                "memory.swap.max": str(memory_bytes),
            }
    if nano_cpus:
        quota = max(MIN_CFS_QUOTA_US, nano_cpus * CFS_PERIOD_US // 1_000_000_000)
        if version == 1:
            files["cpu"] = {
                "cpu.cfs_period_us": str(CFS_PERIOD_US),
                "cpu.cfs_quota_us": str(quota),
            }
        else:
            files["cpu"] = {"cpu.max": f"{quota} {CFS_PERIOD_US}"}
    if pids:
        files["pids"] = {"pids.max": str(pids)}
    return files


def plan(
    layout: Layout,
    task_id: str,
    memory_bytes: int | None = None,
    nano_cpus: int | None = None,
    pids: int | None = None,
) -> dict[str, Any]:
    """What spec.json records of a task's cgroups: {"version", "dirs": [{"dir", "files"}],
    "enable": [v2 directories whose subtree_control must enable the controllers],
    "controllers"}. Limits whose controller this node lacks are left out (`missing`
    names them), as dockerd discards them."""
    files = limit_files(layout.version, memory_bytes, nano_cpus, pids)
    record: dict[str, Any] = {
        "version": layout.version,
        "dirs": [],
        "enable": [],
        "controllers": list(layout.controllers),
        "missing": sorted(c for c in files if not layout.has(c)),
    }
    if layout.version == 1:
        by_dir: dict[str, dict[str, str]] = {}
        for controller, own in layout.dirs.items():
            d = os.path.join(own, PARENT_NAME, task_id)
            by_dir.setdefault(d, {}).update(files.get(controller, {}))
        record["dirs"] = [{"dir": d, "files": f} for d, f in by_dir.items()]
    else:
        own = layout.dirs[""]
        merged = {k: v for c, f in files.items() if layout.has(c) for k, v in f.items()}
        record["dirs"] = [{"dir": os.path.join(own, PARENT_NAME, task_id), "files": merged}]
        record["enable"] = [own, os.path.join(own, PARENT_NAME)]
    return record


def dirs_of(record: dict[str, Any] | None) -> list[str]:
    return [entry["dir"] for entry in (record or {}).get("dirs", [])]


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _mkdir(path: str) -> None:
    """mkdir -p that survives a concurrent rmdir of an empty parent (another task's
    shim removing `shoal/` as its last task ends)."""
    for _ in range(100):
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.mkdir(path, 0o755)
            return
        except FileNotFoundError:
            continue
    os.mkdir(path, 0o755)


def create(record: dict[str, Any]) -> None:
    """Create the recorded cgroups and write their limits; OSError (after removing what
    was made) when the kernel refuses."""
    try:
        if record.get("version") == 2:
            wanted = " ".join("+" + c for c in record.get("controllers", []))
            for d in record.get("enable", []):
                os.makedirs(d, exist_ok=True)
                if wanted:
                    _write(os.path.join(d, "cgroup.subtree_control"), wanted)
        for entry in record.get("dirs", []):
            _mkdir(entry["dir"])
            for name, value in entry["files"].items():
                path = os.path.join(entry["dir"], name)
                if name == "memory.memsw.limit_in_bytes" and not os.path.exists(path):
                    continue  # no swap accounting in this kernel
                try:
                    _write(path, value)
                except OSError as e:
                    raise OSError(e.errno, f"{name}={value}: {e.strerror}") from None
    except OSError:
        kill_and_remove(record)
        raise


def join(record: dict[str, Any]) -> None:
    """Move the calling process into the recorded cgroups (between fork and exec)."""
    pid = str(os.getpid())
    for d in dirs_of(record):
        _write(os.path.join(d, "cgroup.procs"), pid)


def pids_in(record: dict[str, Any] | None) -> set[int]:
    found: set[int] = set()
    for d in dirs_of(record):
        try:
            with open(os.path.join(d, "cgroup.procs")) as f:
                found.update(int(p) for p in f.read().split())
        except (OSError, ValueError):
            pass
    return found


def oom_kills(record: dict[str, Any] | None) -> int:
    """How many processes the kernel OOM-killed in the recorded cgroups (v1
    memory.oom_control, v2 memory.events: `oom_kill N`)."""
    total = 0
    for d in dirs_of(record):
        for name in ("memory.oom_control", "memory.events"):
            try:
                with open(os.path.join(d, name)) as f:
                    for line in f:
                        key, _, value = line.partition(" ")
                        if key == "oom_kill":
                            total += int(value)
            except (OSError, ValueError):
                continue
    return total


def kill_and_remove(record: dict[str, Any] | None, timeout_s: float = EMPTY_TIMEOUT_S) -> bool:
    """SIGKILL every process left in the recorded cgroups, wait for them to leave,
    remove the cgroups, then their `shoal/` parents if empty. True when none is left."""
    dirs = [d for d in dirs_of(record) if os.path.isdir(d)]
    deadline = time.monotonic() + timeout_s
    while dirs:
        for pid in pids_in(record):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for d in list(dirs):
            try:
                os.rmdir(d)
            except FileNotFoundError:
                pass
            except OSError as e:
                if e.errno != errno.EBUSY:
                    raise
                continue
            dirs.remove(d)
        if dirs:
            if time.monotonic() > deadline:
                return False
            time.sleep(EMPTY_POLL_S)
    for d in dirs_of(record):
        try:
            os.rmdir(os.path.dirname(d))  # empty unless other tasks still run
        except OSError:
            pass
    return True
