"""An external etcd as the manager's store (`shoal daemon --datastore-endpoint ...`,
as k3s's option): the store's etcd backend, opened under the cluster's own prefix,
with this manager's leadership as its fence.

This is the explicit, opt-in path while issue 13 is under way (docs/ha.md): one
manager writes; it campaigns when the store opens (a restarted manager waits for its
previous lease to expire), and campaigns again if it ever loses the leadership (its
commits are refused meanwhile, and the sequencing compare keeps a stale replica from
writing). The embedded default stays SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path

from aetcd.utils import prefix_range_end

from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.etcdclient import FAILURES, EtcdClient, EtcdError, TLSFiles
from shoal.log import get_logger
from shoal.manager.election import DEFAULT_TTL_S, Election
from shoal.manager.store.etcd import EtcdBackend

CLIENT_TIMEOUT_S = 10.0

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


def cluster_prefix(cluster_id: str) -> bytes:
    return f"/shoal/{cluster_id}/".encode()


class EtcdDatastore:
    """The backend, the election, and the task that keeps the fence current."""

    def __init__(self, client: EtcdClient, backend: EtcdBackend, election: Election) -> None:
        self.client = client
        self.backend = backend
        self.election = election
        self._holder: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls, config: DatastoreConfig, node_id: str, cluster_id: str, clock: Clock = SYSTEM_CLOCK
    ) -> EtcdDatastore:
        """Read the store and lead it (waits while another holds the leadership)."""
        client = config.client()
        prefix = cluster_prefix(cluster_id)
        try:
            backend = EtcdBackend(client, prefix=prefix, clock=clock)
            await backend.open()
            election = Election(client, node_id, prefix + b"election/leader", DEFAULT_TTL_S, clock)
            backend.set_fence(await election.campaign())
        except BaseException:
            await client.close()
            raise
        store = cls(client, backend, election)
        store._holder = asyncio.create_task(store._hold())
        log.info("store on etcd", endpoints=config.endpoints, prefix=prefix.decode())
        return store

    async def _hold(self) -> None:
        """Campaign again whenever the leadership is lost."""
        while True:
            await self.election.lost.wait()
            self.backend.set_fence(None)
            log.warning("leadership lost; campaigning again")
            self.backend.set_fence(await self.election.campaign())

    async def close(self) -> None:
        if self._holder is not None:
            self._holder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._holder
        await self.election.resign()
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
