"""ContainerSpec.User as the process runtime resolves it (as runc does, except that a
numeric user with no passwd entry never lands in root's group)."""

from __future__ import annotations

import os
import pwd

import pytest

from shoal.agent.executor.base import ExecutorError
from shoal.agent.executor.process_user import resolve_user

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs tasks as other users: root only")


def unused_uid() -> int:
    uid = 54321
    while True:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
        uid += 1


def test_a_numeric_user_without_passwd_entry_gets_its_own_group() -> None:
    uid = unused_uid()
    got_uid, gid, groups, home = resolve_user(str(uid), None)
    assert (got_uid, gid, groups) == (uid, uid, [uid])
    assert gid != 0
    assert home == "/"


def test_an_explicit_group_is_kept() -> None:
    uid = unused_uid()
    assert resolve_user(f"{uid}:0", None)[:3] == (uid, 0, [0])


def test_a_named_user_gets_its_passwd_group() -> None:
    entry = pwd.getpwnam("nobody")
    uid, gid, groups, home = resolve_user("nobody", None)
    assert (uid, gid) == (entry.pw_uid, entry.pw_gid)
    assert groups is not None and entry.pw_gid in groups


def test_an_unknown_user_name_is_refused_with_runcs_words() -> None:
    with pytest.raises(ExecutorError, match="unable to find user nosuchuser: no matching entries"):
        resolve_user("nosuchuser", None)
