"""The DEK/KEK arrangement and the sealed store backend."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag

from shoal.errors import InvalidArgument
from shoal.manager.keys import ManagerKeys, new_unlock_key
from shoal.manager.store.backend import MemoryBackend, Record
from shoal.manager.store.encrypted import EncryptedBackend


def test_without_autolock_the_keys_open_at_once(tmp_path: Path) -> None:
    keys = ManagerKeys.create(tmp_path, autolock=False)
    again = ManagerKeys.load(tmp_path)
    assert not again.locked and again.dek == keys.dek and again.unlock_key is None
    assert keys.dek is not None and keys.dek not in (tmp_path / "keys.json").read_bytes()


def test_autolock_needs_the_right_key(tmp_path: Path) -> None:
    keys = ManagerKeys.create(tmp_path, autolock=True)
    assert keys.unlock_key is not None and keys.unlock_key.startswith("SWMKEY-1-")
    locked = ManagerKeys.load(tmp_path)
    assert locked.locked
    for wrong in (new_unlock_key(), "SWMKEY-1-nope", "garbage"):
        with pytest.raises(InvalidArgument, match="invalid key provided"):
            locked.unlock(wrong)
    locked.unlock(keys.unlock_key)
    assert locked.dek == keys.dek and locked.unlock_key == keys.unlock_key


def test_rotation_retires_the_old_key(tmp_path: Path) -> None:
    keys = ManagerKeys.create(tmp_path, autolock=True)
    old = keys.unlock_key
    assert keys.set_autolock(True, rotate=True)
    assert keys.unlock_key != old
    restarted = ManagerKeys.load(tmp_path)
    with pytest.raises(InvalidArgument):
        restarted.unlock(old or "")
    restarted.unlock(keys.unlock_key or "")
    assert keys.set_autolock(False)
    assert not ManagerKeys.load(tmp_path).locked


def test_sealed_backend_round_trips_and_hides_data() -> None:
    inner = MemoryBackend()
    dek = b"k" * 32
    sealed = EncryptedBackend(inner, dek)
    asyncio.run(sealed.commit(1, [Record("secret", "a", b"clear payload")]))
    assert b"clear payload" not in inner.objects[("secret", "a")]
    assert sealed.load() == (1, [Record("secret", "a", b"clear payload")])
    # a sealed record moved to another row does not open
    inner.objects[("secret", "b")] = inner.objects.pop(("secret", "a"))
    with pytest.raises(InvalidTag):
        EncryptedBackend(inner, dek).load()
    # rows written before encryption are read as they are
    inner.objects = {("node", "n"): b"{}"}
    assert sealed.load()[1] == [Record("node", "n", b"{}")]
