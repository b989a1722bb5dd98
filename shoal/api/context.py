"""What the API needs from the daemon that serves it (the daemon implements this)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Protocol

import aiohttp

from shoal.manager.manager import Manager
from shoal.metrics import Metrics
from shoal.types.swarm import SwarmInitRequest, SwarmJoinRequest


class DaemonContext(Protocol):
    node_name: str
    runtime: str
    data_dir: Path
    engine_labels: dict[str, str]
    # The Docker Engine (unix:///path or tcp://addr:port) whose own endpoints the API
    # passes through, under the docker runtime; None otherwise.
    engine_host: str | None
    # The daemon's metrics (`/metrics`, and the API's latency).
    metrics: Metrics

    @property
    def manager(self) -> Manager | None:
        """The running manager, or None when this node is not in a swarm."""
        ...

    @property
    def node_id(self) -> str | None: ...

    @property
    def node_addr(self) -> str: ...

    @property
    def manager_addr(self) -> str: ...

    @property
    def remote_managers(self) -> list[str]:
        """Cluster ports of the managers this node talks to."""
        ...

    def running_tasks(self) -> tuple[int, int]:
        """(tasks running on this node, tasks known on this node)."""
        ...

    def dependency_counts(self) -> dict[str, int]:
        """This node's agent: secrets and configs held now and received since it
        started (`secrets_held`, `secrets_received`, `configs_held`,
        `configs_received`); empty without an agent."""
        ...

    async def swarm_init(self, request: SwarmInitRequest) -> str: ...

    async def swarm_join(self, request: SwarmJoinRequest) -> None: ...

    async def swarm_leave(self, force: bool) -> None: ...

    @property
    def locked(self) -> bool:
        """A manager with autolock, restarted and not unlocked yet."""
        ...

    async def swarm_unlock(self, key: str) -> None: ...

    def unlock_key(self) -> str:
        """The unlock key with autolock on, else ""."""
        ...

    async def set_autolock(self, on: bool, rotate: bool) -> None: ...

    # several managers (docs/ha.md) ------------------------------------------------------
    async def store_moved(self) -> None:
        """Wait while the manager's store moves from SQLite to etcd (a second manager
        appears: daemon/migrate.py); at once otherwise."""
        ...

    async def write_leader(self, wait_s: float) -> str | None:
        """Where a swarm write goes: None when this daemon takes it (it leads, or is
        the only manager), else the leader's cluster port; waits up to `wait_s` for a
        leader, then raises NoLeader."""
        ...

    def manager_client_tls(self) -> ssl.SSLContext:
        """A client context presenting this manager's certificate (cluster port)."""
        ...

    def forward_http(self) -> aiohttp.ClientSession:
        """The client session (connection pool) writes forwarded to the leader use."""
        ...

    @property
    def leader_id(self) -> str | None:
        """With several managers, the leader's node ID (None: one manager, or none
        leads); what node ls and info show as Leader."""
        ...

    @property
    def several_managers(self) -> bool:
        """Managers on a shared store: ManagerStatus is the election's."""
        ...
