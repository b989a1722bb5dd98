"""The leadership seam: one manager among several leads, the others follow.

Every manager on a shared etcd store (docs/ha.md) runs one `Leadership`: it watches
the election key (who leads now, and at which cluster port: the key's value is the
leader's `Candidate`), and campaigns. When elected it first waits until its replica
has applied the last commit in etcd (the sequencing compare requires it), then sets
the backend's fence, lets the store accept local writes, and calls `on_elected`
(the manager starts its leader-only loops: orchestrators, scheduler, allocator,
dispatcher). When the leadership is lost (its lease could not be kept, or it
resigned) it refuses local writes again, clears the fence, calls `on_lost` (the
loops stop) and campaigns again. A follower's store refuses local commits with
`LostLeadership` before applying them; its API forwards writes to the leader
(shoal/api/forward.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.errors import LostLeadership
from shoal.etcdclient import FAILURES
from shoal.log import get_logger
from shoal.manager.election import Election
from shoal.manager.store import Store
from shoal.manager.store.etcd import EtcdBackend

OBSERVE_RETRY_S = 0.5

log = get_logger("shoal.manager.leadership")


@dataclass(frozen=True, slots=True)
class Candidate:
    """A manager as the election key names it."""

    node_id: str
    addr: str  # its cluster port, host:port

    def encode(self) -> str:
        return json.dumps({"node_id": self.node_id, "addr": self.addr})

    @classmethod
    def decode(cls, value: str | None) -> Candidate | None:
        if not value:
            return None
        try:
            data = json.loads(value)
            return cls(str(data["node_id"]), str(data["addr"]))
        except (ValueError, KeyError, TypeError):
            return cls(value, "")  # a bare name (an older candidate)


class Leadership:
    def __init__(
        self,
        election: Election,
        backend: EtcdBackend,
        store: Store,
        on_elected: Callable[[], Awaitable[None]],
        on_lost: Callable[[], Awaitable[None]],
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._election = election
        self._backend = backend
        self._store = store
        self._on_elected = on_elected
        self._on_lost = on_lost
        self._clock = clock
        self.clock = clock
        self.me = Candidate.decode(election.candidate)
        self.leading = False
        self.leader: Candidate | None = None  # as the election key says now
        self.changed = asyncio.Event()  # set (and replaced) at every change of either
        self._tasks: list[asyncio.Task[None]] = []
        store.refuse_writes = _not_leading

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._observe(), name="leadership-observe"),
            asyncio.create_task(self._campaign(), name="leadership-campaign"),
        ]

    def _changed(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    async def _observe(self) -> None:
        while True:
            try:
                async for value in self._election.observe():
                    self.leader = Candidate.decode(value)
                    log.info("leader", leader=self.leader.node_id if self.leader else None)
                    self._changed()
            except FAILURES as e:
                log.warning("election watch lost; resuming", error=str(e))
            await self._clock.sleep(OBSERVE_RETRY_S)

    async def _campaign(self) -> None:
        while True:
            fence = await self._election.campaign()
            lost = self._election.lost
            try:
                # a replica reloading (a commit in doubt) is not the truth yet
                await self._store.wait_reloaded()
                await self._backend.caught_up()
            except FAILURES as e:
                # leading on a replica that may be behind is not allowed: let another
                # manager lead (or this one, once etcd answers again)
                log.warning("elected, but cannot catch up; resigning", error=str(e))
                await self._election.resign()
                await self._clock.sleep(OBSERVE_RETRY_S)
                continue
            self._backend.set_fence(fence)
            self._store.refuse_writes = None
            self.leading = True
            self._changed()
            log.info("leading", fence=fence.revision, index=self._store.index)
            try:
                await self._on_elected()
            except Exception:
                log.exception("starting the leader's loops failed")
            in_doubt = await self._until_lost(lost)
            self._store.refuse_writes = _not_leading
            self._backend.set_fence(None)
            self.leading = False
            self._changed()
            log.warning("leadership lost; following, campaigning again")
            try:
                await self._on_lost()
            except Exception:
                log.exception("stopping the leader's loops failed")
            if in_doubt:
                # (etcd may not answer: resign gives up then, and the lease expires)
                await self._election.resign()

    async def _until_lost(self, lost: asyncio.Event) -> bool:
        """Wait until the leadership is lost, or a commit is in doubt (True: the
        store reloads from etcd; this manager must resign, and may lead again after)."""
        waits = [
            asyncio.ensure_future(lost.wait()),
            asyncio.ensure_future(self._store.needs_reload.wait()),
        ]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if lost.is_set():
            return False
        log.warning("a commit is in doubt; resigning the leadership")
        return True

    def is_me(self, candidate: Candidate) -> bool:
        """This manager (by node ID: a key left by its previous run names another
        cluster port when that was picked at random)."""
        return self.me is not None and candidate.node_id == self.me.node_id

    async def wait_leader(self, timeout_s: float) -> Candidate | None:
        """The leader once there is one other than a stale key of this very manager
        (or this manager leads), waiting up to `timeout_s`; None if none came."""
        deadline = self._clock.monotonic() + timeout_s
        while True:
            if self.leading:
                return self.me
            if self.leader is not None and not self.is_me(self.leader):
                return self.leader
            if not self._election.reachable:
                # etcd does not answer (quorum lost): no leader will come of waiting,
                # and the stale key naming this manager is not one
                return None
            left = deadline - self._clock.monotonic()
            if left <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await self._clock.wait_for(self.changed.wait(), left)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self.leading:
            self.leading = False
            self._store.refuse_writes = _not_leading
            self._backend.set_fence(None)
            await self._on_lost()


def _not_leading() -> Exception:
    return LostLeadership("this manager does not hold the leadership; nothing was written")
