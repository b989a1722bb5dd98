"""Certificates and TLS shared by managers and agents (no side imports the other).

Node certificates are SwarmKit's: CN = node ID, OU = role (`swarm-manager` or
`swarm-worker`), O = cluster ID, ECDSA P-256. Every TLS context here verifies peers
against the cluster's root only, never the system store.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import secrets
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shoal.ids import to_base36

MANAGER_OU = "swarm-manager"
WORKER_OU = "swarm-worker"
ROLE_OU = {"manager": MANAGER_OU, "worker": WORKER_OU}
OU_ROLE = {v: k for k, v in ROLE_OU.items()}
# Managers' certificates carry this name; agents check it when they dial a manager.
MANAGER_SERVER_NAME = "swarm-manager"
TOKEN_PREFIX = "SWMTKN"
TOKEN_VERSION = "1"
DIGEST_LEN = 50
SECRET_LEN = 25

ROOT_CA_FILE = "swarm-root-ca.crt"
NODE_CERT_FILE = "swarm-node.crt"
NODE_KEY_FILE = "swarm-node.key"


class TokenError(ValueError):
    pass


class RootMismatch(ValueError):
    """The root a manager sent is not the one the join token names."""


class PeerNotManager(ssl.SSLCertVerificationError):
    """The peer's certificate chains to the root but is not a manager's of the expected
    cluster: it fails the handshake like any other certificate that does not verify."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is on the other end of a mutual-TLS connection."""

    node_id: str
    role: str  # "manager" | "worker"
    cluster_id: str


@dataclass(frozen=True, slots=True)
class JoinToken:
    digest: str
    secret: str


def parse_token(token: str) -> JoinToken:
    parts = token.strip().split("-")
    if (
        len(parts) != 4
        or parts[0] != TOKEN_PREFIX
        or parts[1] != TOKEN_VERSION
        or len(parts[2]) != DIGEST_LEN
        or len(parts[3]) != SECRET_LEN
    ):
        raise TokenError("invalid join token")
    return JoinToken(digest=parts[2], secret=parts[3])


def new_join_token(ca_pem: bytes) -> str:
    """A fresh join token for the cluster whose root is `ca_pem`."""
    secret = to_base36(int.from_bytes(secrets.token_bytes(16), "big"), SECRET_LEN)
    return f"{TOKEN_PREFIX}-{TOKEN_VERSION}-{ca_digest(ca_pem)}-{secret}"


def key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    """Key usage of the root (signs certificates) or of a node (TLS both ways)."""
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=not cert_sign,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def ca_digest(cert_pem: bytes) -> str:
    """SHA-256 of the root certificate (DER) in base 36, as join tokens carry it."""
    return _der_digest(single_certificate(cert_pem).public_bytes(serialization.Encoding.DER))


def _der_digest(der: bytes) -> str:
    return to_base36(int.from_bytes(hashlib.sha256(der).digest(), "big"), DIGEST_LEN)


def single_certificate(pem: bytes) -> x509.Certificate:
    """The one certificate `pem` holds: ValueError if it holds several, or anything
    besides it (a bundle would smuggle a second CA past a digest of the first)."""
    certs = x509.load_pem_x509_certificates(pem)
    if len(certs) != 1:
        raise ValueError(f"expected one certificate, got {len(certs)}")
    if certs[0].public_bytes(serialization.Encoding.PEM).strip() != pem.strip():
        raise ValueError("unexpected data beside the certificate")
    return certs[0]


def pinned_root(pem: bytes, digest: str) -> bytes:
    """The root CA a joining node may trust: exactly one certificate whose DER hashes to
    the join token's digest, returned as PEM made from that very DER.
    ValueError when `pem` is not one certificate; RootMismatch when the digest differs."""
    der = single_certificate(pem).public_bytes(serialization.Encoding.DER)
    if not hmac.compare_digest(_der_digest(der), digest):
        raise RootMismatch(digest)
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_csr(key: ec.EllipticCurvePrivateKey) -> bytes:
    """A CSR with no identity: the CA decides CN, OU and O."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def identity_of(cert: x509.Certificate) -> Identity | None:
    def attr(oid: x509.ObjectIdentifier) -> str | None:
        values = cert.subject.get_attributes_for_oid(oid)
        value = values[0].value if values else None
        return value if isinstance(value, str) else None

    cn, ou, o = (
        attr(NameOID.COMMON_NAME),
        attr(NameOID.ORGANIZATIONAL_UNIT_NAME),
        attr(NameOID.ORGANIZATION_NAME),
    )
    if not cn or not o or ou not in OU_ROLE:
        return None
    return Identity(node_id=cn, role=OU_ROLE[ou], cluster_id=o)


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> Identity | None:
    """The verified peer certificate's identity (None: the peer sent no certificate)."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    return identity_of(x509.load_der_x509_certificate(der))


