"""The store on etcd: two Store instances (two managers) on one real etcd over mutual
TLS. The leader's commits reach etcd as one fenced transaction each and the follower's
replica through the watch; a deposed leader's commit is refused and writes nothing; a
new leader whose replica is behind cannot commit until it has caught up."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from pathlib import Path

import msgspec
import pytest

from shoal.errors import LostLeadership
from shoal.etcdclient import EtcdClient
from shoal.manager.election import Election
from shoal.manager.store import Store, Tx
from shoal.manager.store.encrypted import MAGIC, EncryptedBackend
from shoal.manager.store.etcd import EtcdBackend
from shoal.types.service import ReplicatedService, Service, ServiceMode, ServiceSpec
from shoal.types.swarm import Cluster as SwarmCluster
from shoal.types.task import Task, TaskState, TaskStatus

from .etcd_harness import etcd_cluster

pytestmark = pytest.mark.integration

# A bound on waits for something that must happen (not a speed check).
WAIT_S = 20.0
TASKS = 1500


def _service(service_id: str, name: str, replicas: int = 1) -> Service:
    spec = ServiceSpec(name=name, mode=ServiceMode(replicated=ReplicatedService(replicas=replicas)))
    return Service(id=service_id, spec=spec)


def _task(task_id: str, service_id: str) -> Task:
    return Task(
        id=task_id,
        service_id=service_id,
        status=TaskStatus(timestamp="", state=TaskState.PENDING.wire, message="pending"),
        desired_state=TaskState.RUNNING.wire,
    )


class Manager:
    """One manager's store on etcd: its client, election, backend (encrypted with the
    DEK the managers share) and the task applying others' commits."""

    def __init__(
        self, client: EtcdClient, name: str, prefix: bytes, dek: bytes, ttl: int = 2
    ) -> None:
        self.client = client
        self.name = name
        self.prefix = prefix
        self.dek = dek
        self.election = Election(client, name, key=prefix + b"election/leader", ttl=ttl)
        self.backend = EtcdBackend(client, prefix=prefix)
        self.store: Store | None = None
        self.follower: asyncio.Task[None] | None = None

    async def open(self, follow: bool = True) -> Store:
        await self.backend.open()
        self.store = Store(EncryptedBackend(self.backend, self.dek))
        if follow:
            self.follow()
        return self.store

    def follow(self) -> None:
        assert self.store is not None
        self.follower = asyncio.create_task(self.store.run())

    async def lead(self) -> None:
        self.backend.set_fence(await self.election.campaign())

    async def close(self) -> None:
        if self.follower is not None:
            self.follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.follower
        await self.election.resign()
        await self.client.close()


async def _wait_index(store: Store, index: int) -> None:
    """Wait until the store's replica has applied the commit ending at `index`."""
    watcher = store.watch()
    try:
        while store.durable_index < index:
            await asyncio.wait_for(watcher.__anext__(), WAIT_S)
    finally:
        watcher.close()


def test_two_stores_share_etcd(tmp_path: Path) -> None:
    async def main() -> None:
        async with etcd_cluster(tmp_path) as cluster:
            prefix = f"/t-{secrets.token_hex(4)}/".encode()
            dek = os.urandom(32)
            a = Manager(cluster.client(), "a", prefix, dek)
            b = Manager(cluster.client(), "b", prefix, dek)
            try:
                sa = await a.open()
                await a.lead()
                sb = await b.open()
                watcher = sb.watch("service")

                await sa.update(
                    lambda tx: tx.create(SwarmCluster(id="c1", subnet_size=24, data_path_port=4789))
                )
                await sa.update(lambda tx: tx.create(_service("s1", "web")))

                def two(tx: Tx) -> None:
                    tx.create(_service("s2", "db"))
                    web = tx.get_service("s1")
                    assert web is not None
                    spec = msgspec.structs.replace(web.spec, labels={"tier": "front"})
                    tx.update(msgspec.structs.replace(web, spec=spec))

                await sa.update(two)
                await _wait_index(sb, sa.index)
                # the follower's replica: the same objects at the same versions
                view_a, view_b = sa.view(), sb.view()
                assert sb.index == sa.index
                for sid in ("s1", "s2"):
                    got, want = view_b.get_service(sid), view_a.get_service(sid)
                    assert got is not None and want is not None
                    assert got.spec == want.spec and got.version == want.version
                assert view_b.cluster() is not None
                # and its watchers saw the leader's commits as events
                seen = [(e.action, e.obj.id) for e in watcher.get_nowait_all()]
                assert ("create", "s1") in seen and ("update", "s1") in seen
                assert ("create", "s2") in seen

                await sa.update(lambda tx: tx.delete("service", "s2"))
                await _wait_index(sb, sa.index)
                assert sb.view().get_service("s2") is None

                # a large group commit is still one etcd transaction (far beyond
                # etcd's default of 128 operations): the replica gets all of it
                await sa.batch(range(TASKS), lambda tx, i: tx.create(_task(f"t{i}", "s1")))
                await _wait_index(sb, sa.index)
                assert len(sb.view().tasks_of_service("s1")) == TASKS

                # at rest, every object is sealed with the DEK
                raw = await a.client.get(a.backend.object_key("service", "s1"))
                assert raw is not None and raw.value.startswith(MAGIC)
                assert b"front" not in raw.value and b"web" not in raw.value

                # a manager that starts now loads everything, at the same index
                c = Manager(cluster.client(), "c", prefix, dek)
                try:
                    sc = await c.open(follow=False)
                    assert sc.index == sa.index
                    web = sc.view().get_service("s1")
                    assert web is not None and web.spec.labels == {"tier": "front"}
                    assert sc.view().get_service("s2") is None
                finally:
                    await c.close()
            finally:
                await b.close()
                await a.close()

    asyncio.run(main())


