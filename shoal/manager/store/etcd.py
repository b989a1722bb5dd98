"""etcd backend: the store shared by several managers (docs/ha.md).

Layout, under a prefix (default `/shoal/`):

    <prefix>store/o/<kind>/<id>   one object, as the store encodes it (Record.data)
    <prefix>store/index           {"index": N, "writer": W}: the store index of the last
                                  commit and the backend instance that made it

Index and revision: each commit is ONE etcd transaction that writes its records (the
last write of each key only: etcd refuses a key twice in a transaction) and then the
index key, last. So every etcd revision the store makes holds exactly one commit, and
the index key's value at that revision is the store index the commit ends at (the
`Version.Index` its objects carry); `index_revision` is the etcd revision of the last
commit this backend knows of. The store index is not the etcd revision (the store
numbers its transactions before they are committed, and a group commit holds several),
but it grows with it: index N was committed at the revision whose index key reads N.

The transaction is guarded by two compares, and writes nothing if either fails:
- fencing: the election key's create_revision equals the leader's fencing token
  (`set_fence`), so a deposed leader's commit fails even before it knows it lost;
- sequencing: the index key's mod_revision equals `index_revision`, so a manager whose
  replica is behind what the leader wrote cannot commit on top of stale state.
A failed compare raises LostLeadership (shoal/errors.py), naming which one; the store
then takes back its transactions (as for a full disk). A commit no member answered is
tried again (on another endpoint) while the leadership it was made under holds (etcd
elects a leader in about 2 s; with quorum lost the lease cannot be kept, and the
leadership ends at its TTL); if an earlier try was in fact applied, the retry's
sequencing compare fails, and the index key, holding this commit's index and this
backend's writer ID, shows it was: the commit succeeded (a retry never applies a
commit twice). Once the leadership is gone (or past COMMIT_RETRY_S, or on any other
failure) the commit is in doubt (CommitInDoubt): the store takes it back and reloads
from etcd once etcd answers (`reload()`).

Other managers' commits come from an etcd watch on `<prefix>store/` from the revision
after the last one this backend read or wrote: the events of one revision, up to the
index key that closes it, make one Commit; the commits this backend made itself (its
writer ID) are skipped. If the member it watches goes, the watch resumes on another
endpoint from the next revision; one that fell behind etcd's compaction raises
ReloadNeeded (the store reloads, and watches again from there).

Encryption at rest is EncryptedBackend's (encrypted.py) around this one, with a DEK the
managers share.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Coroutine
from typing import Any, TypeVar

import aetcd.exceptions
from aetcd.utils import prefix_range_end

from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.errors import LostLeadership
from shoal.etcdclient import CLIENT_ERRORS, FAILURES, EtcdClient, EtcdUnavailable, Fence
from shoal.log import get_logger
from shoal.manager.store.backend import Commit, CommitInDoubt, Record, ReloadNeeded

DEFAULT_PREFIX = b"/shoal/"
LOAD_PAGE = 2000
# How long a commit is tried again while no etcd member answers (etcd elects a new
# leader in about 2 s) and the leadership holds; beyond it the commit is in doubt.
COMMIT_RETRY_S = 15.0
# Backoff of a watch (or a commit) that lost its member, before it tries another.
WATCH_RETRY_S = (0.1, 0.2, 0.5, 1.0, 2.0)

log = get_logger("shoal.manager.store.etcd")
T = TypeVar("T")


class EtcdBackend:
    def __init__(
        self, client: EtcdClient, prefix: bytes = DEFAULT_PREFIX, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self._client = client
        self._clock = clock
        self.prefix = prefix
        self.objects_prefix = prefix + b"store/o/"
        self.index_key = prefix + b"store/index"
        self.writer = secrets.token_hex(8)
        self.fence: Fence | None = None
        self.index = 0  # the store index of the last commit this backend knows of
        self.index_revision = 0  # the etcd revision of that commit (0: none yet)
        self.revision = 0  # the etcd revision this backend has seen everything up to
        self._loaded: list[Record] | None = None
        self._advanced = asyncio.Event()  # set whenever index_revision moves
        self._fence_changed = asyncio.Event()  # set (and replaced) by set_fence

    # reading ----------------------------------------------------------------------------
    async def open(self) -> None:
        """Read every object and the index, at one revision (paged). Before load()."""
        start, end = self.prefix + b"store/", prefix_range_end(self.prefix + b"store/")
        records: list[Record] = []
        index, index_revision, revision = 0, 0, 0
        key = start
        while True:
            kvs, more, at = await self._client.range_page(key, end, revision, LOAD_PAGE)
            revision = revision or at
            for kv in kvs:
                if kv.key == self.index_key:
                    index, _ = _decode_index(kv.value)
                    index_revision = kv.mod_revision
                elif (parsed := self._parse(kv.key)) is not None:
                    records.append(Record(parsed[0], parsed[1], bytes(kv.value)))
            if not more or not kvs:
                break
            key = kvs[-1].key + b"\x00"
        self.index, self.index_revision, self.revision = index, index_revision, revision
        self._loaded = records
        log.info("etcd store loaded", index=index, revision=revision, objects=len(records))

    async def reload(self) -> tuple[int, list[Record]]:
        """Everything again, as etcd holds it now (after a commit in doubt, or a watch
        behind the compaction); the next watch starts after it."""
        await self.open()
        self._advanced.set()
        return self.load()

    def load(self) -> tuple[int, list[Record]]:
        """What open() read (once: a store built again needs open() again, since the
        records are not kept up to date after it)."""
        if self._loaded is None:
            raise RuntimeError("EtcdBackend.open() must be awaited before load()")
        records, self._loaded = self._loaded, None
        return self.index, records

    def _parse(self, key: bytes) -> tuple[str, str] | None:
        if not key.startswith(self.objects_prefix):
            return None
        kind, sep, id_ = key[len(self.objects_prefix) :].decode().partition("/")
        return (kind, id_) if sep else None

    def object_key(self, kind: str, id_: str) -> bytes:
        return self.objects_prefix + f"{kind}/{id_}".encode()

    # writing ----------------------------------------------------------------------------
    def set_fence(self, fence: Fence | None) -> None:
        """The leadership this manager's commits are guarded by (None: it has none,
        and every commit is refused)."""
        self.fence = fence
        self._fence_changed.set()
        self._fence_changed = asyncio.Event()

    async def commit(self, index: int, records: list[Record]) -> None:
        fence = self.fence
        if fence is None:
            raise LostLeadership("this manager does not hold the leadership; nothing was written")
        t = self._client.transactions
        last: dict[bytes, bytes | None] = {}
        for r in records:
            key = self.object_key(r.kind, r.id)
            last.pop(key, None)  # keep the order of last writes
            last[key] = r.data
        ops: list[Any] = [
            t.delete(key) if data is None else t.put(key, data) for key, data in last.items()
        ]
        ops.append(t.put(self.index_key, _encode_index(index, self.writer)))
        compare = [
            t.create(fence.key) == fence.revision,
            t.mod(self.index_key) == self.index_revision,
        ]
        failure = [t.get(fence.key), t.get(self.index_key)]
        deadline = self._clock.monotonic() + COMMIT_RETRY_S
        retried = 0
        while True:
            try:
                result = await self._while_leading(
                    fence, self._client.txn(compare, ops, failure), retried
                )
                break
            except EtcdUnavailable as e:
                # The member went, or etcd is electing: try again (on another
                # endpoint), and find out below whether the first try was applied.
                if self._clock.monotonic() >= deadline:
                    raise CommitInDoubt(f"etcd commit unanswered for {COMMIT_RETRY_S}s: {e}") from e
                log.warning("etcd commit unanswered; trying again", error=str(e))
                pause = WATCH_RETRY_S[min(retried, len(WATCH_RETRY_S) - 1)]
                retried += 1
                await self._while_leading(fence, self._clock.sleep(pause), retried)
            except FAILURES as e:
                raise CommitInDoubt(f"etcd commit failed: {e}") from e
        revision = result.revision
        if not result.succeeded:
            mine = self._applied_before(index, result.responses) if retried else None
            if mine is None and retried:
                # An earlier try may have been applied, then superseded by another
                # leader's commit: only a reload knows.
                raise CommitInDoubt(
                    "a retried commit was refused, and an earlier try may have been "
                    "applied: " + self._refusal(fence, result.responses)
                )
            if mine is None:
                raise LostLeadership(self._refusal(fence, result.responses))
            revision = mine  # an earlier try was applied: the index key says so
        self.index, self.index_revision = index, revision
        self.revision = max(self.revision, revision)

    async def _while_leading(self, fence: Fence, aw: Awaitable[T], tries: int) -> T:
        """`aw`, cut short once the leadership `fence` stands for is gone (with
        quorum lost, a request etcd cannot answer hangs for its 7 s timeout): the
        commit is then in doubt, if a try was sent."""
        changed = self._fence_changed
        if self.fence is not fence:
            _close(aw)
            raise CommitInDoubt("the leadership was lost while the commit was in flight")
        work = asyncio.ensure_future(aw)
        lost = asyncio.ensure_future(changed.wait())
        try:
            await asyncio.wait({work, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
        if not work.cancelled():
            return work.result()
        raise CommitInDoubt(
            f"the leadership (fencing token {fence.revision}) was lost while the commit "
            f"was in flight ({tries} tries unanswered)"
        )

    def _applied_before(self, index: int, responses: list[Any]) -> int | None:
        """The revision of this very commit if an earlier try of it was applied (the
        index key holds its index and this backend's writer ID), else None."""
        current = responses[1].response_range.kvs if len(responses) > 1 else []
        if current and _decode_index(current[0].value) == (index, self.writer):
            return int(current[0].mod_revision)
        return None

    def _refusal(self, fence: Fence, responses: list[Any]) -> str:
        leader = responses[0].response_range.kvs if responses else []
        current = responses[1].response_range.kvs if len(responses) > 1 else []
        if not leader or leader[0].create_revision != fence.revision:
            now = f"revision {leader[0].create_revision}" if leader else "no leader"
            return (
                f"this manager's leadership (fencing token {fence.revision}) was superseded "
                f"({now} holds {fence.key.decode()}); nothing was written"
            )
        at = current[0].mod_revision if current else 0
        return (
            f"this manager's store is behind etcd (last commit at revision {at}, this "
            f"manager has seen {self.index_revision}); nothing was written"
        )

    async def caught_up(self) -> None:
        """Wait until this backend has seen the last commit in etcd (a new leader's
        replica must have applied the old leader's last commit before it writes: the
        sequencing compare). Once elected nobody else commits, so this ends."""
        kvs, _, _ = await self._client.range_page(self.index_key, self.index_key + b"\x00")
        last = int(kvs[0].mod_revision) if kvs else 0
        while self.index_revision < last:
            self._advanced.clear()
            await self._advanced.wait()

    # other writers' commits -------------------------------------------------------------
    def foreign_commits(self, after: int) -> AsyncIterator[Commit] | None:
        if after != self.index:
            raise RuntimeError(
                f"the store asks for commits after index {after}; the backend is at {self.index}"
            )
        return self._watch()

    async def _watch(self) -> AsyncIterator[Commit]:
        start = self.prefix + b"store/"
        failures = 0
        while True:
            try:
                watch = await self._client.watch(
                    start, range_end=prefix_range_end(start), start_revision=self.revision + 1
                )
                try:
                    async for commit in self._commits(watch):
                        failures = 0
                        yield commit
                finally:
                    await watch.cancel()
            except aetcd.exceptions.RevisionCompactedError as e:
                raise ReloadNeeded(
                    f"the store's watch is behind etcd's compaction ({e}): reload the store"
                ) from e
            except CLIENT_ERRORS as e:
                delay = WATCH_RETRY_S[min(failures, len(WATCH_RETRY_S) - 1)]
                failures += 1
                log.warning("etcd watch lost; resuming", error=str(e), revision=self.revision)
                await self._clock.sleep(delay)

    async def _commits(self, watch: Any) -> AsyncIterator[Commit]:
        pending: list[Record] = []
        pending_revision = 0
        async for event in watch:
            kv = event.kv
            if pending and kv.mod_revision != pending_revision:
                # A revision not closed by the index key: a write outside the store.
                log.warning("etcd write outside the store", revision=pending_revision)
                pending = []
            pending_revision = kv.mod_revision
            if kv.key != self.index_key:
                parsed = self._parse(kv.key)
                if parsed is not None:
                    data = None if event.kind == "DELETE" else bytes(kv.value)
                    pending.append(Record(parsed[0], parsed[1], data))
                continue
            records, pending = pending, []
            self.revision = max(self.revision, kv.mod_revision)
            if event.kind == "DELETE":
                continue
            index, writer = _decode_index(kv.value)
            if writer == self.writer or kv.mod_revision <= self.index_revision:
                # This backend's own commit (or one a reload read already). A commit
                # whose first try may have been applied unanswered, then superseded
                # by another leader's before the retry, is in doubt: the store
                # reloads, and finds it or not.
                continue
            self.index, self.index_revision = index, kv.mod_revision
            self._advanced.set()  # the waiter runs after the store applied it
            yield Commit(index, records)

    def close(self) -> None:
        pass  # the client belongs to the caller


def _encode_index(index: int, writer: str) -> bytes:
    return json.dumps({"index": index, "writer": writer}).encode()


def _decode_index(value: bytes) -> tuple[int, str]:
    doc = json.loads(value)
    return int(doc["index"]), str(doc.get("writer", ""))


def _close(aw: Awaitable[Any]) -> None:
    if isinstance(aw, Coroutine):
        aw.close()  # never awaited: no warning
