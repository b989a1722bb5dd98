"""Encryption at rest: a backend wrapper that seals every record with the data
encryption key (DEK), as SwarmKit encrypts its raft log and snapshots.

Each record is AES-256-GCM with a fresh 96-bit nonce and the record's kind and id as
associated data (a sealed record moved to another row does not open). What the
backend below keeps is `MAGIC || nonce || ciphertext`: a row written before encryption
existed (JSON, which never starts with MAGIC) is read as it is and sealed when next
written.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shoal.manager.store.backend import Backend, Commit, Record, SharedBackend

MAGIC = b"\x01"
NONCE_BYTES = 12


class EncryptedBackend:
    def __init__(self, inner: Backend, dek: bytes) -> None:
        self._inner = inner
        self._aead = AESGCM(dek)

    def _seal(self, r: Record) -> Record:
        if r.data is None:
            return r
        nonce = os.urandom(NONCE_BYTES)
        return Record(r.kind, r.id, MAGIC + nonce + self._aead.encrypt(nonce, r.data, _aad(r)))

    def _open(self, r: Record) -> Record:
        if r.data is None or not r.data.startswith(MAGIC):
            return r
        nonce = r.data[1 : 1 + NONCE_BYTES]
        return Record(r.kind, r.id, self._aead.decrypt(nonce, r.data[1 + NONCE_BYTES :], _aad(r)))

    def load(self) -> tuple[int, list[Record]]:
        index, records = self._inner.load()
        return index, [self._open(r) for r in records]

    async def reload(self) -> tuple[int, list[Record]]:
        inner = self._inner
        assert isinstance(inner, SharedBackend), "reload() of a backend not shared"
        index, records = await inner.reload()
        return index, [self._open(r) for r in records]

    async def commit(self, index: int, records: list[Record]) -> None:
        # Sealed off the event loop: a group of MAX_GROUP_RECORDS records takes long
        # enough to hold the API back (commits are one at a time, so order is kept).
        sealed = await asyncio.to_thread(lambda: [self._seal(r) for r in records])
        await self._inner.commit(index, sealed)

    def foreign_commits(self, after: int) -> AsyncIterator[Commit] | None:
        feed = self._inner.foreign_commits(after)
        return None if feed is None else self._opened(feed)

    async def _opened(self, feed: AsyncIterator[Commit]) -> AsyncIterator[Commit]:
        async for commit in feed:
            yield Commit(commit.index, [self._open(r) for r in commit.records])

    def close(self) -> None:
        self._inner.close()


def _aad(r: Record) -> bytes:
    return f"{r.kind}/{r.id}".encode()
