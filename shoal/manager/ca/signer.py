"""Issuing node certificates from CSRs, signed by the cluster root."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shoal.errors import CSRError
from shoal.manager.ca.root import RootCA
from shoal.pki import MANAGER_OU, MANAGER_SERVER_NAME, ROLE_OU, key_usage
from shoal.types.swarm import DEFAULT_NODE_CERT_EXPIRY_NS

MIN_NODE_CERT_EXPIRY = datetime.timedelta(hours=1)
# The curves a node's key may use (SwarmKit issues P-256; P-384 is as strong or more).
ALLOWED_CURVES = (ec.SECP256R1, ec.SECP384R1)
BACKDATE = datetime.timedelta(hours=1)
CA_NAME = "swarm-ca"  # SwarmKit's managers also answer to the CA's name


def node_cert_expiry(expiry_ns: int | None) -> datetime.timedelta:
    """SwarmKit: values under the 1 h minimum fall back to the 90-day default."""
    expiry = datetime.timedelta(microseconds=(expiry_ns or DEFAULT_NODE_CERT_EXPIRY_NS) // 1000)
    if expiry < MIN_NODE_CERT_EXPIRY:
        return datetime.timedelta(microseconds=DEFAULT_NODE_CERT_EXPIRY_NS // 1000)
    return expiry


def sign_node_certificate(
    root: RootCA,
    csr_pem: bytes,
    node_id: str,
    role: str,
    cluster_id: str,
    expiry: datetime.timedelta,
    ips: Sequence[str] = (),
) -> bytes:
    """A node certificate for `csr_pem`'s key. Its names are the CA's decision alone
    (role, node ID; managers also `swarm-manager` and `swarm-ca`): nothing the client
    sends reaches them, so no client can name itself a manager. `ips`: IP addresses
    the certificate also names (a manager's etcd member serves on its address)."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as e:
        raise CSRError(f"invalid certificate signing request: {e}") from e
    if not csr.is_signature_valid:
        raise CSRError("invalid certificate signing request: bad signature")
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise CSRError("invalid certificate signing request: an ECDSA key is required")
    if not isinstance(public_key.curve, ALLOWED_CURVES):
        raise CSRError(
            f"invalid certificate signing request: curve {public_key.curve.name} is not "
            "allowed (P-256 or P-384)"
        )
    ou = ROLE_OU[role]
    ca_cert = root.cert
    ca_key = serialization.load_pem_private_key(root.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    dns = [ou, node_id]
    if ou == MANAGER_OU:
        dns += [MANAGER_SERVER_NAME, CA_NAME]
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dict.fromkeys(dns)]
    if ips and ou != MANAGER_OU:
        raise CSRError("only a manager's certificate names IP addresses")
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in dict.fromkeys(ips)]
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_id),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
                    x509.NameAttribute(NameOID.COMMON_NAME, node_id),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + expiry)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            key_usage(cert_sign=False),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)