def test_deposed_leader_is_fenced(tmp_path: Path) -> None:
    async def main() -> None:
        async with etcd_cluster(tmp_path) as cluster:
            prefix = f"/t-{secrets.token_hex(4)}/".encode()
            dek = os.urandom(32)
            a = Manager(cluster.client(), "a", prefix, dek)
            b = Manager(cluster.client(), "b", prefix, dek)
            try:
                sa = await a.open()
                await a.lead()
                await sa.update(lambda tx: tx.create(_service("s1", "web")))
                # b's replica is opened, but not yet fed by the watch
                sb = await b.open(follow=False)
                await sa.update(lambda tx: tx.create(_service("s2", "api")))
                index_before = sa.index

                # a loses its lease without knowing (as when it is cut off for the
                # TTL): etcd deletes its key, and b is elected
                assert a.election.lease_id is not None
                await b.client.revoke_lease(a.election.lease_id)
                await asyncio.wait_for(b.lead(), WAIT_S)
                assert b.backend.fence is not None and a.backend.fence is not None
                assert b.backend.fence.revision > a.backend.fence.revision

                # a's write is refused, and a's store takes it back
                with pytest.raises(LostLeadership, match="superseded"):
                    await sa.update(lambda tx: tx.create(_service("s3", "stale")))
                assert sa.view().get_service("s3") is None
                assert sa.index == index_before + 1  # the index is not reused
                # and a's keep-alive finds its lease gone: it knows it lost
                await asyncio.wait_for(a.election.lost.wait(), WAIT_S)
                assert a.election.fence is None

                # b's replica is behind (it missed s2): refused, nothing written
                with pytest.raises(LostLeadership, match="behind"):
                    await sb.update(lambda tx: tx.create(_service("s4", "early")))
                # once it has caught up, b writes
                b.follow()
                await _wait_index(sb, index_before)
                assert sb.view().get_service("s2") is not None
                await sb.update(lambda tx: tx.create(_service("s5", "new")))

                # etcd holds neither refused write
                for sid in ("s3", "s4"):
                    assert await a.client.get(a.backend.object_key("service", sid)) is None
                fresh = Manager(cluster.client(), "fresh", prefix, dek)
                try:
                    sf = await fresh.open(follow=False)
                    ids = {s.id for s in sf.view().services()}
                    assert ids == {"s1", "s2", "s5"}
                    assert sf.index == sb.index
                finally:
                    await fresh.close()
            finally:
                await b.close()
                await a.close()

    asyncio.run(main())


def test_commits_and_watch_survive_the_loss_of_a_member(tmp_path: Path) -> None:
    async def main() -> None:
        async with etcd_cluster(tmp_path, size=3) as cluster:
            m1, m2, m3 = cluster.members
            prefix = f"/t-{secrets.token_hex(4)}/".encode()
            dek = os.urandom(32)
            # both managers talk to m1 first (gRPC pick_first), the others behind it;
            # the lease outlives etcd's own election (a few seconds)
            a = Manager(cluster.client(m1, m2, m3), "a", prefix, dek, ttl=10)
            b = Manager(cluster.client(m1, m2, m3), "b", prefix, dek, ttl=10)
            try:
                sa = await a.open()
                await a.lead()
                sb = await b.open()
                await sa.update(lambda tx: tx.create(_service("s0", "before")))
                await _wait_index(sb, sa.index)

                await m1.kill()  # the member both are on (and etcd's first leader)
                for i in range(1, 6):
                    await asyncio.wait_for(
                        sa.update(lambda tx, i=i: tx.create(_service(f"s{i}", f"after{i}"))),
                        WAIT_S,
                    )
                # b's watch resumed on another member, from where it was
                await _wait_index(sb, sa.index)
                want = {f"s{i}" for i in range(6)}
                assert {s.id for s in sb.view().services()} == want
                assert {s.id for s in sa.view().services()} == want
                assert sb.foreign_commits == 6
            finally:
                await b.close()
                await a.close()

    asyncio.run(main())
