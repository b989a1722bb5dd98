"""Root CA rotation (`docker swarm ca --rotate`), as SwarmKit does it.

1. `swarm update` with a new `CAConfig.ForceRotate` (or `SigningCACert`/`SigningCAKey`)
   starts it: a new root (generated, or the one given), and that root's certificate
   cross-signed by the old root. The cluster keeps trusting the old root
   (`TLSInfo.TrustRoot`) while certificates are issued by the new one
   (`TLSInfo.CertIssuer*`, as dockerd shows them) with the cross-signed certificate as
   intermediate, so a node that still trusts only the old root accepts them.
   `RootRotationInProgress` is true.
2. Every node is told, with each heartbeat ack of its session, what it should trust
   (both roots) and whether its certificate must be renewed (its issuer is not the new
   root). It trusts both, renews, and reports its TLS state (`Description.TLSInfo`).
3. Once every node holds a certificate from the new root *and* trusts the new root, the
   reconciler finishes: the new root is the cluster's only root, join tokens are made
   again (their digest is the new root's), and nodes are told to drop the old root.

The CLI's progress display reads just this: `GET /swarm` (TLSInfo,
RootRotationInProgress) and each node's `Description.TLSInfo`.
"""

from __future__ import annotations

import asyncio
import datetime
from dataclasses import dataclass

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.errors import Internal, invalid_argument
from shoal.log import get_logger
from shoal.manager.ca.root import RootCA
from shoal.manager.loops import LoopStats, supervise
from shoal.manager.store import ReadTx, Store, Tx
from shoal.pki import new_join_token
from shoal.types.meta import RootRotation
from shoal.types.node import TLSInfo
from shoal.types.service import JoinTokens
from shoal.types.swarm import Cluster

MSG_KEY_WITHOUT_CERT = "the signing CA key was given without its certificate"
MSG_CERT_WITHOUT_KEY = (
    "a signing CA certificate needs its key: external CAs are not supported, so the "
    "cluster must hold the key of the root it signs with"
)
MSG_NOT_A_CA = "the signing CA certificate is not a CA certificate"
MSG_KEY_MISMATCH = "the signing CA certificate and key do not match"
MSG_EXPIRED = "the signing CA certificate is expired or not yet valid"

log = get_logger("shoal.manager.ca.rotation")


