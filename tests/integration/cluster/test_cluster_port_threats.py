"""The cluster port against a node that holds a real certificate and misbehaves: the
threats of docs/cluster.md, each tried against a running trio.

A "rogue" here is the test itself, joined with a real join token (`POST /ca/join` with a
CSR of its own), then speaking the session protocol by hand over a websocket with that
certificate: what any worker's owner could do. Real daemons, real TLS, the docker CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ..cluster_harness import (
    MANAGER_ONLY_PATH,
    MANAGER_OU,
    NODE_CERT_FILE,
    ROOT_CA_FILE,
    WORKER_OU,
    Cluster,
    NodeFactory,
    load_cert,
    refused,
    subject_attr,
    tls_context,
    tls_request,
)
from ..harness import Response, holds_for, wait_until

pytestmark = pytest.mark.integration

SESSION_PATH = "/dispatcher/session"
RECEIVE_TIMEOUT_S = 10.0
# A frame well over what a manager reads from an agent (a few MiB).
BIG_FRAME_BYTES = 10 * 1024 * 1024
# Lines the chatty task writes at once: far more than any buffer between it and a client.
CHATTY_LINES = 300_000
# Heartbeats are 1 s in the trio: a stalled session is Down in about 3 s.
STALL_WATCH_S = 12.0


@dataclass
class Rogue:
    node_id: str
    cert: Path
    key: Path
    ca: Path

    def context(self) -> Any:
        return tls_context(self.cert, self.key, self.ca)


def tls_refused(host: str, port: int, context: ssl.SSLContext) -> bool:
    """True when the server ends a TLS connection made with `context` before any HTTP
    answer to a session request (the socket closed here, whatever happens)."""
    try:
        with (
            socket.create_connection((host, port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            tls.sendall(f"GET {SESSION_PATH} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            return tls.recv(1) == b""
    except (ssl.SSLError, ConnectionError):
        return True


def cluster_port(cluster: Cluster) -> tuple[str, int]:
    manager = cluster.manager
    assert manager.cluster_port is not None
    return manager.addr, manager.cluster_port


def request(cluster: Cluster, rogue: Rogue, method: str, path: str) -> Response:
    host, port = cluster_port(cluster)
    body = b"{}" if method == "POST" else None
    return tls_request(host, port, path, rogue.context(), method=method, body=body)


def rogue_join(
    cluster: Cluster, directory: Path, role: str = "worker", addr: str = "127.0.0.1"
) -> Rogue:
    """Join the way a node does, with our own key and whatever `Addr` we like."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    ca = cluster.manager.certs_dir / ROOT_CA_FILE
    body = {
        "Token": cluster.join_token(role),
        "CSR": csr.decode(),
        "Hostname": f"rogue-{directory.name}",
        "Addr": addr,
    }
    host, port = cluster_port(cluster)
    resp = tls_request(
        host, port, "/ca/join", tls_context(ca=ca), method="POST", body=json.dumps(body).encode()
    )
    assert resp.status == 200, resp
    joined = resp.json()
    cert_path, key_path = directory / "rogue.crt", directory / "rogue.key"
    cert_path.write_text(joined["Certificate"])
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Rogue(joined["NodeID"], cert_path, key_path, ca)


def frame(**fields: Any) -> bytes:
    return msgspec.msgpack.encode(fields)


def status_frame(task_id: str, state: str, message: str = "") -> bytes:
    ts = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
    update = {"TaskID": task_id, "Status": {"Timestamp": ts, "State": state, "Message": message}}
    return frame(type="status", Updates=[update])


@contextlib.asynccontextmanager
async def session(cluster: Cluster, rogue: Rogue) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    host, port = cluster_port(cluster)
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(
            f"wss://{host}:{port}{SESSION_PATH}",
            ssl=rogue.context(),
            heartbeat=None,
            max_msg_size=64 * 1024 * 1024,
        ) as ws,
    ):
        yield ws


async def receive(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any] | None:
    """The next frame decoded, or None when the manager closed the session."""
    msg = await ws.receive(timeout=RECEIVE_TIMEOUT_S)
    if msg.type != aiohttp.WSMsgType.BINARY:
        return None
    decoded: dict[str, Any] = msgspec.msgpack.decode(msg.data)
    return decoded


async def register(ws: aiohttp.ClientWebSocketResponse, rogue: Rogue) -> None:
    hello = {"Hostname": "rogue", "Platform": {"OS": "linux", "Architecture": "x86_64"}}
    await ws.send_bytes(frame(type="register", NodeID=rogue.node_id, Description=hello, Addr=""))
    reply = await receive(ws)
    assert reply is not None and reply["type"] == "registered", reply


