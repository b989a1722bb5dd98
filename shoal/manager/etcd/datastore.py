"""An external etcd as the manager's store (`shoal daemon --datastore-endpoint ...`,
as k3s's option): the store's etcd backend, opened under the cluster's own prefix,
with this manager's leadership as its fence.

Several managers may share it (docs/ha.md): each opens the store as a replica, and
campaigns (shoal/manager/leadership.py: the leader writes, the others follow and
forward writes). A restarted manager waits for its previous lease to expire before it
can lead again. The daemon's embedded members (shoal/daemon/embedded.py) are opened
the same way (`ClientConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from aetcd.utils import prefix_range_end

from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.etcdclient import FAILURES, EtcdClient, EtcdError, TLSFiles
from shoal.log import get_logger
from shoal.manager.election import Election
from shoal.manager.store.etcd import EtcdBackend

CLIENT_TIMEOUT_S = 10.0
# The election lease: a killed leader's key expires within it, so another manager
# leads within about ELECTION_TTL_S plus one campaign round.
ELECTION_TTL_S = 3
RESIGN_TIMEOUT_S = 3.0

log = get_logger("shoal.manager.etcd.datastore")


@dataclass(frozen=True, slots=True)
class DatastoreConfig:
    """`--datastore-endpoint` (one or more) and the PEM files of the client's TLS."""

    endpoints: list[str]
    cafile: Path
    certfile: Path
    keyfile: Path

    def client(self) -> EtcdClient:
        tls = TLSFiles(
            self.cafile.read_bytes(), self.certfile.read_bytes(), self.keyfile.read_bytes()
        )
        return EtcdClient(self.endpoints, tls, timeout=CLIENT_TIMEOUT_S)


class ClientConfig(Protocol):
    """Where the store's etcd is and how to dial it: `DatastoreConfig`, or the
    daemon's embedded members (shoal/daemon/embedded.py)."""

    @property
    def endpoints(self) -> list[str]: ...

    def client(self) -> EtcdClient: ...


def cluster_prefix(cluster_id: str) -> bytes:
    return f"/shoal/{cluster_id}/".encode()


class EtcdDatastore:
    """The backend (read, not led yet) and this manager's election."""

    def __init__(self, client: EtcdClient, backend: EtcdBackend, election: Election) -> None:
        self.client = client
        self.backend = backend
        self.election = election

    @classmethod
    async def open(
        cls, config: ClientConfig, cluster_id: str, candidate: str, clock: Clock = SYSTEM_CLOCK
    ) -> EtcdDatastore:
        """Read the store; `candidate` is what the election key says while this
        manager leads (shoal/manager/leadership.py Candidate)."""
        client = config.client()
        prefix = cluster_prefix(cluster_id)
        try:
            backend = EtcdBackend(client, prefix=prefix, clock=clock)
            await backend.open()
        except BaseException:
            await client.close()
            raise
        election = Election(client, candidate, prefix + b"election/leader", ELECTION_TTL_S, clock)
        log.info("store on etcd", endpoints=config.endpoints, prefix=prefix.decode())
        return cls(client, backend, election)

    async def close(self, clock: Clock = SYSTEM_CLOCK) -> None:
        """Resign (for at most RESIGN_TIMEOUT_S: without a quorum etcd does not
        answer, and the lease expires by itself within its TTL), then close."""
        try:
            await clock.wait_for(self.election.resign(), RESIGN_TIMEOUT_S)
        except TimeoutError:
            log.warning("resign unanswered; the lease expires by itself")
        await self.client.close()


async def wipe(config: DatastoreConfig, cluster_id: str) -> None:
    """Delete the cluster's keys (the swarm is left for good)."""
    client = config.client()
    prefix = cluster_prefix(cluster_id)
    try:
        await client.delete_range(prefix, prefix_range_end(prefix))
    except FAILURES as e:
        raise EtcdError(f"cannot remove the cluster's state from etcd: {e}") from e
    finally:
        await client.close()
