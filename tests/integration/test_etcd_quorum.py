"""Quorum lost and back, at the store's level (docs/ha.md "Quorum lost"): two managers'
stores on three real etcd members (mutual TLS, loopback), each with its Leadership on
a real election. Two members stopped: the leader's commit in flight is in doubt (its
writer told there is no leader), the leadership ends with the lease, both stores
refuse writes and still read. One member back: the in-doubt store reloads from etcd,
a manager is elected and writes, and both replicas hold every acknowledged write and
agree with each other."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path

import pytest

from shoal.errors import NoLeader
from shoal.etcdclient import EtcdClient
from shoal.manager.election import Election
from shoal.manager.leadership import Candidate, Leadership
from shoal.manager.store import Store, WatcherClosed
from shoal.manager.store.encrypted import EncryptedBackend
from shoal.manager.store.etcd import EtcdBackend
from shoal.types.service import ReplicatedService, Service, ServiceMode, ServiceSpec

from .etcd_harness import etcd_cluster

pytestmark = pytest.mark.integration

# Bounds on waits for something that must happen (not speed checks).
WAIT_S = 60.0
TTL = 2


def _service(name: str) -> Service:
    spec = ServiceSpec(name=name, mode=ServiceMode(replicated=ReplicatedService(replicas=1)))
    return Service(id=name, spec=spec)


class Manager:
    def __init__(self, client: EtcdClient, name: str, prefix: bytes, dek: bytes) -> None:
        self.client = client
        self.backend = EtcdBackend(client, prefix=prefix)
        self.election = Election(
            client, Candidate(name, f"{name}:1").encode(), prefix + b"election/leader", TTL
        )
        self.store: Store | None = None
        self.leadership: Leadership | None = None
        self.feed: asyncio.Task[None] | None = None
        self.dek = dek

    async def start(self) -> Store:
        await self.backend.open()
        store = self.store = Store(EncryptedBackend(self.backend, self.dek))
        self.feed = asyncio.create_task(store.run())
        self.leadership = Leadership(self.election, self.backend, store, _nothing, _nothing)
        self.leadership.start()
        return store

    async def close(self) -> None:
        if self.leadership is not None:
            await self.leadership.stop()
        if self.feed is not None:
            self.feed.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.feed
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.election.resign(), 5)
        await self.client.close()


async def _nothing() -> None:
    return None


async def _until(managers: list[Manager], predicate: Callable[[], bool], what: str) -> None:
    """Wait (on their leaderships' changes) until `predicate` holds."""
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while not predicate():
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise AssertionError(f"timed out waiting for {what}")
        waits = [
            asyncio.ensure_future(m.leadership.changed.wait()) for m in managers if m.leadership
        ]
        try:
            await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()


def test_quorum_lost_then_back(tmp_path: Path) -> None:
    async def main() -> None:
        async with etcd_cluster(tmp_path, size=3) as cluster:
            m1, m2, m3 = cluster.members
            prefix = f"/t-{secrets.token_hex(4)}/".encode()
            dek = os.urandom(32)
            a = Manager(cluster.client(m1, m2, m3), "a", prefix, dek)
            b = Manager(cluster.client(m1, m2, m3), "b", prefix, dek)
            try:
                sa = await a.start()
                await _until([a], lambda: bool(a.leadership and a.leadership.leading), "a leading")
                sb = await b.start()
                acknowledged = []
                for i in range(5):
                    await sa.update(lambda tx, i=i: tx.create(_service(f"s{i}")))
                    acknowledged.append(f"s{i}")
                assert await sb.reached(sa.durable_index, WAIT_S)

                await m2.stop()
                await m3.stop()
                # the commit in flight: no answer, the lease cannot be kept, in doubt
                with pytest.raises(NoLeader):
                    await asyncio.wait_for(
                        sa.update(lambda tx: tx.create(_service("in-doubt"))), WAIT_S
                    )
                await _until(
                    [a], lambda: bool(a.leadership and not a.leadership.leading), "a deposed"
                )
                for store in (sa, sb):
                    with pytest.raises(NoLeader):
                        await store.update(lambda tx: tx.create(_service("refused")))
                    # reads answer from the replica
                    names = {s.spec.name for s in store.view().services()}
                    assert set(acknowledged) <= names and "refused" not in names

                await m2.start()
                leading = lambda: next(  # noqa: E731
                    (m for m in (a, b) if m.leadership and m.leadership.leading), None
                )
                await _until([a, b], lambda: leading() is not None, "a leader once quorum is back")
                assert sa.reloads >= 1  # a's replica was read again from etcd
                leader = leading()
                assert leader is not None and leader.store is not None
                await asyncio.wait_for(
                    leader.store.update(lambda tx: tx.create(_service("after"))), WAIT_S
                )
                acknowledged.append("after")
                index = leader.store.durable_index
                assert await sa.reached(index, WAIT_S) and await sb.reached(index, WAIT_S)
                na = {s.spec.name for s in sa.view().services()}
                nb = {s.spec.name for s in sb.view().services()}
                assert na == nb, (na, nb)
                assert set(acknowledged) <= na
                # the in-doubt write is there or not, alike on both (etcd decided)
                assert na - set(acknowledged) <= {"in-doubt"}
            finally:
                await b.close()
                await a.close()

    asyncio.run(main())


def test_a_watch_behind_the_compaction_reloads(tmp_path: Path) -> None:
    """A follower whose feed stopped while the leader wrote, and etcd compacted that
    history away: its watch cannot resume, so its store reloads from etcd and follows
    again from there (nothing missed)."""

    async def main() -> None:
        async with etcd_cluster(tmp_path, size=1) as cluster:
            prefix = f"/t-{secrets.token_hex(4)}/".encode()
            dek = os.urandom(32)
            a = Manager(cluster.client(), "a", prefix, dek)
            b = Manager(cluster.client(), "b", prefix, dek)
            try:
                sa = await a.start()
                await _until([a], lambda: bool(a.leadership and a.leadership.leading), "a leading")
                sb = await b.start()
                await sa.update(lambda tx: tx.create(_service("s0")))
                assert await sb.reached(sa.durable_index, WAIT_S)
                watcher = sb.watch()

                # b's feed stops (as if its watch were cut) while a writes on
                assert b.feed is not None
                b.feed.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await b.feed
                for i in range(1, 4):
                    await sa.update(lambda tx, i=i: tx.create(_service(f"s{i}")))
                _, _, revision = await a.client.range_page(prefix, prefix + b"\xff")
                await a.client.compact(revision)

                b.feed = asyncio.create_task(sb.run())
                assert await sb.reached(sa.durable_index, WAIT_S)
                assert sb.reloads == 1
                assert {s.spec.name for s in sb.view().services()} == {f"s{i}" for i in range(4)}
                with pytest.raises(WatcherClosed, match="reloaded"):
                    await asyncio.wait_for(watcher.__anext__(), WAIT_S)
                # and it follows again
                await sa.update(lambda tx: tx.create(_service("s4")))
                assert await sb.reached(sa.durable_index, WAIT_S)
                assert sb.view().get_service("s4") is not None
            finally:
                await b.close()
                await a.close()

    asyncio.run(main())
