"""The service's user and groups as a process task takes them: ContainerSpec.User and
ContainerSpec.Groups resolved against the host's passwd and group files, as runc does
(docs/process-runtime.md)."""

from __future__ import annotations

import grp
import os
import pwd

from shoal.agent.executor.base import ExecutorError

# HOME of a user with no passwd entry, as runc sets it.
DEFAULT_HOME = "/"


def resolve_user(
    user: str | None, extra_groups: list[str] | None
) -> tuple[int | None, int | None, list[int] | None, str]:
    """(uid, gid, supplementary groups, HOME) for ContainerSpec.User ("uid", "uid:gid",
    "name", "name:group") and ContainerSpec.Groups, resolved as runc does; None ids
    leave the agent's own. ExecutorError for unknown users and groups."""
    additional = [_resolve_group(g) for g in extra_groups or []]
    if not user:
        home = _home_of(os.geteuid())
        if not additional:
            return None, None, None, home
        return None, None, sorted(set(os.getgroups()) | set(additional)), home
    name, _, group = user.partition(":")
    if name.isdigit():
        uid = int(name)
        try:
            entry: pwd.struct_passwd | None = pwd.getpwuid(uid)
        except KeyError:
            entry = None
    else:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise ExecutorError(
                f"unable to find user {name}: no matching entries in passwd file"
            ) from None
        uid = entry.pw_uid
    # A uid with no passwd entry runs in the group of the same number, never in root's
    # group 0 (which would hand the task root's group-owned files on the host).
    gid = _resolve_group(group) if group else (entry.pw_gid if entry else uid)
    groups = set(os.getgrouplist(entry.pw_name, gid)) if entry else {gid}
    groups.update(additional)
    home = entry.pw_dir if entry and entry.pw_dir else DEFAULT_HOME
    if os.geteuid() != 0:
        if uid != os.geteuid() or gid != os.getegid() or additional:
            raise ExecutorError(f"cannot run as user {user}: the agent does not run as root")
        return None, None, None, home
    return uid, gid, sorted(groups), home


def _resolve_group(group: str) -> int:
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ExecutorError(
            f"unable to find group {group}: no matching entries in group file"
        ) from None


def _home_of(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_dir or DEFAULT_HOME
    except KeyError:
        return DEFAULT_HOME
