"""The manager's keys, in SwarmKit's DEK/KEK arrangement.

The data encryption key (DEK) seals the store (store/encrypted.py). It is kept on disk
only wrapped (AES-256-GCM) by a key encryption key (KEK). Without autolock the KEK is
kept beside it, readable by root alone, as dockerd keeps it in the node's key file.
With autolock (`swarm init --autolock`, `swarm update --autolock=true`) the KEK is
derived from the unlock key `SWMKEY-1-<base64>` and kept nowhere: a restarted manager
holds nothing it can open until someone gives it the key (`docker swarm unlock`).
The unlock key itself is kept sealed by the DEK, so `docker swarm unlock-key` can show
it on an unlocked manager.

The file (`<data-dir>/swarm/keys.json`, 0600):
    {"dek": b64(nonce||wrapped DEK), "kek": b64(KEK) (without autolock only),
     "unlock_key": b64(nonce||sealed unlock key) (with autolock only)}
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shoal.errors import InvalidArgument, invalid_argument

KEYS_FILE = "keys.json"
KEY_BYTES = 32
NONCE_BYTES = 12
UNLOCK_KEY_PREFIX = "SWMKEY-1-"
MSG_INVALID_KEY = "swarm could not be unlocked: invalid key provided"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _wrap(key: bytes, data: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, data, aad)


def _unwrap(key: bytes, data: bytes, aad: bytes) -> bytes:
    return AESGCM(key).decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], aad)


def new_unlock_key() -> str:
    """`SWMKEY-1-` and 32 random bytes in unpadded base64, as SwarmKit makes them."""
    return UNLOCK_KEY_PREFIX + base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode().rstrip("=")


def kek_from_unlock_key(key: str) -> bytes:
    """The KEK an unlock key stands for; InvalidArgument for anything not a key."""
    key = key.strip()
    if not key.startswith(UNLOCK_KEY_PREFIX):
        raise InvalidArgument(MSG_INVALID_KEY)
    raw = key[len(UNLOCK_KEY_PREFIX) :]
    try:
        material = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except ValueError as e:
        raise InvalidArgument(MSG_INVALID_KEY) from e
    if len(material) != KEY_BYTES:
        raise InvalidArgument(MSG_INVALID_KEY)
    return HKDF(hashes.SHA256(), KEY_BYTES, salt=None, info=b"shoal kek").derive(material)


class ManagerKeys:
    """The DEK (None while locked), the KEK, and the unlock key when autolock is on."""

    def __init__(self, path: Path, wrapped_dek: bytes, sealed_unlock: bytes | None) -> None:
        self.path = path
        self._wrapped_dek = wrapped_dek
        self._sealed_unlock = sealed_unlock
        self.dek: bytes | None = None
        self.kek: bytes | None = None
        self.unlock_key: str | None = None

    @property
    def autolock(self) -> bool:
        return self._sealed_unlock is not None

    @property
    def locked(self) -> bool:
        return self.dek is None

    @classmethod
    def create(cls, directory: Path, autolock: bool) -> ManagerKeys:
        keys = cls(directory / KEYS_FILE, b"", None)
        keys.dek = secrets.token_bytes(KEY_BYTES)
        keys._set(new_unlock_key() if autolock else None)
        return keys

    @classmethod
    def adopt(cls, directory: Path, dek: bytes) -> ManagerKeys:
        """Another manager's DEK (several managers share one store, sealed by it)."""
        keys = cls(directory / KEYS_FILE, b"", None)
        keys.dek = dek
        keys._set(None)
        return keys

    @classmethod
    def load(cls, directory: Path) -> ManagerKeys:
        """The keys as the file has them: unlocked at once without autolock."""
        data = json.loads((directory / KEYS_FILE).read_text())
        sealed = base64.b64decode(data["unlock_key"]) if "unlock_key" in data else None
        keys = cls(directory / KEYS_FILE, base64.b64decode(data["dek"]), sealed)
        if "kek" in data:
            keys._open(base64.b64decode(data["kek"]))
        return keys

    @classmethod
    def exists(cls, directory: Path) -> bool:
        return (directory / KEYS_FILE).exists()

    def _open(self, kek: bytes) -> None:
        self.dek = _unwrap(kek, self._wrapped_dek, b"dek")
        self.kek = kek
        if self._sealed_unlock is not None:
            self.unlock_key = _unwrap(self.dek, self._sealed_unlock, b"unlock-key").decode()

    def unlock(self, key: str) -> None:
        """Open the DEK with the unlock key; InvalidArgument (dockerd's words) when the
        key is not the right one."""
        if not self.locked:
            raise invalid_argument("swarm is not locked")
        try:
            self._open(kek_from_unlock_key(key))
        except InvalidTag as e:
            raise InvalidArgument(MSG_INVALID_KEY) from e

    def _set(self, unlock_key: str | None) -> None:
        """Re-wrap the DEK: by a KEK from `unlock_key` (autolock), else a random one
        kept beside it; then write the file."""
        assert self.dek is not None
        kek = (
            kek_from_unlock_key(unlock_key)
            if unlock_key is not None
            else secrets.token_bytes(KEY_BYTES)
        )
        self._wrapped_dek = _wrap(kek, self.dek, b"dek")
        self._sealed_unlock = (
            None if unlock_key is None else _wrap(self.dek, unlock_key.encode(), b"unlock-key")
        )
        self.kek = kek
        self.unlock_key = unlock_key
        data = {"dek": _b64(self._wrapped_dek)}
        if self._sealed_unlock is None:
            data["kek"] = _b64(kek)
        else:
            data["unlock_key"] = _b64(self._sealed_unlock)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.touch(mode=0o600)
        tmp.write_text(json.dumps(data))
        tmp.replace(self.path)

    def set_autolock(self, on: bool, rotate: bool = False) -> bool:
        """Turn autolock on or off, or rotate the unlock key; True when anything
        changed (a KEK the old key stood for opens nothing any more)."""
        if on and (not self.autolock or rotate):
            self._set(new_unlock_key())
            return True
        if not on and self.autolock:
            self._set(None)
            return True
        return False
