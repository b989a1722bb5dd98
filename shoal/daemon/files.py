"""A node's swarm files under its data dir (`NodeFiles`): what it remembers of its
swarm (swarm/state.json), its credentials and the cluster's root CA (swarm/certificates).
Private keys on disk are sealed by the KEK while autolock is on, as Swarm does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from shoal.daemon.config import SwarmState
from shoal.errors import SwarmLocked
from shoal.manager.ca.root import RootCA
from shoal.manager.keys import ManagerKeys
from shoal.pki import NODE_KEY_FILE, ROOT_CA_FILE, NodeCredentials

ROOT_KEY_FILE = "swarm-root-ca.key"


class NodeFiles:
    """`keys`: the manager's DEK/KEK as the daemon holds them now (None on a worker)."""

    def __init__(self, data_dir: Path, keys: Callable[[], ManagerKeys | None]) -> None:
        self._data_dir = data_dir
        self._keys = keys

    @property
    def swarm_dir(self) -> Path:
        return self._data_dir / "swarm"

    @property
    def certs_dir(self) -> Path:
        return self.swarm_dir / "certificates"

    @property
    def root_key_path(self) -> Path:
        return self.certs_dir / ROOT_KEY_FILE

    def load_state(self) -> SwarmState | None:
        path = self.swarm_dir / "state.json"
        if not path.exists():
            return None
        return SwarmState(**json.loads(path.read_text()))

    def save_state(self, state: SwarmState) -> None:
        self.swarm_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.swarm_dir / "state.json.tmp"
        tmp.write_text(json.dumps(state.__dict__))
        tmp.replace(self.swarm_dir / "state.json")

    def root_ca(self) -> RootCA:
        return RootCA(
            (self.certs_dir / ROOT_CA_FILE).read_bytes(),
            self.read_private_key(self.root_key_path),
        )

    def read_private_key(self, path: Path) -> bytes:
        pem = path.read_bytes()
        if b"ENCRYPTED" not in pem:
            return pem
        keys = self._keys()
        if keys is None or keys.kek is None:
            raise SwarmLocked()
        key = serialization.load_pem_private_key(pem, password=keys.kek)
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def sealed(self, pem: bytes) -> bytes:
        """A private key as it goes to disk: encrypted by the KEK with autolock on."""
        keys = self._keys()
        if keys is None or not keys.autolock or keys.kek is None:
            return pem
        key = serialization.load_pem_private_key(pem, password=None)
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(keys.kek),
        )

    def write_private_key(self, path: Path, pem: bytes) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.touch(mode=0o600)
        tmp.chmod(0o600)
        tmp.write_bytes(self.sealed(pem))
        tmp.replace(path)

    def write_root_key(self, pem: bytes) -> None:
        self.write_private_key(self.root_key_path, pem)

    def save_creds(self, creds: NodeCredentials) -> None:
        NodeCredentials(creds.ca_pem, creds.cert_pem, self.sealed(creds.key_pem)).save(
            self.certs_dir
        )

    def load_creds(self) -> NodeCredentials:
        creds = NodeCredentials.load(self.certs_dir)
        return NodeCredentials(
            creds.ca_pem, creds.cert_pem, self.read_private_key(self.certs_dir / NODE_KEY_FILE)
        )
