"""Secrets and configs on the node.

The payloads live in the agent's memory (`Executor.dependencies`, filled from the
dispatcher's assignments) and, for a task that needs them, on a tmpfs of its own
(mounted nodev,nosuid,noexec, mode 0700): never on the node's disk.

Docker runtime (`prepare_binds`): as dockerd does it, the files lie flat on the task's
tmpfs, which is then remounted read-only, and each is bind-mounted read-only into the
container at its target; the tmpfs is unmounted when the container is removed.

Process runtime (`prepare`, on `<task dir>/deps`): the task sees them through its
private mount namespace, which its shim enters before it starts the task (shim.py
`enter_mounts`): each top-level directory that holds a target (`/run` for
`/run/secrets/...`, `/etc` for `/etc/app/conf.yml`) is an overlay whose lower layer is
the host's directory and whose upper layer is on that tmpfs, so a target may be
anywhere, even in a directory the host lacks, and nothing is written to the host's
filesystem; then `/run/secrets` is made read-only. Mounts below such a directory on
the host are not visible to the task through the overlay. A target directly under /
(`/<name>`, Docker's default for configs) needs a mount point the host lacks: the task
then gets a root of its own, a directory on that tmpfs holding those files and a
recursive bind mount of every directory of the host's / (shim.py `enter_root`).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Any

from shoal.agent.executor.base import ExecutorError
from shoal.agent.templates import TemplateError, render
from shoal.types.agent import Dependency
from shoal.types.task import Task

SECRETS_DIR = "/run/secrets"
DEPS_DIR = "deps"
DIR_MODE = 0o755  # directories made for targets the host does not have
# Size bound of a task's tmpfs: its secrets (< 500 KiB each) and configs (< 1000 KiB).
DEPS_TMPFS_SIZE = "64m"
# On the task's tmpfs: its root directory, when a target lies directly under /.
NEW_ROOT_DIR = "root"
DEFAULT_SECRET_MODE = 0o444
DEFAULT_CONFIG_MODE = 0o444


def _ids(file: dict[str, Any] | None) -> tuple[int, int, int]:
    file = file or {}
    mode = file.get("Mode")
    return (
        int(file.get("UID") or 0),
        int(file.get("GID") or 0),
        DEFAULT_SECRET_MODE if mode is None else int(mode),
    )


def files_of(
    task: Task, deps: dict[str, Dependency], context: dict[str, Any]
) -> list[tuple[str, bytes, int, int, int]]:
    """(absolute target, bytes, uid, gid, mode) of every secret and config of `task`;
    ExecutorError when the node lacks one (it was not sent: a bug) or a template fails."""
    cs = task.spec.container_spec
    out: list[tuple[str, bytes, int, int, int]] = []
    if cs is None:
        return out
    secrets_by_target: dict[str, bytes] = {}
    for ref in cs.secrets or ():
        dep = deps.get(f"secret:{ref.secret_id}")
        if dep is None:
            raise ExecutorError(f"secret {ref.secret_name} is not available on this node")
        data = dep.data
        secrets_by_target[str((ref.file or {}).get("Name") or ref.secret_name)] = data
        name = str((ref.file or {}).get("Name") or ref.secret_name)
        target = name if name.startswith("/") else f"{SECRETS_DIR}/{name}"
        out.append((target, data, *_ids(ref.file)))
    for cref in cs.configs or ():
        if cref.file is None:
            continue  # a runtime config (credential spec): nothing to mount
        cdep = deps.get(f"config:{cref.config_id}")
        if cdep is None:
            raise ExecutorError(f"config {cref.config_name} is not available on this node")
        data = cdep.data
        if cdep.template:
            try:
                data = render(data, {**context, "secrets": secrets_by_target})
            except TemplateError as e:
                raise ExecutorError(f"config {cref.config_name}: {e}") from e
        name = str(cref.file.get("Name") or cref.config_name)
        target = name if name.startswith("/") else f"/{name}"
        out.append((target, data, *_ids(cref.file)))
    return out


def prepare(task_dir: Path, files: list[tuple[str, bytes, int, int, int]]) -> list[dict[str, str]]:
    """Mount the task's tmpfs and lay its files out there; returns the mounts its shim
    makes (see shim.enter_mounts). Root only: a mount namespace needs it."""
    if not files:
        return []
    root = task_dir / DEPS_DIR
    _mount_tmpfs(root, "process")
    mounts: list[dict[str, str]] = []
    tops: set[str] = set()
    for target, data, uid, gid, mode in files:
        parts = Path(target).parts
        if len(parts) < 2:
            raise ExecutorError(f"invalid mount target, must be an absolute path: {target}")
        if len(parts) == 2:
            # Directly under / (Docker's default config target, `/<name>`): the task
            # gets a root of its own on the tmpfs (shim.enter_root).
            if os.path.isdir(target):
                raise ExecutorError(
                    f"invalid mount target {target}: it is a directory on this node"
                )
            new_root = root / NEW_ROOT_DIR
            if not mounts or "root" not in mounts[0]:
                new_root.mkdir(mode=0o755, exist_ok=True)
                os.chmod(new_root, 0o755)
                mounts.insert(0, {"root": str(new_root)})
            _write(new_root / parts[1], data, uid, gid, mode)
            continue
        top = parts[1]
        upper = root / top / "upper"
        if top not in tops:
            tops.add(top)
            upper.mkdir(parents=True, exist_ok=True)
            # The overlay's top directory takes the upper layer's mode: the host's own
            # (/run is 0755), not what the daemon's umask (0077) gave it.
            os.chmod(upper, _mode_of(f"/{top}"))
            (root / top / "work").mkdir(parents=True, exist_ok=True)
            mounts.append(
                {"overlay": f"/{top}", "upper": str(upper), "work": str(root / top / "work")}
            )
        path = upper.joinpath(*parts[2:])
        _make_dirs(upper, parts[2:-1])
        _write(path, data, uid, gid, mode)
    if any(t.startswith(SECRETS_DIR + "/") for t, *_ in files):
        mounts.append({"readonly": SECRETS_DIR})
    return mounts


def _mode_of(host_dir: str) -> int:
    try:
        return os.stat(host_dir).st_mode & 0o7777
    except FileNotFoundError:
        return DIR_MODE


def _make_dirs(base: Path, names: tuple[str, ...]) -> None:
    """The directories between `base` and a target, each as the host has it (or 0755,
    as Docker makes /run/secrets): readable by a task running as another user."""
    path, host = base, "/" + base.parent.name
    for name in names:
        path, host = path / name, f"{host}/{name}"
        if not path.is_dir():
            path.mkdir()
            os.chmod(path, _mode_of(host))


def _mount_tmpfs(root: Path, runtime: str) -> None:
    if os.geteuid() != 0:
        raise ExecutorError(
            f"secrets and configs need the daemon to run as root ({runtime} runtime)"
        )
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not os.path.ismount(root):
        _mount(
            "-t", "tmpfs", "-o", f"mode=0700,nodev,nosuid,noexec,size={DEPS_TMPFS_SIZE}",
            "tmpfs", str(root),
        )  # fmt: skip


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise ExecutorError(f"cannot mount the task's secrets tmpfs: {done.stderr.strip()}")


def _write(path: Path, data: bytes, uid: int, gid: int, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def prepare_binds(
    root: Path, files: list[tuple[str, bytes, int, int, int]]
) -> list[dict[str, Any]]:
    """Docker runtime: a fresh tmpfs at `root` holding `files` flat (one per reference,
    with its mode/uid/gid), then remounted read-only; returns the read-only bind mounts
    (the engine's Mount objects) that put each file at its target in the container."""
    if not files:
        return []
    release_binds(root)  # an earlier attempt's: start afresh
    _mount_tmpfs(root, "docker")
    binds: list[dict[str, Any]] = []
    for n, (target, data, uid, gid, mode) in enumerate(files):
        path = root / str(n)
        _write(path, data, uid, gid, mode)
        binds.append({"Type": "bind", "Source": str(path), "Target": target, "ReadOnly": True})
    _mount("-o", "remount,ro", str(root))
    return binds


def release_binds(root: Path) -> None:
    """Docker runtime: unmount the task's tmpfs (its payloads vanish with it) and remove
    the empty mount point."""
    if os.path.ismount(root):
        subprocess.run(["umount", "-l", str(root)], check=False, capture_output=True)
    with contextlib.suppress(OSError):
        root.rmdir()


def release(task_dir: Path) -> None:
    """Unmount the task's tmpfs (its payloads vanish with it)."""
    root = task_dir / DEPS_DIR
    if os.path.ismount(root):
        subprocess.run(["umount", "-l", str(root)], check=False, capture_output=True)
