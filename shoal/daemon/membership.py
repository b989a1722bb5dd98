"""A node joins and leaves its swarm: `swarm init` (a new cluster, this node its first
manager), `swarm join` (as a worker, or as a manager on a shared store), `swarm leave`.
Functions of the `Daemon`.
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

import msgspec

from shoal.agent.agent import discard_task
from shoal.agent.join import join
from shoal.daemon.config import (
    DEFAULT_LISTEN_ADDR,
    DEFAULT_SWARM_PORT,
    SwarmState,
    local_addr_towards,
    split_addr,
)
from shoal.daemon.embedded import new_member_file
from shoal.daemon.grant import join_member
from shoal.daemon.ha import fetch_shared_keys
from shoal.daemon.members import stop_member
from shoal.errors import (
    AlreadyInSwarm,
    InvalidArgument,
    JoinFailed,
    LeaveRefused,
    NodeNotInSwarm,
    NoLeader,
)
from shoal.etcdclient import EtcdError, TLSFiles
from shoal.ids import new_id
from shoal.log import get_logger
from shoal.manager.ca.issuer import issue_own_certificate
from shoal.manager.ca.root import RootCA
from shoal.manager.controlapi import networks
from shoal.manager.controlapi.swarm import (
    init_spec,
    new_cluster,
    validate_init_network,
    validate_spec,
)
from shoal.manager.etcd.certs import member_tls
from shoal.manager.etcd.datastore import wipe as wipe_datastore
from shoal.manager.keys import ManagerKeys
from shoal.manager.store import Tx
from shoal.pki import NodeCredentials, key_pem, make_csr, new_key
from shoal.types.node import ManagerStatus, Node, NodeSpec, NodeStatus
from shoal.types.swarm import SwarmInitRequest, SwarmJoinRequest

if TYPE_CHECKING:
    from shoal.daemon.daemon import Daemon

# `swarm init --force-new-cluster` waits this long for a leader (an election follows
# etcd's quorum coming back: the stale lease revoked, one campaign round).
FORCE_NEW_CLUSTER_LEAD_S = 30.0

MSG_LEAVE_MANAGER = (
    "You are attempting to leave the swarm on a node that is participating as a manager. "
    "Removing the last manager erases all current state of the swarm. Use `--force` to "
    "ignore this message."
)

log = get_logger("shoal.daemon")


async def swarm_init(daemon: Daemon, request: SwarmInitRequest) -> str:
    async with daemon._lock:
        if daemon._state is not None:
            if request.force_new_cluster and daemon._manager is not None:
                return await force_new_cluster(daemon)
            raise AlreadyInSwarm()
        listen = request.listen_addr or DEFAULT_LISTEN_ADDR
        listen_host, listen_port = split_addr(listen, DEFAULT_SWARM_PORT)
        advertise = request.advertise_addr or listen_host
        if advertise in ("0.0.0.0", "::", ""):
            advertise = "127.0.0.1"
        adv_host, adv_port = split_addr(advertise, listen_port)
        node_id, cluster_id = new_id(), new_id()
        ca = RootCA.create()
        spec = init_spec(request.spec)
        validate_spec(spec)
        validate_init_network(request)
        expiry = spec.ca_config.node_cert_expiry if spec.ca_config else None
        key = new_key()
        cert = issue_own_certificate(ca, make_csr(key), node_id, cluster_id, expiry)
        shutil.rmtree(daemon._files.swarm_dir, ignore_errors=True)
        enc = spec.encryption_config
        daemon._keys = ManagerKeys.create(
            daemon._files.swarm_dir, autolock=bool(enc and enc.auto_lock_managers)
        )
        daemon._creds = NodeCredentials(ca.cert_pem, cert, key_pem(key))
        daemon._files.save_creds(daemon._creds)
        daemon._files.write_root_key(ca.key_pem)
        daemon._state = SwarmState(
            node_id=node_id,
            cluster_id=cluster_id,
            advertise_addr=f"{adv_host}:{adv_port}",
            listen_addr=f"{listen_host}:{listen_port}",
        )
        description = msgspec.structs.replace(daemon.executor.describe(), tls_info=ca.tls_info())
        state = daemon._state

        def bootstrap(tx: Tx) -> None:
            tx.create(new_cluster(cluster_id, spec, ca, request))
            networks.create_in(tx, networks.ingress_spec())
            tx.create(
                Node(
                    id=node_id,
                    spec=NodeSpec(labels={}, role="manager", availability="active"),
                    description=description,
                    status=NodeStatus(state="ready", addr=adv_host),
                    manager_status=ManagerStatus(
                        leader=True, reachability="reachable", addr=state.advertise_addr
                    ),
                )
            )

        try:
            await daemon._start_manager(bootstrap)
        except BaseException:
            await abandon_swarm(daemon)
            raise
        daemon._files.save_state(daemon._state)
        log.info(
            "swarm initialized",
            node=node_id,
            cluster=cluster_id,
            cluster_port=daemon._state.advertise_addr,
        )
        return node_id


async def force_new_cluster(daemon: Daemon) -> str:
    """`docker swarm init --force-new-cluster` on a manager (docs/ha.md "Quorum lost
    for good"). Its embedded member restarts on its data as an etcd cluster of one
    (etcd's own `--force-new-cluster`: every other member removed from the
    membership, all the data kept); on an external etcd, its operator restores the
    quorum so (the survivor member restarted with that flag). This manager then serves
    the cluster from the state etcd holds: it answers once a manager (this one, if the
    others are gone) leads, its services as they were. A single manager on SQLite is
    a cluster of one already."""
    assert daemon._state is not None
    shared = daemon._shared
    if shared is None:
        return daemon._state.node_id
    # with its own member alone, no other manager can lead: this one will, once the
    # key of the leader before (gone, or cut off for good) expires
    alone = daemon._embedded is not None
    if daemon._embedded is not None:
        await daemon._embedded.force_new_cluster()
    if not await shared.wait_led(FORCE_NEW_CLUSTER_LEAD_S, by_me=alone):
        raise NoLeader()
    log.info("swarm recovered (--force-new-cluster)", node=daemon._state.node_id)
    return daemon._state.node_id


async def swarm_join(daemon: Daemon, request: SwarmJoinRequest) -> None:
    async with daemon._lock:
        if daemon._state is not None:
            raise AlreadyInSwarm()
        remotes = request.remote_addrs or []
        if not remotes:
            raise InvalidArgument("at least 1 RemoteAddr is required to join")
        listen = request.listen_addr or DEFAULT_LISTEN_ADDR
        listen_host, listen_port = split_addr(listen, DEFAULT_SWARM_PORT)
        remote = remotes[0] if ":" in remotes[0] else f"{remotes[0]}:{DEFAULT_SWARM_PORT}"
        advertise = request.advertise_addr or ""
        adv_host = split_addr(advertise, listen_port)[0] if advertise else ""
        if adv_host in ("", "0.0.0.0", "::"):
            adv_host = local_addr_towards(split_addr(remote, DEFAULT_SWARM_PORT)[0])
        joined = await join(
            remote, request.join_token or "", daemon.node_name, adv_host, request.availability
        )
        shutil.rmtree(daemon._files.swarm_dir, ignore_errors=True)
        joined.credentials.save(daemon._files.certs_dir)
        daemon._creds = joined.credentials
        # A manager is one for real: it opens the store as a follower with the DEK the
        # managers share, on the external etcd (--datastore-endpoint) or in an etcd
        # member of its own (added by the manager it joined through).
        shared = joined.role == "manager"
        daemon._state = SwarmState(
            node_id=joined.node_id,
            cluster_id=joined.cluster_id,
            advertise_addr=f"{adv_host}:{listen_port}",
            listen_addr=f"{listen_host}:{listen_port}",
            role=joined.role,
            runs_manager=shared,
            managers=joined.managers or [remote],
        )
        if shared:
            await join_as_manager(daemon, remote)
        else:
            daemon._files.save_state(daemon._state)
            daemon._start_worker()
        log.info("joined the swarm", node=joined.node_id, role=joined.role, manager=remote)


async def join_as_manager(daemon: Daemon, remote: str) -> None:
    assert daemon._state is not None and daemon._creds is not None
    try:
        dek, root_key = await shared_store_keys(daemon, [remote])
        daemon._keys = ManagerKeys.adopt(daemon._files.swarm_dir, dek)
        daemon._files.write_root_key(root_key)
        await daemon._start_manager()
    except BaseException:
        await abandon_swarm(daemon)
        raise
    daemon._files.save_state(daemon._state)


async def shared_store_keys(daemon: Daemon, managers: list[str]) -> tuple[bytes, bytes]:
    """A new manager (joined or promoted): the DEK and the root key from `managers`;
    without `--datastore-endpoint`, its etcd member added by one of them and started
    (`Daemon._embedded`)."""
    state, creds = daemon._state, daemon._creds
    assert state is not None and creds is not None
    if daemon.config.datastore is not None:
        return await fetch_keys(managers, creds)
    host = split_addr(state.advertise_addr, DEFAULT_SWARM_PORT)[0]
    root_cert = creds.ca_pem

    def tls(root_key: bytes) -> TLSFiles:
        return member_tls(RootCA(root_cert, root_key), state.node_id, state.cluster_id, [host])

    daemon._files.swarm_dir.mkdir(parents=True, exist_ok=True)
    file = new_member_file(state.node_id, host)
    daemon._embedded, grant = await join_member(daemon._files.swarm_dir, file, managers, creds, tls)
    return grant.dek, grant.root_key


async def fetch_keys(managers: list[str], creds: NodeCredentials) -> tuple[bytes, bytes]:
    """The shared store's keys from the first of `managers` that answers."""
    failure: Exception = JoinFailed("no manager known")
    for addr in managers:
        try:
            return await fetch_shared_keys(addr, creds)
        except JoinFailed as e:
            failure = e
    raise failure


async def abandon_swarm(daemon: Daemon) -> None:
    """Undo a swarm init or a manager's join that failed half-way: stop what
    started, forget the swarm and its files."""
    await daemon._stop_swarm(stop_tasks=True)
    await stop_member(daemon, leave=True)
    shutil.rmtree(daemon._files.swarm_dir, ignore_errors=True)
    daemon._state = None
    daemon._creds = None
    daemon._keys = None


async def swarm_leave(daemon: Daemon, force: bool) -> None:
    async with daemon._lock:
        if daemon._state is None:
            raise NodeNotInSwarm()
        if daemon._state.runs_manager and not force and not daemon.locked:
            raise LeaveRefused(MSG_LEAVE_MANAGER)
        # the last manager of a shared store takes its state with it
        last = daemon._manager is None or not any(
            n.spec.role == "manager" and n.id != daemon._state.node_id
            for n in daemon._manager.store.view().nodes()
        )
        await daemon._stop_swarm(stop_tasks=True)
        # its etcd member removed from the others' cluster first, then stopped
        await stop_member(daemon, leave=True)
        for tid in daemon.executor.known_task_ids():
            await discard_task(daemon.executor, tid)
        if daemon.config.datastore is not None and daemon._state.runs_manager and last:
            try:
                await wipe_datastore(daemon.config.datastore, daemon._state.cluster_id)
            except EtcdError as e:  # the node leaves anyway; the keys stay behind
                log.warning("left the swarm; its state stays in etcd", error=str(e))
        shutil.rmtree(daemon._files.swarm_dir, ignore_errors=True)
        daemon._state = None
        daemon._creds = None
        daemon._keys = None
        log.info("left the swarm")
