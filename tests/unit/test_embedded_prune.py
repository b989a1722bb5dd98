"""The leader removes the etcd member of a node that is no longer a manager
(shoal/daemon/embedded.py `prune_members`), driven by committed node events, on a
FakeClock, with a real Store; etcd's cluster API is a stand-in (its membership only).

- Only the leader removes, and only members whose node is a worker or gone; a member
  added but not started (no name yet) is left alone.
- A removal etcd refuses is tried again after PRUNE_RETRY_S without any new node
  event, and not before.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aetcd.exceptions
import msgspec

from shoal.clock import FakeClock
from shoal.daemon.embedded import PRUNE_RETRY_S, prune_members
from shoal.etcdclient import TLSFiles
from shoal.manager.store import Store, Tx
from shoal.manager.store.backend import MemoryBackend
from shoal.types.node import Node, NodeSpec, NodeStatus

TLS = TLSFiles(b"", b"", b"")


@dataclass
class Member:
    id: int
    name: str
    client_urls: list[str] = field(default_factory=list)
    peer_urls: list[str] = field(default_factory=list)


@dataclass
class Status:
    leader: Member | None = None


class EtcdMembership:
    """etcd's cluster API as prune_members uses it; `refuse` removals fail first."""

    def __init__(self, names: list[str], refuse: int = 0) -> None:
        self._members = [Member(i + 1, n) for i, n in enumerate(names)]
        self.refuse = refuse
        self.tries = 0

    async def members(self) -> AsyncIterator[Member]:
        for m in list(self._members):
            yield m

    async def status(self) -> Status:
        return Status()

    async def remove_member(self, member_id: int) -> None:
        self.tries += 1
        if self.refuse > 0:
            self.refuse -= 1
            raise aetcd.exceptions.ClientError("etcdserver: request timed out")
        self._members = [m for m in self._members if m.id != member_id]

    def names(self) -> list[str]:
        return [m.name for m in self._members]


def put_nodes(roles: dict[str, str]):  # type: ignore[no-untyped-def]
    def fn(tx: Tx) -> None:
        for node_id, role in roles.items():
            spec = NodeSpec(role=role, availability="active")
            old = tx.get_node(node_id)
            if old is None:
                tx.create(Node(id=node_id, spec=spec, status=NodeStatus(state="ready")))
            else:
                tx.update(msgspec.structs.replace(old, spec=spec))

    return fn


def test_the_leader_removes_members_of_nodes_no_longer_managers() -> None:
    async def main() -> None:
        clock = FakeClock()
        store = Store(MemoryBackend(), clock)
        await store.update(put_nodes({"m1": "manager", "m2": "manager", "m3": "manager"}))
        etcd = EtcdMembership(["m1", "m2", "m3", ""])
        leading = [False]
        task = asyncio.create_task(
            prune_members(store, etcd, TLS, lambda: leading[0], clock)  # type: ignore[arg-type]
        )
        await clock.settle()
        await store.update(put_nodes({"m2": "worker"}))
        await clock.settle()
        assert etcd.names() == ["m1", "m2", "m3", ""]  # a follower removes nothing
        leading[0] = True
        await store.update(lambda tx: tx.delete("node", "m3"))  # node rm --force
        await clock.settle()
        # the demoted and the removed node's members go; the unstarted one stays
        assert etcd.names() == ["m1", ""]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())


def test_a_refused_removal_is_tried_again_after_the_retry_period() -> None:
    async def main() -> None:
        clock = FakeClock()
        store = Store(MemoryBackend(), clock)
        await store.update(put_nodes({"m1": "manager", "m2": "manager"}))
        etcd = EtcdMembership(["m1", "m2"], refuse=1)
        task = asyncio.create_task(
            prune_members(store, etcd, TLS, lambda: True, clock)  # type: ignore[arg-type]
        )
        await clock.settle()
        await store.update(put_nodes({"m2": "worker"}))
        await clock.settle()
        assert etcd.tries == 1 and etcd.names() == ["m1", "m2"]
        await clock.advance(PRUNE_RETRY_S - 0.1)
        assert etcd.tries == 1  # not before the retry period
        await clock.advance(0.1)  # no node event: the timer alone tries again
        assert etcd.tries == 2 and etcd.names() == ["m1"]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