async def heartbeat_acked(ws: aiohttp.ClientWebSocketResponse, seq: int) -> bool:
    """Send a heartbeat; True if its ack comes back (other frames are skipped)."""
    await ws.send_bytes(frame(type="heartbeat", Seq=seq))
    while True:
        m = await receive(ws)
        if m is None:
            return False
        if m["type"] == "heartbeat_ack" and m["Seq"] == seq:
            return True


def dns_names(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sorted(san.get_values_for_type(x509.DNSName))


# --------------------------------------------------------------------------- names


def test_a_worker_cannot_name_itself_a_manager(cluster: Cluster, tmp_path: Path) -> None:
    rogue = rogue_join(cluster, tmp_path / "r", addr="swarm-manager")
    cert = load_cert(rogue.cert)
    assert subject_attr(cert, NameOID.ORGANIZATIONAL_UNIT_NAME) == [WORKER_OU]
    # Only what the CA decides: the role and the node ID, nothing the client sent.
    assert dns_names(cert) == sorted([WORKER_OU, rogue.node_id])
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == []
    # The node's address is where it connected from, not what it claimed.
    node = cluster.manager.api.inspect_node(rogue.node_id)
    assert node["Status"]["Addr"] == "127.0.0.1", node["Status"]


# --------------------------------------------------------------------------- revocation


def test_a_removed_nodes_session_is_closed_and_its_certificate_refused(
    cluster: Cluster, tmp_path: Path
) -> None:
    rogue = rogue_join(cluster, tmp_path / "r")

    async def main() -> None:
        async with session(cluster, rogue) as ws:
            await register(ws, rogue)
            assert await heartbeat_acked(ws, 1)
            await asyncio.to_thread(cluster.manager.docker, "node", "rm", "--force", rogue.node_id)
            # The manager ends the session by itself: an error frame, then the close.
            frames = []
            while (m := await receive(ws)) is not None:
                frames.append(m)
            assert [f["type"] for f in frames if f["type"] != "assignment"] == ["error"], frames

    asyncio.run(main())
    # And the certificate, still valid as a certificate, opens nothing any more: the
    # removed node's ID fails the TLS handshake (no HTTP answer, not even a 403).
    assert tls_refused(*cluster_port(cluster), rogue.context())
    assert refused(lambda: request(cluster, rogue, "POST", "/ca/renew")) is not None


def test_a_manager_asks_for_its_own_etcd_member_only(cluster: Cluster, tmp_path: Path) -> None:
    """`POST /manager/member` (a new manager's etcd member, docs/ha.md): a manager's
    certificate asks for the member named after its own node only (refused before
    anything moves); a worker's certificate is refused at the door."""
    rogue = rogue_join(cluster, tmp_path / "m", role="manager")
    other = cluster.manager.node_id()
    host, port = cluster_port(cluster)
    body = json.dumps({"name": other, "peer_url": "https://127.0.0.1:9"}).encode()
    resp = tls_request(host, port, "/manager/member", rogue.context(), method="POST", body=body)
    assert resp.status == 403, resp
    assert resp.json()["message"] == (
        f"permission denied: node {rogue.node_id} may ask for its own etcd member only"
    )
    worker = rogue_join(cluster, tmp_path / "w")
    resp = tls_request(host, port, "/manager/member", worker.context(), method="POST", body=body)
    assert resp.status == 403, resp
    cluster.manager.docker("node", "demote", rogue.node_id)


def test_a_demoted_managers_certificate_cannot_reach_manager_paths(
    cluster: Cluster, tmp_path: Path
) -> None:
    rogue = rogue_join(cluster, tmp_path / "r", role="manager")
    assert subject_attr(load_cert(rogue.cert), NameOID.ORGANIZATIONAL_UNIT_NAME) == [MANAGER_OU]
    assert request(cluster, rogue, "GET", MANAGER_ONLY_PATH).status == 200
    cluster.manager.docker("node", "demote", rogue.node_id)
    resp = request(cluster, rogue, "GET", MANAGER_ONLY_PATH)
    assert resp.status == 403, resp
    assert resp.json()["message"] == (
        f"permission denied: node {rogue.node_id} is a worker now; its certificate must be renewed"
    )


def test_a_demoted_node_comes_back_with_a_worker_certificate(
    cluster: Cluster, node_factory: NodeFactory
) -> None:
    node = node_factory("node-4")
    cluster.join(node, role="manager")
    cert_file = node.certs_dir / NODE_CERT_FILE
    assert subject_attr(load_cert(cert_file), NameOID.ORGANIZATIONAL_UNIT_NAME) == [MANAGER_OU]
    cluster.manager.docker("node", "demote", "node-4")
    # Its session is closed, its manager certificate refused; it renews at once and
    # comes back as what the store says it is.
    wait_until(
        lambda: subject_attr(load_cert(cert_file), NameOID.ORGANIZATIONAL_UNIT_NAME) == [WORKER_OU],
        timeout=30,
        what="node-4 to hold a worker certificate",
    )
    cluster.wait_node_state("node-4", "ready")
    cluster.manager.docker(
        "service", "create", "--detach", "--name", "on4", "--constraint",
        "node.hostname==node-4", "busybox", "sleep", "1000",
    )  # fmt: skip
    cluster.wait_converged("on4", 1, per_node={"node-4": 1})


# --------------------------------------------------------------------------- reports


def test_a_bad_status_frame_leaves_other_nodes_statuses_flowing(
    cluster: Cluster, tmp_path: Path
) -> None:
    rogue = rogue_join(cluster, tmp_path / "r")
    docker = cluster.manager.docker

    async def main() -> None:
        async with session(cluster, rogue) as ws:
            await register(ws, rogue)
            await asyncio.to_thread(
                docker, "service", "create", "--detach", "--name", "pinned",
                "--constraint", f"node.id=={rogue.node_id}", "busybox", "sleep", "1000",
            )  # fmt: skip
            task_id = None
            while task_id is None:
                m = await receive(ws)
                assert m is not None, "the session ended before the task was assigned"
                if m["type"] == "assignment":
                    tasks = m["Assignment"].get("Tasks") or []
                    task_id = tasks[0]["Task"]["ID"] if tasks else None
            # A state that is not a task state, for a task that is really this node's.
            await ws.send_bytes(status_frame(task_id, "x"))
            # Refused alone: the session goes on.
            assert await heartbeat_acked(ws, 2)
            await asyncio.to_thread(
                docker, "service", "create", "--detach", "--name", "flowing",
                "--constraint", "node.hostname==node-3", "busybox", "sleep", "1000",
            )  # fmt: skip
            await asyncio.to_thread(cluster.wait_converged, "flowing", 1, {"node-3": 1})
            # The rogue's own later, valid reports are written too.
            await ws.send_bytes(status_frame(task_id, "rejected", "refused by the test"))
            await asyncio.to_thread(
                wait_until,
                lambda: cluster.manager.api.inspect_task(task_id)["Status"]["State"] == "rejected",
                what="the rogue's valid report to be written",
            )

    asyncio.run(main())


def test_a_frame_over_the_limit_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    rogue = rogue_join(cluster, tmp_path / "r")

    async def main() -> None:
        async with session(cluster, rogue) as ws:
            await register(ws, rogue)
            # A well-formed message, only too large.
            await ws.send_bytes(status_frame("no-such-task", "running", "x" * BIG_FRAME_BYTES))
            acked = await heartbeat_acked(ws, 1)
            assert not acked, "the manager read a 10 MiB frame"
            assert ws.closed

    asyncio.run(main())


# --------------------------------------------------------------------------- logs


def test_a_slow_log_follower_does_not_make_its_node_go_down(cluster: Cluster) -> None:
    manager = cluster.manager
    manager.docker(
        "service", "create", "--detach", "--name", "chatty",
        "--constraint", "node.hostname==node-2", "busybox",
        "sh", "-c", f"yes 0123456789abcdef0123456789abcdef | head -n {CHATTY_LINES}; sleep 1000",
    )  # fmt: skip
    cluster.wait_converged("chatty", 1, per_node={"node-2": 1})
    # A client that asks to follow the logs and then reads nothing at all.
    reader = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        reader.connect(str(manager.socket))
        reader.sendall(
            b"GET /v1.41/services/chatty/logs?follow=1&stdout=1&stderr=1 HTTP/1.1\r\n"
            b"Host: shoal\r\n\r\n"
        )
        holds_for(
            lambda: cluster.node_state("node-2") == "ready",
            STALL_WATCH_S,
            what="node-2 ready while its logs are followed by a client that reads nothing",
        )
    finally:
        reader.close()


# --------------------------------------------------------------------------- files


def test_data_dirs_and_files_are_private(cluster: Cluster) -> None:
    cluster.manager.docker(
        "service", "create", "--detach", "--name", "secretive", "--mode", "global",
        "--env", "PASSWORD=hunter2", "busybox", "sleep", "1000",
    )  # fmt: skip
    cluster.wait_converged("secretive", 3)
    seen = {"store.db": False, "spec.json": False}
    for name, node in cluster.nodes.items():
        assert stat.S_IMODE(node.data_dir.stat().st_mode) == 0o700, name
        for path in node.data_dir.rglob("*"):
            st = path.lstat()
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                assert mode == 0o700, (name, path, oct(mode))
            elif stat.S_ISREG(st.st_mode):
                assert mode == 0o600, (name, path, oct(mode))
                # a store moved to etcd (a manager joined) keeps SQLite's renamed
                if (kept := path.name.removesuffix(".migrated")) in seen:
                    seen[kept] = True
    assert all(seen.values()), seen
