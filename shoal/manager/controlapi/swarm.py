"""Cluster settings behind `docker swarm init` and `docker swarm update` (the spec's
checks are SwarmKit's `validateClusterSpec`, with its messages), and the start of a root
CA rotation (`docker swarm ca --rotate`; see manager/ca/rotation.py)."""

from __future__ import annotations

import datetime

import msgspec
from cryptography.hazmat.primitives import hashes

from shoal.errors import NotManager, OutOfSequence, invalid_argument
from shoal.manager.allocator import ipam
from shoal.manager.ca import rotation
from shoal.manager.ca.root import RootCA
from shoal.manager.ca.signer import MIN_NODE_CERT_EXPIRY
from shoal.manager.store import Store, Tx
from shoal.pki import new_join_token
from shoal.types.service import JoinTokens
from shoal.types.swarm import (
    DEFAULT_DATA_PATH_PORT,
    DEFAULT_SUBNET_SIZE,
    CAConfig,
    Cluster,
    DispatcherConfig,
    OrchestrationConfig,
    RaftConfig,
    SwarmInitRequest,
    SwarmSpec,
    default_swarm_spec,
)

MSG_EXTERNAL_CA = (
    "external CAs are not supported: the cluster's own root CA signs every node "
    "certificate (remove --external-ca)"
)
MSG_NEGATIVE_HEARTBEAT = "heartbeat time period cannot be a negative duration"


def _go_duration(d: datetime.timedelta) -> str:
    """A duration as Go prints it (SwarmKit's messages): 1h0m0s."""
    total = int(d.total_seconds())
    h, rest = divmod(total, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}h{m}m{sec}s" if h else f"{m}m{sec}s" if m else f"{sec}s"


MSG_MIN_CERT_EXPIRY = f"minimum certificate expiry time is: {_go_duration(MIN_NODE_CERT_EXPIRY)}"


def init_spec(given: SwarmSpec | None) -> SwarmSpec:
    """The spec `swarm init` starts with: SwarmKit's defaults, with what the client set
    to something other than zero (dockerd's MergeSwarmSpecToGRPC: at init a zero means
    "the default", unlike at update, where the client sends the whole spec)."""
    spec = default_swarm_spec()
    if given is None:
        return spec
    d_orch = spec.orchestration or OrchestrationConfig()
    d_raft = spec.raft or RaftConfig()
    d_disp = spec.dispatcher or DispatcherConfig()
    d_ca = spec.ca_config or CAConfig()
    orch = given.orchestration or OrchestrationConfig()
    raft = given.raft or RaftConfig()
    disp = given.dispatcher or DispatcherConfig()
    ca = given.ca_config or CAConfig()

    def nonzero(value: int | None, default: int | None) -> int | None:
        return value if value else default

    return msgspec.structs.replace(
        spec,
        name=given.name or spec.name,
        labels=given.labels if given.labels else spec.labels,
        orchestration=OrchestrationConfig(
            task_history_retention_limit=orch.task_history_retention_limit
            if orch.task_history_retention_limit is not None
            else d_orch.task_history_retention_limit
        ),
        raft=RaftConfig(
            snapshot_interval=nonzero(raft.snapshot_interval, d_raft.snapshot_interval),
            keep_old_snapshots=raft.keep_old_snapshots
            if raft.keep_old_snapshots is not None
            else d_raft.keep_old_snapshots,
            log_entries_for_slow_followers=nonzero(
                raft.log_entries_for_slow_followers,
                d_raft.log_entries_for_slow_followers,
            ),
            election_tick=nonzero(raft.election_tick, d_raft.election_tick),
            heartbeat_tick=nonzero(raft.heartbeat_tick, d_raft.heartbeat_tick),
        ),
        dispatcher=DispatcherConfig(
            heartbeat_period=nonzero(disp.heartbeat_period, d_disp.heartbeat_period)
        ),
        ca_config=CAConfig(
            node_cert_expiry=nonzero(ca.node_cert_expiry, d_ca.node_cert_expiry),
            external_c_as=ca.external_c_as,
            force_rotate=ca.force_rotate if ca.force_rotate else None,
        ),
        encryption_config=given.encryption_config or spec.encryption_config,
        task_defaults=given.task_defaults if given.task_defaults is not None else {},
    )


