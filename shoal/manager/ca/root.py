"""The cluster's root CA and join tokens (SwarmKit's formats).

Token: `SWMTKN-1-<SHA-256 of the root certificate, base 36, 50 chars>-<16 random bytes,
base 36, 25 chars>`; the digest lets a joining node pin the root it is given.
"""

from __future__ import annotations

import base64
import datetime
import hmac
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shoal.pki import ca_digest, key_usage, new_join_token
from shoal.types.node import TLSInfo

ROOT_CN = "swarm-ca"
ROOT_VALIDITY = datetime.timedelta(days=20 * 365)
BACKDATE = datetime.timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class RootCA:
    cert_pem: bytes
    key_pem: bytes

    @classmethod
    def create(cls) -> RootCA:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ROOT_CN)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + ROOT_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                key_usage(cert_sign=True),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(
            cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    def digest(self) -> str:
        return ca_digest(self.cert_pem)

    def tls_info(self) -> TLSInfo:
        cert = self.cert
        return TLSInfo(
            trust_root=self.cert_pem.decode(),
            cert_issuer_subject=base64.b64encode(cert.subject.public_bytes()).decode(),
            cert_issuer_public_key=base64.b64encode(
                cert.public_key().public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            ).decode(),
        )

    def new_join_token(self) -> str:
        return new_join_token(self.cert_pem)


def token_matches(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())
