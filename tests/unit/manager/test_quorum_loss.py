"""Quorum lost, on a FakeClock (docs/ha.md "Quorum lost"): a keep-alive etcd does not
answer ends the leadership when the lease may have expired, not when etcd's own
request timeout says so; the lease given up is revoked once etcd answers again (the
election key goes at once); a commit in flight when the leadership goes is cut short
and in doubt; a store whose commit is in doubt takes it back (its writers told there
is no leader), refuses writes, reloads from the backend through the clock (retrying
while it does not answer) and takes writes again; a compacted feed reloads the same
way; a leader whose commit is in doubt resigns, and leads again only once reloaded.

etcd is a stand-in answering the few calls made here (against a real etcd:
tests/integration/test_etcd_quorum.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import aetcd.client
import aetcd.exceptions
import pytest

from shoal.clock import FakeClock
from shoal.errors import LostLeadership, NoLeader
from shoal.etcdclient import EtcdUnavailable, Fence, TxnResult
from shoal.manager.election import Election
from shoal.manager.leadership import Candidate, Leadership
from shoal.manager.store import (
    Commit,
    CommitInDoubt,
    MemoryBackend,
    Record,
    ReloadNeeded,
    Store,
    WatcherClosed,
)
from shoal.manager.store.etcd import EtcdBackend
from shoal.manager.store.memory import encode_record

from .test_store_contract import service

TTL = 3
MSG = "The swarm does not have a leader"


class QuorumLost:
    """etcd whose requests hang while `quorum` is False (as a member without quorum
    does until its 7 s request timeout: here, until the test gives quorum back)."""

    def __init__(self) -> None:
        self.transactions = aetcd.client.Transactions()
        self.quorum = True
        self.back = asyncio.Event()
        self.revoked: list[int] = []
        self.leases = 0
        self.txns = 0

    async def _answer(self) -> None:
        if not self.quorum:
            await self.back.wait()
            raise EtcdUnavailable("etcd transaction failed: UNAVAILABLE: request timed out")

    def restore(self) -> None:
        self.quorum = True
        self.back.set()
        self.back = asyncio.Event()

    async def lease(self, ttl: int) -> Any:
        if not self.quorum:
            await self.back.wait()
            raise aetcd.exceptions.ConnectionTimeoutError("context deadline exceeded")
        self.leases += 1
        return SimpleNamespace(id=40 + self.leases, ttl=ttl)

    async def refresh_lease(self, lease_id: int) -> Any:
        if not self.quorum:
            await self.back.wait()
            raise aetcd.exceptions.ConnectionFailedError("unreachable")
        return SimpleNamespace(TTL=TTL)

    async def revoke_lease(self, lease_id: int) -> None:
        if not self.quorum:
            await self.back.wait()
            raise aetcd.exceptions.ConnectionFailedError("unreachable")
        self.revoked.append(lease_id)

    async def txn(self, compare: Any, success: Any, failure: Any = ()) -> TxnResult:
        self.txns += 1
        await self._answer()
        return TxnResult(True, 7 + self.txns, [])


def test_a_hung_keep_alive_ends_the_leadership_when_the_lease_may_have_expired() -> None:
    async def main() -> None:
        clock = FakeClock()
        etcd = QuorumLost()
        election = Election(etcd, "a", ttl=TTL, clock=clock)  # type: ignore[arg-type]
        await election.campaign()
        await clock.advance(TTL / 3)  # answered at t=1: the lease lasts until t=4
        etcd.quorum = False
        await clock.advance(TTL / 3)  # t=2: the keep-alive hangs
        assert not election.lost.is_set() and election.reachable
        await clock.advance(TTL / 3 + 0.99)  # t=3.99: still unanswered, still leading
        assert not election.lost.is_set()
        await clock.advance(0.02)  # t=4: the lease may be gone; etcd still silent
        assert election.lost.is_set() and election.fence is None
        assert not election.reachable and election.stale_lease == 41

        # a new campaign: its rounds fail while etcd does not answer, and retry
        campaign = asyncio.create_task(election.campaign())
        await clock.advance(5)
        assert not campaign.done() and etcd.revoked == []
        etcd.restore()
        await clock.advance(1)
        assert campaign.done() and campaign.result().revision > 0
        # the lease given up was revoked first (its key gone at once), then a new one
        assert etcd.revoked == [41] and election.lease_id == 42 and election.reachable
        await election.resign()
        assert etcd.revoked == [41, 42]

        # a lease given up and never campaigned on again is revoked by resign() too
        await election.campaign()
        etcd.quorum = False
        await clock.advance(2 * TTL)
        assert election.lost.is_set() and election.stale_lease == 43
        etcd.restore()
        await election.resign()
        assert etcd.revoked[-1] == 43 and election.stale_lease is None

    asyncio.run(main())


def test_a_commit_in_flight_is_cut_short_when_the_leadership_goes() -> None:
    async def main() -> None:
        clock = FakeClock()
        etcd = QuorumLost()
        backend = EtcdBackend(etcd, clock=clock)  # type: ignore[arg-type]
        fence = Fence(b"/shoal/election/leader", 5)
        backend.set_fence(fence)
        await backend.commit(1, [Record("service", "a", b"{}")])
        assert backend.index == 1
        etcd.quorum = False
        commit = asyncio.create_task(backend.commit(2, [Record("service", "b", b"{}")]))
        await clock.advance(2)
        assert not commit.done()  # tried, unanswered: the leadership still holds
        backend.set_fence(None)  # the leadership is lost (its lease)
        await clock.settle()
        assert commit.done()
        with pytest.raises(CommitInDoubt, match="fencing token 5"):
            commit.result()
        assert backend.index == 1

    asyncio.run(main())


def test_unanswered_commits_are_retried_then_in_doubt() -> None:
    async def main() -> None:
        clock = FakeClock()
        etcd = QuorumLost()

        async def unavailable(*_: Any) -> TxnResult:
            etcd.txns += 1
            raise EtcdUnavailable("etcd transaction failed: UNAVAILABLE: no leader")

        etcd.txn = unavailable  # type: ignore[method-assign]
        backend = EtcdBackend(etcd, clock=clock)  # type: ignore[arg-type]
        backend.set_fence(Fence(b"k", 5))
        commit = asyncio.create_task(backend.commit(1, [Record("service", "a", b"{}")]))
        await clock.advance(10)
        assert not commit.done() and etcd.txns > 3
        await clock.advance(6)
        with pytest.raises(CommitInDoubt, match="unanswered"):
            commit.result()

    asyncio.run(main())


class Seeded(MemoryBackend):
    """A memory backend whose feed can say it must be reloaded (a compacted watch)."""

    def __init__(self) -> None:
        super().__init__()
        self.compacted = asyncio.Event()

    def foreign_commits(self, after: int) -> AsyncIterator[Commit] | None:
        self.compacted = asyncio.Event()
        return self._compactable(super().foreign_commits(after))

    async def _compactable(self, feed: Any) -> AsyncIterator[Commit]:
        nxt = asyncio.ensure_future(feed.__anext__())
        while True:
            stop = asyncio.ensure_future(self.compacted.wait())
            await asyncio.wait({nxt, stop}, return_when=asyncio.FIRST_COMPLETED)
            if stop.done():
                nxt.cancel()
                raise ReloadNeeded("the watch is behind the compaction")
            stop.cancel()
            yield nxt.result()
            nxt = asyncio.ensure_future(feed.__anext__())


@pytest.mark.parametrize("applied", [True, False])
def test_a_commit_in_doubt_is_taken_back_and_the_store_reloaded(applied: bool) -> None:
    async def main() -> None:
        clock = FakeClock()
        backend = Seeded()
        store = Store(backend, clock)
        feed = asyncio.create_task(store.run())
        await store.update(lambda tx: tx.create(service("web")))
        watcher = store.watch()

        backend.doubt_next(applied)
        backend.unreadable = True  # etcd does not answer yet
        with pytest.raises(NoLeader, match=MSG):
            await store.update(lambda tx: tx.create(service("api")))
        # taken back; writes refused until the store is the backend's again
        assert [s.spec.name for s in store.view().services()] == ["web"]
        assert store.needs_reload.is_set()
        with pytest.raises(NoLeader, match=MSG):
            await store.update(lambda tx: tx.create(service("refused")))
        with pytest.raises(WatcherClosed, match="commit in doubt"):
            await watcher.__anext__()
        await clock.advance(10)
        assert store.reloads == 0  # retrying through the clock meanwhile

        backend.unreadable = False
        await clock.advance(2)
        assert store.reloads == 1 and not store.needs_reload.is_set()
        names = sorted(s.spec.name for s in store.view().services())
        assert names == (["api", "web"] if applied else ["web"])  # what the backend holds
        assert store.durable_index == backend.index
        assert sorted(s.spec.name for s in store.snapshot.services) == names

        # writes again, and the feed goes on after the reload
        await store.update(lambda tx: tx.create(service("db")))
        injected = backend.inject([encode_record("service", service("other"))])
        await clock.settle()
        assert store.durable_index == injected.index
        assert store.view().get_service("other") is not None
        feed.cancel()

    asyncio.run(main())


def test_a_feed_behind_the_compaction_reloads() -> None:
    async def main() -> None:
        clock = FakeClock()
        backend = Seeded()
        store = Store(backend, clock)
        feed = asyncio.create_task(store.run())
        await clock.settle()
        watcher = store.watch()
        # the feed missed this commit (compacted away)
        backend.seed(backend.index + 1, [encode_record("service", service("missed"))])
        backend.compacted.set()
        await clock.settle()
        assert store.reloads == 1 and store.view().get_service("missed") is not None
        with pytest.raises(WatcherClosed, match="reloaded"):
            await watcher.__anext__()
        injected = backend.inject([encode_record("service", service("later"))])
        await clock.settle()
        assert store.durable_index == injected.index
        assert store.view().get_service("later") is not None
        feed.cancel()

    asyncio.run(main())


def test_reload_asked_for_waits_until_done() -> None:
    async def main() -> None:
        clock = FakeClock()
        backend = MemoryBackend()
        store = Store(backend, clock)
        feed = asyncio.create_task(store.run())
        await store.update(lambda tx: tx.create(service("web")))
        backend.seed(backend.index + 5, [encode_record("service", service("elsewhere"))])
        await asyncio.wait_for(store.reload(), 5)
        assert store.view().get_service("elsewhere") is not None
        assert store.index == store.durable_index == backend.index
        feed.cancel()

    asyncio.run(main())


ME = Candidate("me", "10.0.0.1:2377")


class ElectionStandIn:
    def __init__(self) -> None:
        self.candidate = ME.encode()
        self.lost = asyncio.Event()
        self.wins: asyncio.Queue[Fence] = asyncio.Queue()
        self.reachable = True
        self.resigned = 0

    async def campaign(self) -> Fence:
        fence = await self.wins.get()
        self.lost = asyncio.Event()
        return fence

    async def resign(self) -> None:
        self.resigned += 1
        self.lost.set()

    async def observe(self) -> AsyncIterator[str | None]:
        await asyncio.Event().wait()
        yield None


class BackendStandIn:
    def __init__(self) -> None:
        self.fence: Fence | None = None

    async def caught_up(self) -> None:
        return None

    def set_fence(self, fence: Fence | None) -> None:
        self.fence = fence


def test_a_leader_whose_commit_is_in_doubt_resigns_and_leads_again_once_reloaded() -> None:
    async def main() -> None:
        clock = FakeClock()
        memory = MemoryBackend()
        store = Store(memory, clock)
        feed = asyncio.create_task(store.run())
        election, backend = ElectionStandIn(), BackendStandIn()
        elected: list[int] = []

        async def on_elected() -> None:
            elected.append(store.reloads)

        async def on_lost() -> None:
            return None

        leadership = Leadership(election, backend, store, on_elected, on_lost, clock)  # type: ignore[arg-type]
        leadership.start()
        election.wins.put_nowait(Fence(b"k", 7))
        await clock.settle()
        assert leadership.leading and elected == [0]

        memory.doubt_next(applied=True)
        memory.unreadable = True
        with pytest.raises(NoLeader, match=MSG):
            await store.update(lambda tx: tx.create(service("web")))
        await clock.settle()
        assert election.resigned == 1 and not leadership.leading and backend.fence is None
        with pytest.raises(LostLeadership):
            await store.update(lambda tx: tx.create(service("refused")))

        # elected again at once, but it leads only once its replica is etcd's again
        election.wins.put_nowait(Fence(b"k", 9))
        await clock.advance(5)
        assert not leadership.leading and elected == [0]
        memory.unreadable = False
        await clock.advance(2)
        assert leadership.leading and elected == [0, 1] and backend.fence == Fence(b"k", 9)
        assert store.view().get_service("web") is not None  # it was applied after all
        await store.update(lambda tx: tx.create(service("api")))
        await leadership.stop()
        feed.cancel()

    asyncio.run(main())


def test_wait_leader_answers_at_once_when_etcd_does_not() -> None:
    async def main() -> None:
        clock = FakeClock()
        store = Store(MemoryBackend(), clock)
        election, backend = ElectionStandIn(), BackendStandIn()

        async def nothing() -> None:
            return None

        leadership = Leadership(election, backend, store, nothing, nothing, clock)  # type: ignore[arg-type]
        leadership.leader = ME  # a stale key naming this manager
        election.reachable = False
        assert await leadership.wait_leader(10.0) is None  # no wait: nothing to wait for
        other = Candidate("other", "10.0.0.2:2377")
        leadership.leader = other
        assert await leadership.wait_leader(10.0) == other  # it answers for itself

    asyncio.run(main())


def test_a_retried_commit_refused_is_in_doubt_not_refused() -> None:
    """Its first try may have been applied unanswered, then superseded by another
    leader's commit: the retry's refusal does not say it was not written."""

    async def main() -> None:
        clock = FakeClock()
        etcd = QuorumLost()
        tries: list[int] = []

        async def txn(*_: Any) -> TxnResult:
            tries.append(1)
            if len(tries) == 1:
                raise EtcdUnavailable("etcd transaction failed: UNAVAILABLE: leader changed")
            other = SimpleNamespace(create_revision=99, mod_revision=120, value=b"")
            index = SimpleNamespace(
                create_revision=3, mod_revision=120, value=b'{"index": 9, "writer": "x"}'
            )
            return TxnResult(
                False,
                120,
                [
                    SimpleNamespace(response_range=SimpleNamespace(kvs=[other])),
                    SimpleNamespace(response_range=SimpleNamespace(kvs=[index])),
                ],
            )

        etcd.txn = txn  # type: ignore[method-assign]
        backend = EtcdBackend(etcd, clock=clock)  # type: ignore[arg-type]
        backend.set_fence(Fence(b"k", 5))
        commit = asyncio.create_task(backend.commit(1, [Record("service", "a", b"{}")]))
        await clock.advance(1)
        with pytest.raises(CommitInDoubt, match="may have been applied.*superseded"):
            commit.result()
        # not retried: the first try refused outright is a refusal (nothing written)
        tries.clear()
        tries.append(1)
        with pytest.raises(LostLeadership, match="superseded"):
            await backend.commit(1, [Record("service", "a", b"{}")])

    asyncio.run(main())


def test_a_read_behind_a_write_in_doubt_answers() -> None:
    async def main() -> None:
        clock = FakeClock()
        backend = MemoryBackend()
        store = Store(backend, clock)
        feed = asyncio.create_task(store.run())
        await store.update(lambda tx: tx.create(service("web")))
        backend.hold()
        backend.doubt_next(applied=False)
        write = asyncio.create_task(store.update(lambda tx: tx.create(service("api"))))
        await clock.settle()
        read = asyncio.create_task(store.settled(["service"]))  # waits behind the write
        await clock.settle()
        assert not read.done()
        backend.release()
        await clock.settle()
        with pytest.raises(NoLeader):
            write.result()
        assert read.done() and read.exception() is None  # the read goes on
        assert [s.spec.name for s in store.view().services()] == ["web"]
        feed.cancel()

    asyncio.run(main())
