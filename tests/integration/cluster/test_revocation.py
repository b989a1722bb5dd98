"""Revocation on the cluster port, against a running trio (docs/security.md):

- a removed node's certificate, still valid as a certificate, fails the TLS handshake
  at once (the cluster's list of removed nodes, SwarmKit's BlacklistedCertificates);
- an expired certificate fails the handshake, also for a node whose certificate was
  renewed (its old certificate, once expired, is worth nothing) — certificates made
  here with the cluster's own root key, since the CA never signs under 1 h;
- failed joins are limited per source address: a burst of wrong tokens gets 429 with
  a Docker-shaped message, and a node with the right token from another address joins.
"""

from __future__ import annotations

import datetime
import http.client
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ..cluster_harness import (
    INVALID_TOKEN,
    WORKER_OU,
    Cluster,
    NodeFactory,
    load_cert,
    refused,
    subject_attr,
    tls_context,
    tls_request,
)
from ..harness import Response
from .test_cluster_port_threats import Rogue, cluster_port, request, rogue_join

pytestmark = pytest.mark.integration

ROOT_KEY_FILE = "swarm-root-ca.key"
# Another loopback address: the "other" source of the join tests (Linux routes all of
# 127/8 to lo). Nothing else in this module connects from it.
GUESSER_ADDR = "127.0.0.2"
# Failed joins an address may make at once (ratelimit.JOIN_FAILURE_BURST_PER_PEER).
FAILED_JOIN_BURST = 5
TOO_MANY_FAILED_JOINS = (
    "rpc error: code = ResourceExhausted desc = too many failed join attempts from this "
    "address; try again later"
)


