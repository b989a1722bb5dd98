"""Durability backends for the store. The store keeps everything in memory; a backend
makes committed transactions durable, gives them back at start-up, and (for a store
shared by several managers) feeds in the commits other writers made."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import msgspec


class DiskFull(Exception):
    """A commit found no space left on the backend's disk and wrote nothing of its
    records: the store takes back the transactions it held and later writes may try
    again once space is freed. Its message names the file and its disk. Any other
    failed commit leaves the backend in doubt (a failed fsync may have lost pages), and
    the store then stops acknowledging writes until the manager restarts."""


class CommitInDoubt(Exception):
    """A shared backend (etcd) does not know whether a commit was applied: no member
    answered it before the leadership it was made under was lost (quorum lost), or
    etcd failed it in a way that does not say. The store takes back what it held (its
    writers are told no leader holds the swarm), refuses writes, and reloads its tables
    from the backend once it answers (`reload()`): the backend is the truth, the
    commit is there or it is not."""


class ReloadNeeded(Exception):
    """The feed of foreign commits cannot go on from where the store is (an etcd watch
    that fell behind the compaction of history): the store reloads from the backend,
    and follows it again from there."""


class Record(msgspec.Struct, frozen=True, gc=False):
    """One object as the backend stores it; `data` None means deleted. (Not tracked by
    the garbage collector: it holds strings and bytes only, and 10,000 of them wait for
    each commit, long enough to reach the oldest generation.)"""

    kind: str
    id: str
    data: bytes | None


@dataclass(frozen=True, slots=True)
class Commit:
    """What one commit wrote, and the index it ends at."""

    index: int
    records: list[Record] = field(default_factory=list)


class Backend(Protocol):
    def load(self) -> tuple[int, list[Record]]:
        """The last committed index and every live object."""
        ...

    async def commit(self, index: int, records: list[Record]) -> None:
        """Make these writes durable, ending at `index`; return only once they are.
        The store hands over several transactions at once (group commit), in order.
        Raises DiskFull, having written none of them, when the disk has no room."""
        ...

    def foreign_commits(self, after: int) -> AsyncIterator[Commit] | None:
        """Commits other writers make after index `after`, in order (None: this backend
        has one writer, the store itself)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class SharedBackend(Backend, Protocol):
    """A backend other writers share (etcd): it may leave a commit in doubt
    (CommitInDoubt) or its feed may need a reload (ReloadNeeded), after which the
    store reads everything again."""

    async def reload(self) -> tuple[int, list[Record]]:
        """The last committed index and every live object, as the backend holds them
        now (raises while it cannot be read: the store tries again); the feed of
        foreign commits asked for next goes on from there."""
        ...


class MemoryBackend:
    """Keeps objects in memory only: for unit tests and benchmarks.

    Tests can hold commits (`hold()` / `release()`) to observe what waits for
    durability, and `inject()` a commit as another manager would have made it."""

    def __init__(self) -> None:
        self.index = 0
        self.objects: dict[tuple[str, str], bytes] = {}
        self.commits = 0
        self._released = asyncio.Event()
        self._released.set()
        self._foreign: asyncio.Queue[Commit] | None = None
        # The next commit is left in doubt (applied or not, as the test says).
        self.in_doubt: bool | None = None
        self.reloads = 0
        self.unreadable = False  # reload() raises while set (the backend unreachable)

    def load(self) -> tuple[int, list[Record]]:
        return self.index, [Record(k, i, d) for (k, i), d in self.objects.items()]

    async def commit(self, index: int, records: list[Record]) -> None:
        await self._released.wait()
        doubt, self.in_doubt = self.in_doubt, None
        if doubt is not None:
            if doubt:
                self._apply(index, records)
            raise CommitInDoubt(f"commit {index} left in doubt (applied: {doubt})")
        self._apply(index, records)
        self.commits += 1

    def doubt_next(self, applied: bool) -> None:
        """The next commit raises CommitInDoubt, having been applied or not."""
        self.in_doubt = applied

    async def reload(self) -> tuple[int, list[Record]]:
        if self.unreadable:
            raise ConnectionError("the memory backend is unreadable (test)")
        self.reloads += 1
        return self.load()

    def seed(self, index: int, records: list[Record]) -> None:
        """What earlier commits left, as a restarted store finds it (tests)."""
        self._apply(index, records)

    def _apply(self, index: int, records: list[Record]) -> None:
        self.index = index
        for r in records:
            if r.data is None:
                self.objects.pop((r.kind, r.id), None)
            else:
                self.objects[(r.kind, r.id)] = r.data

    def hold(self) -> None:
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def inject(self, records: list[Record]) -> Commit:
        """A commit made by another writer: durable here, then fed to the store."""
        commit = Commit(self.index + 1, records)
        self._apply(commit.index, records)
        if self._foreign is not None:
            self._foreign.put_nowait(commit)
        return commit

    def foreign_commits(self, after: int) -> AsyncIterator[Commit] | None:
        self._foreign = asyncio.Queue()
        return self._feed(self._foreign)

    @staticmethod
    async def _feed(queue: asyncio.Queue[Commit]) -> AsyncIterator[Commit]:
        while True:
            yield await queue.get()

    def close(self) -> None:
        pass