def new_cluster(cluster_id: str, spec: SwarmSpec, ca: RootCA, req: SwarmInitRequest) -> Cluster:
    """The cluster `swarm init` creates."""
    return Cluster(
        id=cluster_id,
        spec=spec,
        tls_info=ca.tls_info(),
        default_addr_pool=[p.strip() for p in req.default_addr_pool]
        if req.default_addr_pool
        else None,
        subnet_size=req.subnet_size or DEFAULT_SUBNET_SIZE,
        data_path_port=req.data_path_port or DEFAULT_DATA_PATH_PORT,
        join_tokens=JoinTokens(worker=ca.new_join_token(), manager=ca.new_join_token()),
    )


def validate_init_network(req: SwarmInitRequest) -> None:
    """`--default-addr-pool`, `--default-addr-pool-mask-length` and `--data-path-port`,
    as dockerd checks them at init."""
    ipam.validate_pool(req.default_addr_pool or None, req.subnet_size)
    ipam.validate_data_path_port(req.data_path_port)


def validate_spec(spec: SwarmSpec) -> None:
    """SwarmKit's checks of a cluster spec, and what shoal does not support."""
    ca = spec.ca_config
    if ca is not None:
        if ca.node_cert_expiry is not None and ca.node_cert_expiry < (
            MIN_NODE_CERT_EXPIRY // datetime.timedelta(microseconds=1) * 1000
        ):
            raise invalid_argument(MSG_MIN_CERT_EXPIRY)
        if ca.external_c_as:
            raise invalid_argument(MSG_EXTERNAL_CA)
    disp = spec.dispatcher
    if disp is not None and disp.heartbeat_period is not None and disp.heartbeat_period < 0:
        raise invalid_argument(MSG_NEGATIVE_HEARTBEAT)


def stored_spec(spec: SwarmSpec) -> SwarmSpec:
    """The spec as kept and shown: a signing CA certificate or key is an order to
    rotate, never part of the spec (dockerd shows neither)."""
    ca = spec.ca_config
    if ca is None or (ca.signing_ca_cert is None and ca.signing_ca_key is None):
        return spec
    return msgspec.structs.replace(
        spec, ca_config=msgspec.structs.replace(ca, signing_ca_cert=None, signing_ca_key=None)
    )


async def update_swarm(
    store: Store,
    version: int,
    spec: SwarmSpec,
    *,
    rotate_worker: bool,
    rotate_manager: bool,
) -> None:
    """`POST /swarm/update`: the new spec; new join tokens if asked; a root CA rotation
    when `CAConfig.ForceRotate` changed or a signing CA certificate and key were given."""
    validate_spec(spec)
    view = store.view()
    ca = spec.ca_config or CAConfig()
    old = rotation.current_root(view)
    forced = ca.force_rotate or 0
    new: RootCA | None = None
    if ca.signing_ca_cert or ca.signing_ca_key:
        given = rotation.given_root(ca.signing_ca_cert or "", ca.signing_ca_key or "")
        if given.cert.fingerprint(hashes.SHA256()) != old.cert.fingerprint(hashes.SHA256()):
            new = given
    elif forced != view.cluster_meta().last_forced_rotation:
        new = RootCA.create()
    cross_signed = rotation.cross_sign(old, new) if new is not None else b""
    stored = stored_spec(spec)

    def write(tx: Tx) -> None:
        cluster = tx.cluster()
        if cluster is None:
            raise NotManager()
        if cluster.version.index != version:
            raise OutOfSequence()
        if new is not None:
            cluster = rotation.start(tx, cluster, old, new, cross_signed, forced)
        tokens = cluster.join_tokens
        if rotate_worker or rotate_manager:
            root = cluster.tls_info.trust_root.encode()
            tokens = JoinTokens(
                worker=new_join_token(root) if rotate_worker else tokens.worker,
                manager=new_join_token(root) if rotate_manager else tokens.manager,
            )
        tx.update(msgspec.structs.replace(cluster, spec=stored, join_tokens=tokens))

    await store.update(write)