@dataclass(frozen=True, slots=True)
class Signer:
    """What signs node certificates now: the root (and key) and the chain to send
    beside each leaf (the cross-signed intermediate during a rotation, else nothing)."""

    root: RootCA
    chain: bytes = b""


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def given_root(cert_pem: str, key_pem: str) -> RootCA:
    """The root `swarm ca --rotate --ca-cert --ca-key` brings, checked."""
    if not cert_pem:
        raise invalid_argument(MSG_KEY_WITHOUT_CERT)
    if not key_pem:
        raise invalid_argument(MSG_CERT_WITHOUT_KEY)
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except ValueError as e:
        raise invalid_argument(f"invalid signing CA certificate or key: {e}") from e
    try:
        ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        ca = False
    if not ca:
        raise invalid_argument(MSG_NOT_A_CA)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise invalid_argument("the signing CA key must be an ECDSA key")
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
        raise invalid_argument(MSG_KEY_MISMATCH)
    now = datetime.datetime.now(datetime.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise invalid_argument(MSG_EXPIRED)
    return RootCA(
        _pem(cert),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def cross_sign(old: RootCA, new: RootCA) -> bytes:
    """The new root's certificate (its subject, key and validity) issued by the old
    root: the intermediate that chains certificates of the new root to the old one."""
    cert = new.cert
    old_key = serialization.load_pem_private_key(old.key_pem, password=None)
    assert isinstance(old_key, ec.EllipticCurvePrivateKey)
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(old.cert.subject)
        .public_key(cert.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(min(cert.not_valid_after_utc, old.cert.not_valid_after_utc))
    )
    for ext in cert.extensions:
        if isinstance(ext.value, x509.AuthorityKeyIdentifier):
            continue
        builder = builder.add_extension(ext.value, ext.critical)
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(old.cert.public_key()),  # type: ignore[arg-type]
        critical=False,
    )
    return _pem(builder.sign(old_key, hashes.SHA256()))


def current_root(view: ReadTx, on_disk: RootCA | None = None) -> RootCA:
    """The cluster's root and its key, as the store keeps them (`on_disk`, the
    certificates directory's, only until the store has adopted it: `adopt_root`)."""
    cluster, meta = view.cluster(), view.cluster_meta()
    if cluster is None or not meta.root_key:
        if on_disk is None:
            raise Internal("the cluster's root CA key is not in the store")
        return on_disk
    return RootCA(cluster.tls_info.trust_root.encode(), meta.root_key.encode())


def adopt_root(tx: Tx, root: RootCA) -> None:
    """Keep the root's key beside the cluster (a swarm made before the store held it)."""
    cluster, meta = tx.cluster(), tx.cluster_meta()
    if cluster is None or meta.root_key:
        return
    tx.update(cluster, msgspec.structs.replace(meta, root_key=root.key_pem.decode()))


def signer(view: ReadTx, on_disk: RootCA | None = None) -> Signer:
    rotation = view.cluster_meta().rotation
    if rotation is None:
        return Signer(current_root(view, on_disk))
    return Signer(
        RootCA(rotation.ca_cert.encode(), rotation.ca_key.encode()),
        rotation.cross_signed_ca_cert.encode(),
    )


def start(
    tx: Tx, cluster: Cluster, old: RootCA, new: RootCA, cross_signed: bytes, forced: int
) -> Cluster:
    """Record a rotation to `new` in `cluster` (written by the caller, whose
    transaction this is): the cluster's issuer becomes the new root, its trust root
    stays the old one until every node has moved."""
    meta = tx.cluster_meta()
    issuer = new.tls_info()
    tls = TLSInfo(
        trust_root=old.cert_pem.decode(),
        cert_issuer_subject=issuer.cert_issuer_subject,
        cert_issuer_public_key=issuer.cert_issuer_public_key,
    )
    tx.update(
        msgspec.structs.replace(cluster, tls_info=tls, root_rotation_in_progress=True),
        msgspec.structs.replace(
            meta,
            root_key=meta.root_key or old.key_pem.decode(),
            rotation=RootRotation(
                ca_cert=new.cert_pem.decode(),
                ca_key=new.key_pem.decode(),
                cross_signed_ca_cert=cross_signed.decode(),
            ),
            last_forced_rotation=forced,
        ),
    )
    cur = tx.cluster()
    assert cur is not None
    return cur


def _certs(pem: str) -> set[bytes]:
    if not pem.strip():
        return set()
    try:
        return {
            c.public_bytes(serialization.Encoding.DER)
            for c in x509.load_pem_x509_certificates(pem.encode())
        }
    except ValueError:
        return set()


@dataclass(frozen=True, slots=True)
class Directive:
    """What a node must do: trust `trust_root` (a PEM bundle), and renew its
    certificate when `renew`."""

    trust_root: str
    renew: bool


def desired_trust(view: ReadTx) -> str:
    cluster = view.cluster()
    if cluster is None:
        return ""
    rotation = view.cluster_meta().rotation
    root = cluster.tls_info.trust_root
    return root if rotation is None else root + rotation.ca_cert


def directive(view: ReadTx, node_id: str) -> Directive | None:
    """None when the node's reported TLS state is what the cluster wants."""
    cluster, node = view.cluster(), view.get_node(node_id)
    if cluster is None or node is None or node.description.tls_info is None:
        return None
    have = node.description.tls_info
    want = cluster.tls_info
    renew = (have.cert_issuer_subject, have.cert_issuer_public_key) != (
        want.cert_issuer_subject,
        want.cert_issuer_public_key,
    )
    trust = desired_trust(view)
    # (the same text first: every heartbeat of every node asks, and parsing both
    # bundles is what costs)
    if not renew and (have.trust_root == trust or _certs(have.trust_root) == _certs(trust)):
        return None
    return Directive(trust_root=trust, renew=renew)


def _node_moved(view: ReadTx, tls: TLSInfo | None, new_root: str) -> bool:
    cluster = view.cluster()
    if tls is None or cluster is None:
        return False
    want = cluster.tls_info
    return (
        tls.cert_issuer_subject == want.cert_issuer_subject
        and tls.cert_issuer_public_key == want.cert_issuer_public_key
        and _certs(new_root) <= _certs(tls.trust_root)
    )


def finish(tx: Tx) -> bool:
    """Drop the old root once every node has a certificate of the new one and trusts
    it: the new root alone, new join tokens. False when some node has not moved."""
    cluster, meta = tx.cluster(), tx.cluster_meta()
    if cluster is None or meta.rotation is None:
        return False
    rotation = meta.rotation
    if not all(_node_moved(tx, n.description.tls_info, rotation.ca_cert) for n in tx.nodes()):
        return False
    root = RootCA(rotation.ca_cert.encode(), rotation.ca_key.encode())
    tx.update(
        msgspec.structs.replace(
            cluster,
            tls_info=root.tls_info(),
            root_rotation_in_progress=False,
            join_tokens=JoinTokens(
                worker=new_join_token(root.cert_pem), manager=new_join_token(root.cert_pem)
            ),
        ),
        msgspec.structs.replace(meta, root_key=rotation.ca_key, rotation=None),
    )
    return True


async def record_node_tls(store: Store, node_id: str, tls: TLSInfo) -> None:
    """A node reported what it trusts and who issued its certificate."""

    def write(tx: Tx) -> None:
        node = tx.get_node(node_id)
        if node is None or node.description.tls_info == tls:
            return
        tx.update(
            msgspec.structs.replace(
                node, description=msgspec.structs.replace(node.description, tls_info=tls)
            )
        )

    await store.update(write)


class RotationReconciler:
    """Finishes a root rotation once every node has moved to the new root (SwarmKit's
    ca/reconciler.go; nodes learn what to do from their sessions, see `directive`)."""

    def __init__(self, store: Store, clock: Clock = SYSTEM_CLOCK) -> None:
        self._store = store
        self._clock = clock
        self._stopped = asyncio.Event()
        self._stats = LoopStats()
        self.finished = 0

    async def run(self) -> None:
        await supervise("root-rotation", self._run_once, self._stopped, self._stats, self._clock)

    async def _run_once(self) -> None:
        watcher = self._store.watch("node", "cluster")
        try:
            while not self._stopped.is_set():
                view = self._store.view()
                if view.cluster_meta().rotation is not None and await self._store.update(finish):
                    self.finished += 1
                    log.info("root CA rotation finished")
                self._stats.rounds += 1
                await watcher.__anext__()
                watcher.get_nowait_all()
        finally:
            watcher.close()

    def stop(self) -> None:
        self._stopped.set()

    def statistics(self) -> dict[str, int]:
        return {"finished": self.finished, **self._stats.as_dict()}
