"""The certificate an etcd member serves and dials with: a manager's node certificate
(OU `swarm-manager`, DNS name `swarm-manager`) that also names the member's IP
addresses, since etcd's peers and clients dial it by address. The member accepts only
peers and clients whose certificate names `swarm-manager` (etcd's
`--peer-cert-allowed-hostname` / `--client-cert-allowed-hostname`): a worker's
certificate, from the same CA, does not open etcd."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from shoal.etcdclient import TLSFiles
from shoal.manager.ca.root import RootCA
from shoal.manager.ca.signer import node_cert_expiry, sign_node_certificate
from shoal.pki import key_pem, make_csr, new_key


def member_tls(
    root: RootCA, node_id: str, cluster_id: str, ips: Sequence[str], expiry_ns: int | None = None
) -> TLSFiles:
    """A fresh key and a manager certificate for it naming `ips`."""
    key = new_key()
    cert = sign_node_certificate(
        root, make_csr(key), node_id, "manager", cluster_id, node_cert_expiry(expiry_ns), ips=ips
    )
    return TLSFiles(root.cert_pem, cert, key_pem(key))


@dataclass(frozen=True, slots=True)
class TLSPaths:
    ca: Path
    cert: Path
    key: Path


def write_tls(tls: TLSFiles, directory: Path) -> TLSPaths:
    """The PEMs as the files etcd reads (the key readable by its owner only)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    paths = TLSPaths(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    paths.ca.write_bytes(tls.ca_pem)
    paths.cert.write_bytes(tls.cert_pem)
    paths.key.touch(mode=0o600)
    paths.key.write_bytes(tls.key_pem)
    return paths
