"""The cluster object (Docker's `Swarm`/`ClusterInfo`) and swarm requests."""

from __future__ import annotations

from typing import Any

import msgspec

from shoal.types.base import Duration, GoInt, Int64, Model, UInt32, UInt64, Version
from shoal.types.node import TLSInfo
from shoal.types.service import JoinTokens

DEFAULT_TASK_HISTORY = 5
DEFAULT_HEARTBEAT_PERIOD_NS = 5_000_000_000
DEFAULT_NODE_CERT_EXPIRY_NS = 90 * 24 * 3600 * 1_000_000_000
DEFAULT_DATA_PATH_PORT = 4789
DEFAULT_SUBNET_SIZE = 24


class OrchestrationConfig(Model):
    task_history_retention_limit: Int64 | None = None


class RaftConfig(Model):
    snapshot_interval: UInt64 | None = None
    keep_old_snapshots: UInt64 | None = None
    log_entries_for_slow_followers: UInt64 | None = None
    election_tick: GoInt | None = None
    heartbeat_tick: GoInt | None = None


class DispatcherConfig(Model):
    heartbeat_period: Duration | None = None


class CAConfig(Model):
    node_cert_expiry: Duration | None = None
    external_c_as: list[dict[str, Any]] | None = msgspec.field(default=None, name="ExternalCAs")
    signing_ca_cert: str | None = msgspec.field(default=None, name="SigningCACert")
    signing_ca_key: str | None = msgspec.field(default=None, name="SigningCAKey")
    force_rotate: UInt64 | None = None


class EncryptionConfig(Model):
    auto_lock_managers: bool | None = None


class SwarmSpec(Model):
    name: str | None = None
    labels: dict[str, str] | None = None
    orchestration: OrchestrationConfig | None = None
    raft: RaftConfig | None = None
    dispatcher: DispatcherConfig | None = None
    ca_config: CAConfig | None = msgspec.field(default=None, name="CAConfig")
    encryption_config: EncryptionConfig | None = None
    task_defaults: dict[str, Any] | None = None


def default_swarm_spec() -> SwarmSpec:
    """The spec `docker swarm init` ends up with when no flag is given."""
    return SwarmSpec(
        name="default",
        labels={},
        orchestration=OrchestrationConfig(task_history_retention_limit=DEFAULT_TASK_HISTORY),
        raft=RaftConfig(
            snapshot_interval=10000,
            keep_old_snapshots=0,
            log_entries_for_slow_followers=500,
            election_tick=10,
            heartbeat_tick=1,
        ),
        dispatcher=DispatcherConfig(heartbeat_period=DEFAULT_HEARTBEAT_PERIOD_NS),
        ca_config=CAConfig(node_cert_expiry=DEFAULT_NODE_CERT_EXPIRY_NS),
        task_defaults={},
        encryption_config=EncryptionConfig(auto_lock_managers=False),
    )


class Cluster(Model, kw_only=True):
    """Docker's `Swarm` object as `GET /swarm` returns it (ClusterInfo + JoinTokens)."""

    id: str = msgspec.field(name="ID")
    version: Version = Version()
    created_at: str = ""
    updated_at: str = ""
    spec: SwarmSpec = SwarmSpec()
    tls_info: TLSInfo = msgspec.field(default=TLSInfo(), name="TLSInfo")
    # dockerd always shows it (a default_factory is never omitted)
    root_rotation_in_progress: bool = msgspec.field(default_factory=bool)
    # null unless `swarm init --default-addr-pool` named pools (as dockerd shows it; the
    # allocator then uses 10.0.0.0/8); always present
    default_addr_pool: list[str] | None = msgspec.field(default_factory=type(None))
    subnet_size: int
    data_path_port: int
    join_tokens: JoinTokens = JoinTokens()


class SwarmInitRequest(Model):
    listen_addr: str | None = None
    advertise_addr: str | None = None
    data_path_addr: str | None = None
    data_path_port: UInt32 | None = None
    default_addr_pool: list[str] | None = None
    force_new_cluster: bool | None = None
    subnet_size: UInt32 | None = None
    spec: SwarmSpec | None = None


class SwarmJoinRequest(Model):
    listen_addr: str | None = None
    advertise_addr: str | None = None
    data_path_addr: str | None = None
    remote_addrs: list[str] | None = None
    join_token: str | None = None
    availability: str | None = None


class SwarmUnlockRequest(Model):
    unlock_key: str | None = None
