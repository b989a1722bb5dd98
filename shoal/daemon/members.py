"""The daemon's side of its embedded etcd member (docs/ha.md): functions of the
`Daemon`. Which store a manager opens (its member, started on its data first, or
SQLite), the cluster port's `POST /manager/member` (the move from SQLite first), the
leader's pruning of members, and the member stopped or taken out of the cluster when
the node stops, is demoted or leaves.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from shoal.daemon.config import SwarmState
from shoal.daemon.embedded import MEMBER_FILE, Embedded, EmbeddedConfig, prune_members
from shoal.daemon.etcd_leader import keep_leader_elsewhere
from shoal.daemon.grant import grant_member, member_wanted
from shoal.daemon.ha import SharedStore
from shoal.daemon.migrate import STORE_FILE, migrate
from shoal.errors import InvalidArgument, NoLeader
from shoal.log import get_logger
from shoal.manager.manager import Manager

if TYPE_CHECKING:
    from shoal.daemon.daemon import Daemon

log = get_logger("shoal.daemon")


async def open_member(daemon: Daemon) -> EmbeddedConfig | None:
    """The client configuration of this manager's member (started on its data if it
    is not running yet), or None: its store is still SQLite's."""
    if daemon._embedded is None:
        daemon._embedded = Embedded.load(daemon._files.swarm_dir)
    if daemon._embedded is None:
        return None
    if not daemon._embedded.started:
        await daemon._embedded.start()
    return daemon._embedded.config()


def member_gone(daemon: Daemon, state: SwarmState) -> bool:
    """A manager with no store here: no member file and no SQLite file (it was
    moved, or this manager joined a cluster already on etcd): its member was taken
    out (demoted while stopped)."""
    swarm_dir = daemon._files.swarm_dir
    return (
        state.runs_manager
        and daemon.config.datastore is None
        and not (swarm_dir / MEMBER_FILE).exists()
        and not (swarm_dir / STORE_FILE).exists()
    )


async def member_request(daemon: Daemon, body: bytes, node_id: str) -> bytes:
    """`POST /manager/member`: a new manager asks for its etcd member. On SQLite the
    store moves to etcd first (a task: this cluster port restarts on the way; the
    API's requests wait meanwhile); the asking node is answered 503 and asks again."""
    if daemon.config.datastore is not None:
        raise InvalidArgument(
            "this manager's store is an external etcd (--datastore-endpoint): "
            "start the new manager with the same --datastore-endpoint"
        )
    peer_url = member_wanted(body, node_id)
    shared, embedded, keys = daemon._shared, daemon._embedded, daemon._keys
    if shared is None or embedded is None:
        if daemon._migration is None or daemon._migration.done():
            daemon._held = held = asyncio.Event()
            daemon._migration = asyncio.create_task(_migrate(daemon, held), name="migrate")
        raise NoLeader("the store moves to etcd for a second manager; try again")
    assert keys is not None and keys.dek is not None
    root_key = daemon._files.read_private_key(daemon._files.root_key_path)
    return await grant_member(shared.datastore.client, node_id, peer_url, keys.dek, root_key)


async def _migrate(daemon: Daemon, held: asyncio.Event) -> None:
    try:
        await migrate(daemon, held)
    except Exception as e:
        log.error("migration to etcd failed", error=repr(e))
    finally:
        if daemon._held is held:
            daemon._held = None


def start_pruner(daemon: Daemon, manager: Manager, shared: SharedStore) -> None:
    """On a manager with a member: the leader removes the members of nodes no longer
    managers, and keeps etcd's raft leader on another member than its own
    (daemon/etcd_leader.py) (the task runs on every manager; it acts while this one
    leads)."""
    embedded = daemon._embedded
    if embedded is None:
        return

    async def prune() -> None:
        client = shared.datastore.client
        never = asyncio.Event()
        await embedded.refresh_endpoints(client)
        await asyncio.gather(
            prune_members(manager.store, client, embedded.member.tls, lambda: manager.leading),
            keep_leader_elsewhere(
                client,
                embedded.file.name,
                embedded.member.tls,
                lambda: shared.leading,
                lambda: shared.leadership.changed if shared.leadership else never,
                lambda name: still_manager_node(manager, name),
            ),
        )

    daemon._pruner = asyncio.create_task(prune(), name="etcd-members")


async def stop_pruner(daemon: Daemon) -> None:
    if daemon._pruner is not None:
        daemon._pruner.cancel()
        await asyncio.gather(daemon._pruner, return_exceptions=True)
        daemon._pruner = None


def still_manager_node(manager: Manager, node_id: str) -> bool:
    """What `manager`'s replica says: node `node_id` is a manager."""
    node = manager.store.view().get_node(node_id)
    return node is not None and node.spec.role == "manager"


def still_manager(daemon: Daemon) -> bool:
    """What this manager's replica says of its own node's role."""
    if daemon._manager is None or daemon._state is None:
        return True
    return still_manager_node(daemon._manager, daemon._state.node_id)


async def stop_member(daemon: Daemon, leave: bool = False, removed_by_leader: bool = False) -> None:
    """Stop this node's member; `leave`: take it out of the etcd cluster (removed
    through the others; `removed_by_leader`: wait until the leader did) and remove
    its data too."""
    embedded = daemon._embedded
    if embedded is None and leave:
        embedded = Embedded.load(daemon._files.swarm_dir)
    daemon._embedded = None
    if embedded is None:
        return
    if leave:
        await embedded.leave(remove_self=not removed_by_leader)
    else:
        await embedded.stop()
