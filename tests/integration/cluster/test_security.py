"""The cluster's PKI and its mutual-TLS port: node certificates as SwarmKit issues them
(CN node ID, OU role, O cluster ID, signed by the cluster root), and a cluster port that
refuses peers without a certificate from that root and keeps manager paths to managers.

The cluster port is spoken to directly, with python's ssl and http.client, using the
nodes' own certificates from their data dirs, or a self-made one."""

from __future__ import annotations

import datetime
import http.client
import ssl
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from ..cluster_harness import (
    MANAGER_ONLY_PATH,
    MANAGER_OU,
    NODE_CERT_FILE,
    NODE_KEY_FILE,
    NODE_ONLY_ROUTES,
    ROOT_CA_FILE,
    WORKER_OU,
    Cluster,
    ClusterNode,
    load_cert,
    make_impostor,
    refused,
    subject_attr,
    tls_context,
    tls_request,
)
from ..harness import Response

pytestmark = pytest.mark.integration


def cluster_id(cluster: Cluster) -> str:
    return str(cluster.manager.api.inspect_swarm()["ID"])


def own_credentials(node: ClusterNode) -> tuple[Path, Path, Path]:
    d = node.certs_dir
    return d / NODE_CERT_FILE, d / NODE_KEY_FILE, d / ROOT_CA_FILE


def get(cluster: Cluster, path: str, ctx: ssl.SSLContext, method: str = "GET") -> Response:
    manager = cluster.manager
    assert manager.cluster_port is not None
    body = b"{}" if method == "POST" else None
    return tls_request(manager.addr, manager.cluster_port, path, ctx, method=method, body=body)


def test_every_node_holds_a_certificate_from_the_cluster_root(cluster: Cluster) -> None:
    cid = cluster_id(cluster)
    root_pem = (cluster.manager.certs_dir / ROOT_CA_FILE).read_bytes()
    root = load_cert(cluster.manager.certs_dir / ROOT_CA_FILE)
    seen_ids = set()
    for name, node in cluster.nodes.items():
        cert_path, key_path, ca_path = own_credentials(node)
        assert ca_path.read_bytes().strip() == root_pem.strip(), f"{name} has another root"
        cert = load_cert(cert_path)
        cert.verify_directly_issued_by(root)  # raises if not signed by the cluster root
        role_ou = MANAGER_OU if node is cluster.manager else WORKER_OU
        assert subject_attr(cert, NameOID.COMMON_NAME) == [node.node_id()], (name, cert.subject)
        assert subject_attr(cert, NameOID.ORGANIZATIONAL_UNIT_NAME) == [role_ou], cert.subject
        assert subject_attr(cert, NameOID.ORGANIZATION_NAME) == [cid], cert.subject
        seen_ids.add(node.node_id())
        # The private key is the certificate's, and only its owner reads it.
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) == cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        assert stat.S_IMODE(key_path.stat().st_mode) & 0o077 == 0, oct(key_path.stat().st_mode)
        # Only the manager holds the root's key.
        if node is not cluster.manager:
            assert not any("root-ca.key" in p.name for p in node.certs_dir.iterdir())
    assert len(seen_ids) == 3


def test_node_certificates_last_as_long_as_the_cluster_says(cluster: Cluster) -> None:
    expiry_ns = cluster.manager.api.inspect_swarm()["Spec"]["CAConfig"]["NodeCertExpiry"]
    assert expiry_ns == 90 * 24 * 3600 * 10**9, expiry_ns  # Swarm's default, 90 days
    now = datetime.datetime.now(datetime.UTC)
    for name, node in cluster.nodes.items():
        cert = load_cert(node.certs_dir / NODE_CERT_FILE)
        left = cert.not_valid_after_utc - now
        assert datetime.timedelta(days=89) < left <= datetime.timedelta(days=90, hours=1), (
            name,
            cert.not_valid_before_utc,
            cert.not_valid_after_utc,
        )


def test_the_cluster_port_serves_a_certificate_from_the_root(cluster: Cluster) -> None:
    cert, key, ca = own_credentials(cluster.manager)
    # The server's certificate verifies against the cluster root (and only that root).
    resp = get(cluster, MANAGER_ONLY_PATH, tls_context(cert, key, ca))
    assert resp.status == 200, resp


def test_a_worker_certificate_cannot_do_manager_things(cluster: Cluster) -> None:
    for worker in cluster.workers:
        cert, key, ca = own_credentials(worker)
        resp = get(cluster, MANAGER_ONLY_PATH, tls_context(cert, key, ca))
        assert resp.status == 403, (worker.node_name, resp)


def test_a_self_made_certificate_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    cid = cluster_id(cluster)
    # An impostor claiming to be the manager itself, and one claiming to be a worker.
    for who, ou in ((cluster.manager, MANAGER_OU), (cluster.workers[0], WORKER_OU)):
        cert, key = make_impostor(tmp_path / who.node_name, who.node_id(), cid, ou)
        ctx = tls_context(cert, key)
        for method, path in (("GET", MANAGER_ONLY_PATH), *NODE_ONLY_ROUTES):
            why = refused(lambda m=method, p=path, c=ctx: get(cluster, p, c, m))
            assert why is not None, f"{method} {path} answered a self-made {ou} certificate"


def test_no_certificate_gets_nothing_but_the_join_paths(cluster: Cluster) -> None:
    ctx = tls_context(ca=cluster.manager.certs_dir / ROOT_CA_FILE)
    for method, path in (("GET", MANAGER_ONLY_PATH), *NODE_ONLY_ROUTES):
        try:
            resp = get(cluster, path, ctx, method)
        except OSError:
            continue  # the connection was refused outright: fine too
        assert resp.status in (401, 403), (path, resp)


def test_the_cluster_port_is_tls_only(cluster: Cluster) -> None:
    manager = cluster.manager
    assert manager.cluster_port is not None
    conn = http.client.HTTPConnection(manager.addr, manager.cluster_port, timeout=5)
    try:
        try:
            conn.request("GET", MANAGER_ONLY_PATH)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException):
            return
        assert resp.status not in range(200, 300), resp.status
    finally:
        conn.close()
