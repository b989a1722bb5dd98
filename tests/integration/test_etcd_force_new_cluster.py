"""etcd's `--force-new-cluster` at the member level (docs/ha.md "Quorum lost for
good"): three members hold a store (a leader's commits); two are stopped and their
data removed for good, so etcd has no quorum and never will. The survivor, restarted
with `force_new_cluster`, is a cluster of one with all the data: a store opened on it
finds every object at the same index, a new leader is elected and writes, and a
restart without the flag (a supervisor's) keeps it so; a new member can then be added
again."""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path

import pytest

from shoal.errors import NoLeader
from shoal.manager.election import Election
from shoal.manager.etcd.member import member_names
from shoal.manager.store import Store
from shoal.manager.store.encrypted import EncryptedBackend
from shoal.manager.store.etcd import EtcdBackend
from shoal.types.service import ReplicatedService, Service, ServiceMode, ServiceSpec

from .etcd_harness import etcd_cluster

pytestmark = pytest.mark.integration

WAIT_S = 30.0
SERVICES = 20


def _service(i: int) -> Service:
    spec = ServiceSpec(name=f"s{i}", mode=ServiceMode(replicated=ReplicatedService(replicas=1)))
    return Service(id=f"id{i}", spec=spec)


def test_the_survivor_forced_into_a_new_cluster_serves_with_all_the_data(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with etcd_cluster(tmp_path, size=3) as cluster:
            m1, m2, m3 = cluster.members
            prefix = f"/t-{secrets.token_hex(4)}/".encode()
            dek = os.urandom(32)
            key = prefix + b"election/leader"

            client = cluster.client(m1, m2, m3)
            backend = EtcdBackend(client, prefix=prefix)
            await backend.open()
            store = Store(EncryptedBackend(backend, dek))
            election = Election(client, "a", key=key, ttl=2)
            backend.set_fence(await election.campaign())
            for i in range(SERVICES):
                await store.update(lambda tx, i=i: tx.create(_service(i)))
            acknowledged = store.durable_index
            await election.resign()
            await client.close()

            # two members gone for good: no quorum, ever
            for m in (m2, m3):
                await m.stop()
                m.remove_data()
            # the survivor, stopped (a manager's daemon restarted for the recovery)
            await m1.stop()
            await asyncio.wait_for(m1.start(force_new_cluster=True), WAIT_S)

            survivor = cluster.client(m1)
            try:
                assert await member_names(survivor) == [m1.name]
                backend = EtcdBackend(survivor, prefix=prefix)
                await backend.open()
                store = Store(EncryptedBackend(backend, dek))
                assert store.durable_index == acknowledged
                assert sorted(s.spec.name for s in store.view().services()) == sorted(
                    f"s{i}" for i in range(SERVICES)
                )
                backend.set_fence(None)
                with pytest.raises(NoLeader):  # nobody leads yet: refused, nothing written
                    await store.update(lambda tx: tx.create(_service(SERVICES)))
                election = Election(survivor, "b", key=key, ttl=2)
                backend.set_fence(await asyncio.wait_for(election.campaign(), WAIT_S))
                await store.update(lambda tx: tx.create(_service(SERVICES)))
                await election.resign()
            finally:
                await survivor.close()

            # restarted without the flag (as a supervisor does): still a cluster of one
            await m1.stop()
            await asyncio.wait_for(m1.start(), WAIT_S)
            survivor = cluster.client(m1)
            try:
                assert await member_names(survivor) == [m1.name]
                backend = EtcdBackend(survivor, prefix=prefix)
                await backend.open()
                store = Store(EncryptedBackend(backend, dek))
                assert len(store.view().services()) == SERVICES + 1
            finally:
                await survivor.close()

            # and the cluster grows again as usual: a member added, a quorum of two
            m4 = await asyncio.wait_for(cluster.join(m1), WAIT_S * 2)
            grown = cluster.client(m4)
            try:
                assert sorted(await member_names(grown)) == sorted([m1.name, m4.name])
                backend = EtcdBackend(grown, prefix=prefix)
                await backend.open()
                store = Store(EncryptedBackend(backend, dek))
                assert len(store.view().services()) == SERVICES + 1
            finally:
                await grown.close()

    asyncio.run(main())
