"""The election's timing on a FakeClock: the lease is kept alive every ttl/3; a leader
that cannot reach etcd keeps its leadership until its lease may have expired (measured
from the last keep-alive etcd answered) and no longer; a lease etcd says is gone ends
it at once. And a fenced-off commit (LostLeadership) is taken back by the store like a
full disk: writers told, tables back to what is durable, later writes go on.

The etcd client here is a stand-in answering the election's few calls (the election's
behaviour against a real etcd is tests/integration/test_etcd_election.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import aetcd.client
import aetcd.exceptions
import pytest

from shoal.clock import FakeClock
from shoal.errors import LostLeadership
from shoal.etcdclient import TxnResult
from shoal.manager.election import Election
from shoal.manager.store import MemoryBackend, Record, Store, WatcherClosed

from .test_store_contract import service

TTL = 3


class EtcdStandIn:
    """Grants leases, elects whoever asks, and answers keep-alives while `reachable`
    (`lease_gone`: etcd answers that the lease no longer exists, TTL 0)."""

    def __init__(self) -> None:
        self.transactions = aetcd.client.Transactions()
        self.reachable = True
        self.lease_gone = False
        self.refreshes = 0
        self.revoked: int | None = None

    async def lease(self, ttl: int) -> Any:
        return SimpleNamespace(id=42, ttl=ttl)

    async def txn(self, compare: Any, success: Any, failure: Any = ()) -> TxnResult:
        return TxnResult(True, 7, [])

    async def revoke_lease(self, lease_id: int) -> None:
        self.revoked = lease_id

    async def refresh_lease(self, lease_id: int) -> Any:
        self.refreshes += 1
        if not self.reachable:
            raise aetcd.exceptions.ConnectionFailedError("unreachable")
        return SimpleNamespace(TTL=0 if self.lease_gone else TTL)


async def _leader(clock: FakeClock) -> tuple[Election, EtcdStandIn]:
    etcd = EtcdStandIn()
    election = Election(etcd, "a", ttl=TTL, clock=clock)  # type: ignore[arg-type]
    fence = await election.campaign()
    assert fence.revision == 7 and election.fence == fence
    return election, etcd


def test_keep_alive_every_third_of_the_ttl() -> None:
    async def main() -> None:
        clock = FakeClock()
        election, etcd = await _leader(clock)
        await clock.advance(TTL / 3)
        assert etcd.refreshes == 1
        await clock.advance(TTL)
        assert etcd.refreshes == 4
        assert not election.lost.is_set()
        await election.resign()
        assert election.lost.is_set() and etcd.revoked == 42
        await clock.advance(TTL)
        assert etcd.refreshes == 4  # no keep-alive after resigning

    asyncio.run(main())


def test_unreachable_leader_lasts_until_its_lease_may_have_expired() -> None:
    async def main() -> None:
        clock = FakeClock()
        election, etcd = await _leader(clock)
        await clock.advance(TTL / 3)  # answered at t=1: the lease lasts until t=4
        etcd.reachable = False
        await clock.advance(TTL / 3)  # t=2: no answer
        await clock.advance(TTL / 3)  # t=3: no answer
        assert not election.lost.is_set() and election.fence is not None
        await clock.advance(TTL / 3)  # t=4: the lease may be gone
        assert election.lost.is_set() and election.fence is None

    asyncio.run(main())


def test_a_lease_etcd_says_is_gone_ends_the_leadership_at_once() -> None:
    async def main() -> None:
        clock = FakeClock()
        election, etcd = await _leader(clock)
        etcd.lease_gone = True
        await clock.advance(TTL / 3)
        assert election.lost.is_set() and election.fence is None

    asyncio.run(main())


class FencedBackend(MemoryBackend):
    """Refuses commits as etcd does a deposed leader's, while `fenced`."""

    def __init__(self) -> None:
        super().__init__()
        self.fenced = False

    async def commit(self, index: int, records: list[Record]) -> None:
        if self.fenced:
            raise LostLeadership("superseded; nothing was written")
        await super().commit(index, records)


def test_a_fenced_off_commit_is_taken_back() -> None:
    async def main() -> None:
        backend = FencedBackend()
        store = Store(backend)
        await store.update(lambda tx: tx.create(service("web")))
        watcher = store.watch()
        backend.fenced = True
        with pytest.raises(LostLeadership, match="lost leadership: superseded"):
            await store.update(lambda tx: tx.create(service("api")))
        assert [s.spec.name for s in store.view().services()] == ["web"]
        assert store.rolled_back == 1
        with pytest.raises(WatcherClosed, match="lost leadership"):
            await watcher.__anext__()
        backend.fenced = False
        await store.update(lambda tx: tx.create(service("db")))
        assert sorted(s.spec.name for s in store.view().services()) == ["db", "web"]

    asyncio.run(main())
