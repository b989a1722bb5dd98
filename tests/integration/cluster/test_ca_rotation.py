"""`docker swarm ca --rotate` on three nodes, as SwarmKit rotates a root: every node
ends with a certificate of the new root and trusts only it, no task restarts, the join
tokens carry the new root's digest, and a node joined afterwards uses the new root.
`--ca-cert/--ca-key` bring a root of one's own."""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ..cluster_harness import ROOT_CA_FILE, TOKEN_RE, Cluster, ClusterNode, NodeFactory
from ..harness import wait_until

pytestmark = pytest.mark.integration

NODE_CERT_FILE = "swarm-node.crt"
ROTATE_TIMEOUT_S = 120.0
BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def digest36(cert: x509.Certificate) -> str:
    n = int.from_bytes(hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest())
    out = ""
    while n:
        n, r = divmod(n, 36)
        out = BASE36[r] + out
    return out.rjust(50, "0")


def roots_of(node: ClusterNode) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates((node.certs_dir / ROOT_CA_FILE).read_bytes())


def leaf_of(node: ClusterNode) -> x509.Certificate:
    return x509.load_pem_x509_certificates((node.certs_dir / NODE_CERT_FILE).read_bytes())[0]


def issued_by(leaf: x509.Certificate, root: x509.Certificate) -> bool:
    try:
        leaf.verify_directly_issued_by(root)
    except (ValueError, TypeError, Exception):
        return False
    return True


def swarm_root(cluster: Cluster) -> x509.Certificate:
    return x509.load_pem_x509_certificate(cluster.manager.docker("swarm", "ca").stdout.encode())


def assert_on_root(nodes: list[ClusterNode], root: x509.Certificate) -> None:
    for node in nodes:
        assert roots_of(node) == [root], f"{node.node_name} trusts {len(roots_of(node))} roots"
        assert issued_by(leaf_of(node), root), f"{node.node_name}'s certificate"


def test_rotate_moves_every_node_to_a_new_root_without_restarting_tasks(
    cluster: Cluster, node_factory: NodeFactory
) -> None:
    manager = cluster.manager
    old_root = swarm_root(cluster)
    old_token = cluster.join_token()
    manager.docker(
        "service",
        "create",
        "--detach",
        "--name",
        "steady",
        "--replicas",
        "6",
        "busybox",
        "sleep",
        "1000",
    )
    before = cluster.wait_converged("steady", 6)
    tasks_before = {t["ID"] for t in manager.api.tasks()}

    out = manager.docker("swarm", "ca", "--rotate", timeout=ROTATE_TIMEOUT_S).stdout
    new_root = swarm_root(cluster)
    assert new_root != old_root
    # the CLI's progress display, then the new root it printed
    assert "rotated TLS certificates" in out and "rotated CA certificates" in out, out
    assert out.rstrip().endswith(
        new_root.public_bytes(serialization.Encoding.PEM).decode().rstrip()
    ), out

    swarm = manager.api.inspect_swarm()
    assert swarm["RootRotationInProgress"] is False
    assert x509.load_pem_x509_certificate(swarm["TLSInfo"]["TrustRoot"].encode()) == new_root
    # every node reports what the CLI compares: the new issuer and the new root alone
    for n in cluster.node_objects():
        tls = n["Description"]["TLSInfo"]
        assert tls["CertIssuerPublicKey"] == swarm["TLSInfo"]["CertIssuerPublicKey"], n["ID"]
        assert tls["TrustRoot"] == swarm["TLSInfo"]["TrustRoot"], n["ID"]
    wait_until(lambda: _all_on(list(cluster.nodes.values()), new_root), what="nodes on new root")
    assert_on_root(list(cluster.nodes.values()), new_root)

    # no task restarted: the same tasks, the same processes
    assert {t["ID"] for t in manager.api.tasks()} == tasks_before
    assert cluster.wait_converged("steady", 6) == before
    for name in cluster.nodes:
        assert cluster.node_state(name) == "ready"

    # join tokens carry the new root's digest; the old one no longer joins
    token = cluster.join_token()
    m = TOKEN_RE.match(token)
    assert m and m["digest"] == digest36(new_root) != digest36(old_root)
    late = node_factory("node-late")
    refused = late.join(old_token, manager, check=False)
    assert "remote CA does not match fingerprint" in refused.stderr, refused
    cluster.join(late)
    assert_on_root([late], new_root)
    manager.docker("service", "scale", "--detach", "steady=8")
    cluster.wait_converged("steady", 8)


def _all_on(nodes: list[ClusterNode], root: x509.Certificate) -> bool:
    return all(roots_of(n) == [root] and issued_by(leaf_of(n), root) for n in nodes)


def make_root(tmp: Path) -> tuple[Path, Path, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "my-own-ca")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "ca.crt", tmp / "ca.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path, cert


def test_rotate_to_a_root_of_ones_own(cluster: Cluster, tmp_path: Path) -> None:
    cert_path, key_path, cert = make_root(tmp_path)
    manager = cluster.manager
    manager.docker(
        "swarm",
        "ca",
        "--rotate",
        "--ca-cert",
        str(cert_path),
        "--ca-key",
        str(key_path),
        "--quiet",
        timeout=ROTATE_TIMEOUT_S,
    )
    assert swarm_root(cluster) == cert
    wait_until(lambda: _all_on(list(cluster.nodes.values()), cert), what="nodes on own root")
    spec = manager.api.inspect_swarm()["Spec"]["CAConfig"]
    # dockerd shows neither the signing certificate nor its key
    assert "SigningCACert" not in spec and "SigningCAKey" not in spec, json.dumps(spec)
    # a certificate without its key needs an external CA, which shoal refuses
    (tmp_path / "other").mkdir()
    other, _, _ = make_root(tmp_path / "other")
    refused = manager.docker("swarm", "ca", "--rotate", "--ca-cert", str(other), check=False)
    assert "--ca-key" in refused.stderr, refused
