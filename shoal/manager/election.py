"""Leader election among managers on an etcd lease (aetcd has no election API; this is
etcd's own recipe reduced to one key).

A candidate holds a lease of `ttl` seconds, kept alive every ttl/3 while it runs, and
campaigns with one transaction: "if the election key does not exist (create_revision
0), put it, with my name, on my lease". The candidate whose put succeeds leads; the
revision of that transaction is the key's create_revision, the fencing token
(`Fence`) every write of the leader compares (store/etcd.py). The others watch the key
and try again when it is deleted: by `resign()`, or by etcd when the leader's lease
expires (its process died, or it lost etcd for `ttl` seconds). A new leader's key has
a new create_revision, so the old leader's token no longer matches: its writes fail
even before it notices that it lost (`lost` is set once its lease cannot be kept).

Timers go through the clock: keep-alive rounds and the retry after a failed campaign.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aetcd.exceptions

from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.etcdclient import CLIENT_ERRORS, FAILURES, EtcdClient, Fence
from shoal.log import get_logger

DEFAULT_KEY = b"/shoal/election/leader"
DEFAULT_TTL_S = 3
RETRY_S = 0.5  # after a failed campaign round (etcd unreachable)
# What a keep-alive that got no answer raises (it is bounded by the lease's expiry).
KEEPALIVE_ERRORS: tuple[type[BaseException], ...] = (*CLIENT_ERRORS, TimeoutError)

log = get_logger("shoal.manager.election")


class Election:
    def __init__(
        self,
        client: EtcdClient,
        candidate: str,
        key: bytes = DEFAULT_KEY,
        ttl: int = DEFAULT_TTL_S,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._client = client
        self.candidate = candidate
        self.key = key
        self.ttl = ttl
        self._clock = clock
        self.lease_id: int | None = None
        self.fence: Fence | None = None  # while this candidate leads
        self.lost = asyncio.Event()  # set when a leadership held is lost
        self._keepalive: asyncio.Task[None] | None = None
        self._expires = 0.0  # monotonic time the lease expires at, at the latest
        self.stale_lease: int | None = None  # a lease given up as lost, to revoke
        # False while etcd does not answer this candidate (its last keep-alive or
        # campaign round failed: quorum lost, or every member gone)
        self.reachable = True

    # campaign ---------------------------------------------------------------------------
    async def campaign(self) -> Fence:
        """Wait until this candidate leads; its fencing token."""
        while True:
            try:
                return await self._campaign_once()
            except FAILURES as e:
                log.warning("campaign round failed", candidate=self.candidate, error=str(e))
                self.reachable = False
                await self._clock.sleep(RETRY_S)

    async def _campaign_once(self) -> Fence:
        await self._ensure_lease()
        t = self._client.transactions
        while True:
            result = await self._client.txn(
                [t.create(self.key) == 0],
                [t.put(self.key, self.candidate.encode(), lease=self.lease_id)],
                [t.get(self.key)],
            )
            if result.succeeded:
                self.fence = Fence(self.key, result.revision)
                self.lost = asyncio.Event()
                log.info("elected leader", candidate=self.candidate, fence=result.revision)
                return self.fence
            kvs = result.responses[0].response_range.kvs if result.responses else []
            if kvs and kvs[0].lease == self.lease_id:
                # Our own key (a campaign whose answer was lost): we lead.
                self.fence = Fence(self.key, kvs[0].create_revision)
                return self.fence
            await self._wait_deleted(result.revision)
            await self._ensure_lease()

    async def _wait_deleted(self, revision: int) -> None:
        """Wait until the election key is deleted after `revision`."""
        watch = await self._client.watch(self.key, start_revision=revision + 1)
        try:
            async for event in watch:
                if event.kind == "DELETE":
                    return
        finally:
            await watch.cancel()

    async def _ensure_lease(self) -> None:
        if self.lease_id is not None and self._clock.monotonic() < self._expires:
            return
        if self.stale_lease is not None:
            try:
                await self._client.revoke_lease(self.stale_lease)
            except aetcd.exceptions.ClientError as e:
                if not _lease_not_found(e):
                    raise  # etcd does not answer: the campaign round fails, and retries
            log.info("revoked a lease given up as lost", lease=self.stale_lease)
            self.stale_lease = None
        sent = self._clock.monotonic()
        lease = await self._client.lease(self.ttl)
        self.reachable = True
        self.lease_id = lease.id
        self._expires = sent + lease.ttl
        if self._keepalive is None or self._keepalive.done():
            self._keepalive = asyncio.create_task(self._keep_alive())

    async def _keep_alive(self) -> None:
        """Refresh the lease every ttl/3; once it cannot have survived (etcd said so,
        or unreachable past its expiry), the leadership is lost."""
        while self.lease_id is not None:
            await self._clock.sleep(self.ttl / 3)
            lease_id = self.lease_id
            if lease_id is None:
                return
            sent = self._clock.monotonic()
            try:
                # Bounded by the lease's expiry: with etcd's quorum lost a keep-alive
                # hangs (etcd's own request timeout is 7 s), and the leadership must
                # end when the lease may have expired, not later.
                left = max(0.0, self._expires - sent)
                reply = await self._clock.wait_for(self._client.refresh_lease(lease_id), left)
                ttl = reply.TTL if reply is not None else 0
            except KEEPALIVE_ERRORS as e:
                log.warning("lease keep-alive failed", candidate=self.candidate, error=repr(e))
                self.reachable = False
                ttl = -1
            if ttl > 0:
                self.reachable = True
                self._expires = sent + ttl
                continue
            if ttl == 0 or self._clock.monotonic() >= self._expires:
                self._lease_lost()
                return

    def _lease_lost(self) -> None:
        log.warning("election lease lost", candidate=self.candidate, leading=self.fence is not None)
        # etcd may not have expired it (with quorum lost nothing expires, and a new
        # etcd leader extends every lease): revoked at the next campaign, so the
        # election key it holds goes at once when etcd answers again.
        self.stale_lease = self.lease_id
        self.lease_id = None
        if self.fence is not None:
            self.fence = None
            self.lost.set()

    # leaving ----------------------------------------------------------------------------
    async def resign(self) -> None:
        """Give up the leadership (if held) and the lease: another candidate leads."""
        fence, lease_id, stale = self.fence, self.lease_id, self.stale_lease
        self.fence = None
        self.lease_id = None
        self.stale_lease = None
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
            self._keepalive = None
        try:
            if fence is not None:
                t = self._client.transactions
                await self._client.txn([t.create(self.key) == fence.revision], [t.delete(self.key)])
            for lease in (lease_id, stale):
                if lease is not None:
                    await self._client.revoke_lease(lease)
        except FAILURES as e:
            # Gone already (expired, revoked) or etcd unreachable: the lease expires
            # by itself within ttl, and the key with it.
            log.warning("resign: etcd did not answer", candidate=self.candidate, error=str(e))
        if fence is not None:
            self.lost.set()
            log.info("resigned leadership", candidate=self.candidate)

    # observing --------------------------------------------------------------------------
    async def leader(self) -> str | None:
        """The current leader's name (None: no leader)."""
        kvs, _, _ = await self._client.range_page(self.key, self.key + b"\x00")
        return kvs[0].value.decode() if kvs else None

    async def observe(self) -> AsyncIterator[str | None]:
        """The leader now, then each change (None while there is none)."""
        kvs, _, revision = await self._client.range_page(self.key, self.key + b"\x00")
        current = kvs[0].value.decode() if kvs else None
        yield current
        watch = await self._client.watch(self.key, start_revision=revision + 1)
        try:
            async for event in watch:
                leader = None if event.kind == "DELETE" else event.kv.value.decode()
                if leader != current:
                    current = leader
                    yield current
        finally:
            await watch.cancel()


def _lease_not_found(e: BaseException) -> bool:
    return "lease not found" in str(e)
