"""A node's certificate: renewed at 50-80 % of its life or when a manager refuses it
(workers ask a manager, a manager signs its own), the roots it trusts through a root
rotation, and the role switch a new certificate brings on a shared store (a promoted
worker starts its manager, a demoted manager stops). Functions of the `Daemon`.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from shoal.agent.join import node_tls_info, renew, renewal_delay
from shoal.daemon.members import stop_member
from shoal.daemon.membership import shared_store_keys
from shoal.errors import JoinFailed
from shoal.etcdclient import EtcdError
from shoal.log import get_logger
from shoal.manager.ca.issuer import Issuer
from shoal.manager.ca.rotation import directive, record_node_tls
from shoal.manager.keys import KEYS_FILE, ManagerKeys
from shoal.manager.manager import Manager
from shoal.manager.roster import manager_addrs
from shoal.pki import NodeCredentials, key_pem, make_csr, new_key
from shoal.types.session import TrustUpdate

if TYPE_CHECKING:
    from shoal.daemon.daemon import Daemon

RENEW_RETRY_S = 30.0

log = get_logger("shoal.daemon")


async def watch_trust(daemon: Daemon, manager: Manager) -> None:
    """The manager's own node learns of a root rotation from the store, as remote
    nodes learn of it from their sessions."""
    assert daemon._state is not None
    node_id = daemon._state.node_id
    watcher = manager.store.watch("node", "cluster")
    try:
        while True:
            d = directive(manager.store.view(), node_id)
            if d is not None:
                on_trust(daemon, TrustUpdate(trust_root=d.trust_root, renew=d.renew))
            await watcher.__anext__()
            watcher.get_nowait_all()
    finally:
        watcher.close()


def on_trust(daemon: Daemon, m: TrustUpdate) -> None:
    daemon._pending_trust = m
    daemon._renew_now.set()


async def renew_loop(daemon: Daemon) -> None:
    """Renew this node's certificate at 50–80 % of its life, or at once when a
    manager refused it (a promotion or demotion: the new certificate carries the
    role the store records). Workers ask a manager, a manager signs its own.
    During a root rotation it also takes the roots the manager says to trust, and
    renews when told; then it reports its TLS state."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                daemon._renew_now.wait(), renewal_delay(daemon._credentials().cert_pem)
            )
        daemon._renew_now.clear()
        trust, daemon._pending_trust = daemon._pending_trust, None
        creds = daemon._credentials()
        if trust is not None and trust.trust_root.encode() != creds.ca_pem:
            creds = NodeCredentials(trust.trust_root.encode(), creds.cert_pem, creds.key_pem)
        try:
            if trust is None or trust.renew:
                creds = await renewed(daemon, creds)
        except Exception as e:
            log.warning("certificate renewal failed; retrying", error=repr(e))
            if trust is not None:
                daemon._pending_trust = daemon._pending_trust or trust
            await asyncio.sleep(RENEW_RETRY_S)
            daemon._renew_now.set()
            continue
        install(daemon, creds)
        if role_changed(daemon):
            # a promotion or demotion on a shared store: this daemon becomes what
            # its certificate says (a task of its own: the switch stops this loop)
            daemon._switch = asyncio.create_task(switch_role(daemon), name="role-switch")
            return
        await report_tls(daemon)


def role_changed(daemon: Daemon) -> bool:
    state, creds = daemon._state, daemon._creds
    if state is None or creds is None:
        return False
    return (creds.identity.role == "manager") != state.runs_manager


async def switch_role(daemon: Daemon) -> None:
    """A promoted worker opens the shared store (its etcd member added and started
    first, without `--datastore-endpoint`) and campaigns, a demoted manager stops
    doing so (and stops its member and removes its data); its agent starts again on
    the other side, and its tasks keep running (adopted, as after a restart)."""
    async with daemon._lock:
        state, creds = daemon._state, daemon._creds
        if state is None or creds is None or not role_changed(daemon):
            return
        managers = list(daemon.remote_managers)
        if daemon._manager is not None:
            managers = manager_addrs(daemon._manager.store.view()) or managers
        await daemon._stop_swarm(stop_tasks=False, keep_node=True)
        if creds.identity.role == "manager":
            try:
                dek, root_key = await shared_store_keys(daemon, managers)
            except (JoinFailed, EtcdError) as e:  # it goes on as a worker (a manager on paper)
                log.error("promoted, but no manager gave the store's keys", error=str(e))
                await stop_member(daemon, leave=True)
                daemon._start_worker()
                return
            daemon._keys = ManagerKeys.adopt(daemon._files.swarm_dir, dek)
            daemon._files.write_root_key(root_key)
            state.runs_manager, state.role = True, "manager"
            await daemon._start_manager()
        else:
            await stop_member(daemon, leave=True, removed_by_leader=True)
            daemon._keys = None
            (daemon._files.swarm_dir / KEYS_FILE).unlink(missing_ok=True)
            daemon._files.root_key_path.unlink(missing_ok=True)
            state.runs_manager, state.role = False, "worker"
            state.managers = [m for m in managers if m != state.advertise_addr]
            daemon._start_worker()
        daemon._files.save_state(state)
        log.info("role changed", role=creds.identity.role)


def install(daemon: Daemon, creds: NodeCredentials) -> None:
    changed_root = daemon._creds is None or creds.ca_pem != daemon._creds.ca_pem
    daemon._files.save_creds(creds)
    daemon._creds = creds
    if daemon._cluster_server is not None:
        daemon._cluster_server.set_credentials(creds)
    if daemon._manager is not None:
        key = daemon._manager.store.view().cluster_meta().root_key
        if key:  # after a rotation the store holds the root; so does the disk
            daemon._files.write_root_key(key.encode())
    log.info("node credentials changed", role=creds.identity.role, new_root=changed_root)


async def report_tls(daemon: Daemon) -> None:
    if daemon._state is None or daemon._creds is None:
        return
    tls = node_tls_info(daemon._creds)
    if daemon._manager is not None and daemon._shared is None:
        await record_node_tls(daemon._manager.store, daemon._state.node_id, tls)
    elif daemon._remote is not None:
        try:
            await daemon._remote.report_tls(tls)
        except ConnectionError as e:  # the next session reports it
            log.info("TLS state not reported yet", error=repr(e))


async def renewed(daemon: Daemon, creds: NodeCredentials) -> NodeCredentials:
    if daemon._state is not None and daemon._state.runs_manager and daemon._manager is not None:
        key = new_key()
        issuer = Issuer(daemon._manager.store, daemon._files.root_ca(), [])
        cert = issuer.renew(creds.identity, make_csr(key).decode()).certificate
        return NodeCredentials(creds.ca_pem, cert.encode(), key_pem(key))
    managers = daemon._state.managers if daemon._state else []
    return await renew(managers[0], creds)
