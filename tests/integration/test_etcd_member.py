"""Embedded etcd members on loopback with mutual TLS: a cluster grown to three by
adding members through the client API before they start (as a joining manager does),
one removed again, one restarted on its data, and a worker's certificate (same CA)
refused."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest

from shoal.etcdclient import CLIENT_ERRORS, EtcdClient, TLSFiles
from shoal.manager.ca.signer import node_cert_expiry, sign_node_certificate
from shoal.manager.etcd.member import member_names, remove_member
from shoal.pki import key_pem, make_csr, new_key

from .etcd_harness import CLIENT_TIMEOUT_S, etcd_cluster

pytestmark = pytest.mark.integration

# A bound on waits for something that must happen (not a speed check).
WAIT_S = 30.0


def test_members_added_and_removed(tmp_path: Path) -> None:
    async def main() -> None:
        async with etcd_cluster(tmp_path, size=3) as cluster:
            m1, m2, m3 = cluster.members
            c1, c3 = cluster.client(m1), cluster.client(m3)
            try:
                assert sorted(await member_names(c1)) == sorted(m.name for m in (m1, m2, m3))
                # a write through one member is read through another
                key = f"/t-{secrets.token_hex(4)}/k".encode()
                await c3.put(key, b"v1")
                got = await c1.get(key)
                assert got is not None and got.value == b"v1"

                # m2 leaves: removed through the API, then stopped, its data removed
                assert await remove_member(c1, m2.name)
                await m2.stop()
                m2.remove_data()
                assert not m2.directory.exists()
                assert sorted(await member_names(c3)) == sorted([m1.name, m3.name])
                assert not await remove_member(c1, m2.name)  # gone already
                # the two left still make a quorum
                await c1.put(key, b"v2")
                got = await c3.get(key)
                assert got is not None and got.value == b"v2"

                # a member restarted on its data (a supervisor's restart) rejoins as it was
                await m3.stop()
                await m3.start()
                got = await c3.get(key)
                assert got is not None and got.value == b"v2"
                assert sorted(await member_names(c3)) == sorted([m1.name, m3.name])

                # and a new member can take m2's place
                m4 = await cluster.join(m3)
                assert m4.name in await member_names(c1)
                c4 = cluster.client(m4)
                try:
                    got = await c4.get(key)
                    assert got is not None and got.value == b"v2"
                finally:
                    await c4.close()
            finally:
                await c1.close()
                await c3.close()

    asyncio.run(main())


def test_a_supervised_member_is_restarted(tmp_path: Path) -> None:
    async def main() -> None:
        async with etcd_cluster(tmp_path) as cluster:
            (m1,) = cluster.members
            supervisor = asyncio.create_task(m1.supervise())
            client = cluster.client(m1)
            try:
                await client.put(b"/kept", b"v")
                await m1.kill()  # a crash: SIGKILL
                await asyncio.wait_for(m1.restarted.wait(), WAIT_S)
                assert m1.running and m1.restarts == 1
                # on its data, as it was (a new channel: the old one may be in gRPC's
                # reconnect backoff)
                fresh = cluster.client(m1)
                try:
                    got = await fresh.get(b"/kept")
                finally:
                    await fresh.close()
                assert got is not None and got.value == b"v"
                await m1.stop()  # a stop is not a crash: the supervisor returns
                await asyncio.wait_for(supervisor, WAIT_S)
                assert not m1.running and m1.restarts == 1
            finally:
                supervisor.cancel()
                await client.close()

    asyncio.run(main())


def test_worker_certificate_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with etcd_cluster(tmp_path) as cluster:
            (m1,) = cluster.members
            key = new_key()
            worker_cert = sign_node_certificate(
                cluster.root,
                make_csr(key),
                "worker-" + secrets.token_hex(3),
                "worker",
                cluster.cluster_id,
                node_cert_expiry(None),
            )
            worker = EtcdClient(
                [m1.address.client_url],
                TLSFiles(cluster.root.cert_pem, worker_cert, key_pem(key)),
                timeout=CLIENT_TIMEOUT_S,
            )
            manager = cluster.client(m1)
            try:
                with pytest.raises(CLIENT_ERRORS):
                    await worker.get(b"/anything")
                assert await manager.get(b"/anything") is None  # a manager's is accepted
            finally:
                await worker.close()
                await manager.close()

    asyncio.run(main())