def forge(
    cluster: Cluster,
    rogue: Rogue,
    directory: Path,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> Rogue:
    """A certificate for the rogue's node ID and key, signed with the cluster's root key
    (read from the manager's data dir) for whatever validity we like."""
    certs = cluster.manager.certs_dir
    root_key = serialization.load_pem_private_key((certs / ROOT_KEY_FILE).read_bytes(), None)
    assert isinstance(root_key, ec.EllipticCurvePrivateKey)
    root = x509.load_pem_x509_certificates(rogue.ca.read_bytes())[0]
    key = serialization.load_pem_private_key(rogue.key.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    cluster_id = subject_attr(load_cert(rogue.cert), NameOID.ORGANIZATION_NAME)[0]
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_id),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, WORKER_OU),
                    x509.NameAttribute(NameOID.COMMON_NAME, rogue.node_id),
                ]
            )
        )
        .issuer_name(root.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(WORKER_OU), x509.DNSName(rogue.node_id)]),
            critical=False,
        )
        .sign(root_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "forged.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Rogue(rogue.node_id, path, rogue.key, rogue.ca)


def renewal(cluster: Cluster, rogue: Rogue, directory: Path) -> Rogue:
    """Renew the rogue's certificate as a node does (`POST /ca/renew`, same key)."""
    key = serialization.load_pem_private_key(rogue.key.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    host, port = cluster_port(cluster)
    body = json.dumps({"CSR": csr.decode()}).encode()
    resp = tls_request(host, port, "/ca/renew", rogue.context(), method="POST", body=body)
    assert resp.status == 200, resp
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "renewed.crt"
    path.write_text(resp.json()["Certificate"])
    return Rogue(rogue.node_id, path, rogue.key, rogue.ca)


def answered(cluster: Cluster, rogue: Rogue) -> Response | None:
    """The answer to a renewal-path request, or None when the handshake was refused."""
    try:
        return request(cluster, rogue, "POST", "/ca/renew")
    except Exception:  # noqa: BLE001 - refused() below says what it was
        return None


# --------------------------------------------------------------------------- node rm


def test_a_removed_node_is_refused_at_the_handshake(cluster: Cluster, tmp_path: Path) -> None:
    rogue = rogue_join(cluster, tmp_path / "r")
    # A member: past the handshake, the renewal path answers (400: the body is empty).
    resp = request(cluster, rogue, "POST", "/ca/renew")
    assert resp.status == 400, resp
    cluster.manager.docker("node", "rm", "--force", rogue.node_id)
    why = refused(lambda: request(cluster, rogue, "POST", "/ca/renew"))
    assert why is not None, "a removed node's certificate got an HTTP answer"
    # Every path, even those that need no certificate, once it is presented.
    assert refused(lambda: request(cluster, rogue, "GET", "/ca/root")) is not None
    # The manager says why in its log.
    log = cluster.manager.log_path.read_text()
    assert "refused a removed node's certificate" in log and rogue.node_id in log


# --------------------------------------------------------------------------- expiry


def test_an_expired_certificate_is_refused_at_the_handshake(
    cluster: Cluster, tmp_path: Path
) -> None:
    rogue = rogue_join(cluster, tmp_path / "r")
    now = datetime.datetime.now(datetime.UTC)
    valid = forge(
        cluster,
        rogue,
        tmp_path / "valid",
        now - datetime.timedelta(hours=2),
        now + datetime.timedelta(hours=1),
    )
    expired = forge(cluster, rogue, tmp_path / "expired", now - datetime.timedelta(hours=2), now - datetime.timedelta(minutes=1))  # fmt: skip
    # The same node, the same key, the same root: only the validity differs.
    assert answered(cluster, valid) is not None
    assert refused(lambda: request(cluster, expired, "POST", "/ca/renew")) is not None
    assert cluster.manager.api.inspect_node(rogue.node_id)["ID"] == rogue.node_id


def test_a_renewed_nodes_old_certificate_is_refused_once_expired(
    cluster: Cluster, tmp_path: Path
) -> None:
    rogue = rogue_join(cluster, tmp_path / "r")
    renewed = renewal(cluster, rogue, tmp_path / "renewed")
    assert load_cert(renewed.cert).serial_number != load_cert(rogue.cert).serial_number
    now = datetime.datetime.now(datetime.UTC)
    # The certificate it held before the renewal, as it is once its life is over.
    old = forge(cluster, rogue, tmp_path / "old", now - datetime.timedelta(days=90), now - datetime.timedelta(seconds=1))  # fmt: skip
    assert refused(lambda: request(cluster, old, "POST", "/ca/renew")) is not None
    resp = answered(cluster, renewed)
    assert resp is not None and resp.status == 400, resp  # past the handshake


# --------------------------------------------------------------------------- joins


def join_from(cluster: Cluster, source: str, token: str) -> Response:
    """`POST /ca/join` from `source` (another loopback address), CSR and all."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    body = json.dumps({"Token": token, "CSR": csr.decode(), "Hostname": "guesser", "Addr": ""})
    host, port = cluster_port(cluster)
    ctx = tls_context(ca=cluster.manager.certs_dir / "swarm-root-ca.crt")
    conn = http.client.HTTPSConnection(
        host, port, context=ctx, timeout=10, source_address=(source, 0)
    )
    try:
        conn.request("POST", "/ca/join", body=body.encode())
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def test_wrong_tokens_are_limited_per_address(cluster: Cluster, node_factory: NodeFactory) -> None:
    right = cluster.join_token("worker")
    # The right digest (the cluster's root), a wrong secret.
    wrong = right[:-25] + ("0" * 25 if not right.endswith("0" * 25) else "1" * 25)
    answers = [join_from(cluster, GUESSER_ADDR, wrong) for _ in range(FAILED_JOIN_BURST + 3)]
    statuses = [r.status for r in answers]
    assert statuses == [400] * FAILED_JOIN_BURST + [429] * 3, statuses
    assert answers[0].json() == {"message": INVALID_TOKEN}
    assert answers[-1].json() == {"message": TOO_MANY_FAILED_JOINS}
    # That address is held off, even with the right token...
    held = join_from(cluster, GUESSER_ADDR, right)
    assert held.status == 429 and held.json() == {"message": TOO_MANY_FAILED_JOINS}
    # ...while a node joining from another address with the right token gets in.
    node = node_factory("node-4")
    cluster.join(node)
    cluster.wait_node_state("node-4", "ready")
    nodes = {n["Description"]["Hostname"] for n in cluster.node_objects()}
    assert "guesser" not in nodes
