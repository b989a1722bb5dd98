"""Revocation on the cluster port, in process: the list of removed nodes
(ca/removed.py), the handshake that refuses them (access.refusing_removed), and failed
joins limited per address (ratelimit.JoinLimiter)."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import tempfile
from pathlib import Path

import pytest

from shoal.errors import PermissionDenied
from shoal.manager.ca.removed import is_removed, remove_node
from shoal.manager.ca.root import RootCA
from shoal.manager.ca.signer import sign_node_certificate
from shoal.manager.clusterport.access import ACCESS, Gate, refusing_removed
from shoal.manager.clusterport.ratelimit import (
    JOIN_FAILURE_BURST_PER_PEER,
    JoinLimiter,
)
from shoal.manager.store import MemoryBackend, Store, Tx
from shoal.pki import Identity, key_pem, make_csr, new_key, server_context
from shoal.types.node import Node, NodeSpec, NodeStatus
from shoal.types.service import JoinTokens
from shoal.types.swarm import Cluster, SwarmSpec

from ..storeutil import commit

DAY = datetime.timedelta(days=1)
NOW_NS = 1_800_000_000 * 1_000_000_000
# SwarmKit's default certificate life: how long a removed node's ID is kept at least.
NINETY_DAYS_NS = 90 * 24 * 3600 * 1_000_000_000


def _node(node_id: str) -> Node:
    return Node(
        id=node_id,
        spec=NodeSpec(role="worker", availability="active"),
        status=NodeStatus(state="ready"),
    )


def _store(root: RootCA, *node_ids: str) -> Store:
    store = Store(MemoryBackend())

    def create(tx: Tx) -> None:
        tx.create(
            Cluster(
                id="cid",
                spec=SwarmSpec(),
                tls_info=root.tls_info(),
                subnet_size=24,
                data_path_port=4789,
                join_tokens=JoinTokens(worker="w", manager="m"),
            )
        )
        for n in node_ids:
            tx.create(_node(n))

    commit(store, create)
    return store


@pytest.fixture(scope="module")
def root() -> RootCA:
    return RootCA.create()


# --------------------------------------------------------------------------- the list


def test_a_removed_node_is_listed_until_its_certificates_expire(root: RootCA) -> None:
    store = _store(root, "n1", "n2")
    version = store.view().cluster().version.index  # type: ignore[union-attr]
    commit(store, lambda tx: remove_node(tx, "n1", NOW_NS))
    view = store.view()
    assert view.get_node("n1") is None
    assert is_removed(view, "n1") and not is_removed(view, "n2")
    assert view.cluster_meta().removed_nodes["n1"] == NOW_NS + NINETY_DAYS_NS
    # As SwarmKit's: the list is the cluster's, so the cluster's version moves.
    assert view.cluster().version.index > version  # type: ignore[union-attr]
    # Entries past their expiry are dropped at the next removal.
    later = NOW_NS + NINETY_DAYS_NS + 1
    commit(store, lambda tx: remove_node(tx, "n2", later))
    assert set(store.view().cluster_meta().removed_nodes) == {"n2"}


def test_the_gate_refuses_a_removed_id_even_if_a_node_has_it(root: RootCA) -> None:
    store = _store(root, "n1")
    gate = Gate(store, "cid")
    ident = Identity(node_id="n1", role="worker", cluster_id="cid")
    gate.admit(ACCESS[("POST", "/ca/renew")], ident, "/ca/renew")
    commit(store, lambda tx: remove_node(tx, "n1", NOW_NS))
    commit(store, lambda tx: tx.create(_node("n1")))  # a path that wrote the row back
    with pytest.raises(PermissionDenied, match="not a member of this cluster"):
        gate.admit(ACCESS[("POST", "/ca/renew")], ident, "/ca/renew")
    assert gate.removed("n1")


# --------------------------------------------------------------------------- handshake


def _cert(root: RootCA, node_id: str, role: str, directory: Path) -> tuple[Path, Path]:
    key = new_key()
    pem = sign_node_certificate(root, make_csr(key), node_id, role, "cid", DAY)
    cert_path, key_path = directory / f"{node_id}.crt", directory / f"{node_id}.key"
    cert_path.write_bytes(pem)
    key_path.write_bytes(key_pem(key))
    return cert_path, key_path


async def _exchange(server: ssl.SSLContext, client: ssl.SSLContext) -> bytes:
    """One byte from the server over TLS on loopback; b"" when the handshake failed."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"!")
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server)
    port = srv.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
        try:
            return await asyncio.wait_for(reader.read(1), 10)
        except (ssl.SSLError, ConnectionError):
            return b""
        finally:
            writer.close()
    finally:
        srv.close()


def test_a_removed_nodes_certificate_fails_the_handshake(root: RootCA) -> None:
    with tempfile.TemporaryDirectory() as d:
        directory = Path(d)
        mcert, mkey = _cert(root, "m1", "manager", directory)
        server = server_context(root.cert_pem, mcert.read_bytes(), mkey.read_bytes())
        server.sslobject_class = refusing_removed(lambda node_id: node_id == "gone")

        def client(node_id: str) -> ssl.SSLContext:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.load_cert_chain(*_cert(root, node_id, "worker", directory))
            return ctx

        assert asyncio.run(_exchange(server, client("member"))) == b"!"
        assert asyncio.run(_exchange(server, client("gone"))) == b""


# --------------------------------------------------------------------------- joins


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failed_joins_are_limited_per_address() -> None:
    t = FakeTime()
    limiter = JoinLimiter(now=t)
    for _ in range(JOIN_FAILURE_BURST_PER_PEER):
        assert not limiter.failing("10.0.0.1")
        assert limiter.allow("10.0.0.1")
        limiter.failed("10.0.0.1")
    # Far below the 20 joins of the per-address burst, the guesser is stopped...
    assert limiter.failing("10.0.0.1")
    # ...and another address, with the right token, is not.
    assert not limiter.failing("10.0.0.2") and limiter.allow("10.0.0.2")
    t.now += 12.0  # one more failed attempt every 12 s
    assert not limiter.failing("10.0.0.1")
    limiter.failed("10.0.0.1")
    assert limiter.failing("10.0.0.1")
    assert limiter.failed_joins == JOIN_FAILURE_BURST_PER_PEER + 1
    assert limiter.refused == 2
