"""Leader election on a real etcd (mutual TLS, loopback): one leader at a time, a
fencing token that grows with each leadership, and a new leader once the old one
resigns or is killed (its lease expires)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
from pathlib import Path

import pytest

from shoal.manager.election import Election
from shoal.manager.etcd.certs import member_tls, write_tls

from .etcd_harness import etcd_cluster

pytestmark = pytest.mark.integration

TTL_S = 2
# A bound on waits for something that must happen (not a speed check): a few TTLs.
WAIT_S = 10 * TTL_S

# A candidate in a process of its own, so that the test can kill it with SIGKILL.
CANDIDATE = """
import asyncio, sys
from pathlib import Path
from shoal.manager.election import Election
from shoal.etcdclient import EtcdClient, TLSFiles

async def main():
    endpoint, tls_dir, key, name, ttl = sys.argv[1:6]
    d = Path(tls_dir)
    tls = TLSFiles((d / "ca.pem").read_bytes(), (d / "cert.pem").read_bytes(),
                   (d / "key.pem").read_bytes())
    election = Election(EtcdClient([endpoint], tls, timeout=10), name, key.encode(), int(ttl))
    fence = await election.campaign()
    print("leading", fence.revision, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def test_resign_hands_over(tmp_path: Path) -> None:
    async def main() -> None:
        async with etcd_cluster(tmp_path) as cluster:
            key = f"/t-{secrets.token_hex(4)}/election/leader".encode()
            ca, cb = cluster.client(), cluster.client()
            a = Election(ca, "a", key, TTL_S)
            b = Election(cb, "b", key, TTL_S)
            leaders = b.observe()
            try:
                assert await anext(leaders) is None
                fence_a = await asyncio.wait_for(a.campaign(), WAIT_S)
                assert await asyncio.wait_for(anext(leaders), WAIT_S) == "a"
                b_wins = asyncio.create_task(b.campaign())
                # b waits on a's key; a leads for as long as it keeps its lease
                assert await b.leader() == "a"
                await a.resign()
                assert a.lost.is_set() and a.fence is None
                fence_b = await asyncio.wait_for(b_wins, WAIT_S)
                assert fence_b.revision > fence_a.revision
                # the watch may show the key deleted (None) before b's put
                seen = await asyncio.wait_for(anext(leaders), WAIT_S)
                if seen is None:
                    seen = await asyncio.wait_for(anext(leaders), WAIT_S)
                assert seen == "b"
                assert await a.leader() == "b"
            finally:
                await leaders.aclose()
                await b.resign()
                await a.resign()
                await ca.close()
                await cb.close()

    asyncio.run(main())


def test_killed_leader_is_replaced(tmp_path: Path) -> None:
    async def main() -> None:
        async with etcd_cluster(tmp_path) as cluster:
            key = f"/t-{secrets.token_hex(4)}/election/leader"
            tls_dir = tmp_path / "candidate-tls"
            write_tls(member_tls(cluster.root, "a", cluster.cluster_id, []), tls_dir)
            endpoint = cluster.members[0].address.client_url
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                CANDIDATE,
                endpoint,
                str(tls_dir),
                key,
                "a",
                str(TTL_S),
                stdout=asyncio.subprocess.PIPE,
            )
            cb = cluster.client()
            b = Election(cb, "b", key.encode(), TTL_S)
            try:
                assert proc.stdout is not None
                line = await asyncio.wait_for(proc.stdout.readline(), WAIT_S)
                assert line.startswith(b"leading "), line
                fence_a = int(line.split()[1])
                assert await b.leader() == "a"
                b_wins = asyncio.create_task(b.campaign())
                proc.kill()  # SIGKILL: a cannot resign, its lease must expire
                await proc.wait()
                fence_b = await asyncio.wait_for(b_wins, WAIT_S)
                assert fence_b.revision > fence_a
                assert await b.leader() == "b"
            finally:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
                await b.resign()
                await cb.close()

    asyncio.run(main())