def cert_validity(cert_pem: bytes) -> tuple[datetime.datetime, datetime.datetime]:
    cert = x509.load_pem_x509_certificate(cert_pem)
    return cert.not_valid_before_utc, cert.not_valid_after_utc


def leaf_issuer(cert_pem: bytes, ca_pem: bytes) -> x509.Certificate | None:
    """The certificate that issued the leaf of `cert_pem` (a leaf, maybe followed by
    intermediates): the intermediate sent beside it, else the root of `ca_pem` that
    signed it. None when neither did."""
    chain = x509.load_pem_x509_certificates(cert_pem)
    leaf = chain[0]
    candidates = chain[1:] + (x509.load_pem_x509_certificates(ca_pem) if ca_pem.strip() else [])
    for c in candidates:
        if c.subject != leaf.issuer:
            continue
        try:
            leaf.verify_directly_issued_by(c)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return c
    return None


def _load_chain(ctx: ssl.SSLContext, cert_pem: bytes, key_pem_bytes: bytes) -> None:
    # ssl wants files: write them to a private temporary directory for the load only.
    with tempfile.TemporaryDirectory(prefix="shoal-tls-") as d:
        cert_path, key_path = Path(d) / "c.pem", Path(d) / "k.pem"
        cert_path.write_bytes(cert_pem)
        key_path.touch(mode=0o600)
        key_path.write_bytes(key_pem_bytes)
        ctx.load_cert_chain(cert_path, key_path)


def server_context(ca_pem: bytes, cert_pem: bytes, key_pem_bytes: bytes) -> ssl.SSLContext:
    """The cluster port: a client certificate is optional at the TLS layer (a joining
    node has none yet) but, when sent, must chain to the cluster root; routes then
    require an identity (see the cluster API's access table)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cadata=ca_pem.decode())
    ctx.verify_mode = ssl.CERT_OPTIONAL
    _load_chain(ctx, cert_pem, key_pem_bytes)
    return ctx


def client_context(
    ca_pem: bytes | None,
    cert_pem: bytes | None = None,
    key_pem_bytes: bytes | None = None,
    cluster_id: str | None = None,
) -> ssl.SSLContext:
    """Dialling a manager: the server's certificate must chain to `ca_pem` and be a
    manager's (OU `swarm-manager`) of `cluster_id` (any cluster of that root while
    joining, when the ID is not known yet). With `ca_pem` None the server is not
    verified at all: only for fetching the root, whose digest the caller then checks
    against the join token."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_pem is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cadata=ca_pem.decode())
        ctx.sslobject_class = _manager_only(cluster_id)
    if cert_pem is not None and key_pem_bytes is not None:
        _load_chain(ctx, cert_pem, key_pem_bytes)
    return ctx


def require_manager(ident: Identity | None, cluster_id: str | None) -> Identity:
    """PeerNotManager unless `ident` is a manager's (of `cluster_id`, if given)."""
    if ident is None or ident.role != "manager":
        raise PeerNotManager("the peer's certificate is not a manager's")
    if cluster_id is not None and ident.cluster_id != cluster_id:
        raise PeerNotManager("the peer's certificate is from another cluster")
    return ident


def _manager_only(cluster_id: str | None) -> type[ssl.SSLObject]:
    """An SSLObject that, once the chain has verified, also requires the peer to be a
    manager: the chain alone admits every worker of the cluster too (asyncio, and so
    aiohttp, make their TLS objects from the context's `sslobject_class`)."""

    class ManagerOnly(ssl.SSLObject):
        def do_handshake(self) -> None:
            super().do_handshake()
            require_manager(peer_identity(self), cluster_id)

    return ManagerOnly


@dataclass(frozen=True, slots=True)
class NodeCredentials:
    """A node's root, certificate and key, as kept in `<data-dir>/swarm/certificates`."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    @property
    def identity(self) -> Identity:
        ident = identity_of(x509.load_pem_x509_certificate(self.cert_pem))
        assert ident is not None
        return ident

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / ROOT_CA_FILE).write_bytes(self.ca_pem)
        _write_atomic(directory / NODE_CERT_FILE, self.cert_pem, 0o600)
        _write_atomic(directory / NODE_KEY_FILE, self.key_pem, 0o600)

    @classmethod
    def load(cls, directory: Path) -> NodeCredentials:
        return cls(
            (directory / ROOT_CA_FILE).read_bytes(),
            (directory / NODE_CERT_FILE).read_bytes(),
            (directory / NODE_KEY_FILE).read_bytes(),
        )

    def server_context(self) -> ssl.SSLContext:
        return server_context(self.ca_pem, self.cert_pem, self.key_pem)

    def client_context(self) -> ssl.SSLContext:
        """Dialling a manager of this node's cluster."""
        return client_context(self.ca_pem, self.cert_pem, self.key_pem, self.identity.cluster_id)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.touch(mode=mode)
    tmp.chmod(mode)
    tmp.write_bytes(data)
    tmp.replace(path)
