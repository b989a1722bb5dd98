"""Node operations behind the API."""

from __future__ import annotations

import msgspec

from shoal.errors import FailedPrecondition, NotFound, OutOfSequence, invalid_argument
from shoal.manager.store import ReadTx, Store, Tx
from shoal.types.node import ManagerStatus, Node, NodeSpec

ROLES = ("worker", "manager")
AVAILABILITIES = ("active", "pause", "drain")
DEFAULT_MANAGER_PORT = 2377


def resolve_node(tx: ReadTx, ref: str) -> Node:
    """A node by full ID, hostname, or unique ID prefix."""
    n = tx.get_node(ref)
    if n is not None:
        return n
    nodes = tx.nodes()
    by_name = [n for n in nodes if n.description.hostname == ref]
    if len(by_name) == 1:
        return by_name[0]
    matches = [n for n in nodes if n.id.startswith(ref)] if ref else []
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1 or len(by_name) > 1:
        raise invalid_argument(f"node {ref} is ambiguous ({len(matches)} matches found)")
    raise NotFound(f"node {ref} not found")


async def update_node(store: Store, ref: str, version: int, spec: NodeSpec) -> Node:
    if spec.role not in ROLES:
        raise invalid_argument(f"invalid role {spec.role!r}")
    if spec.availability not in AVAILABILITIES:
        raise invalid_argument(f"invalid availability {spec.availability!r}")

    def write(tx: Tx) -> Node:
        node = resolve_node(tx, ref)
        if node.version.index != version:
            raise OutOfSequence()
        if node.spec.role == "manager" and spec.role == "worker":
            managers = [n for n in tx.nodes() if n.spec.role == "manager"]
            if len(managers) <= 1:
                raise FailedPrecondition(
                    "rpc error: code = FailedPrecondition desc = attempting to demote the "
                    "last manager of the swarm"
                )
        if spec.role == "worker" and node.manager_status and node.manager_status.leader:
            raise FailedPrecondition(
                "rpc error: code = FailedPrecondition desc = node "
                f"{node.id} is the leader and holds the cluster state; it cannot be demoted "
                "while managers do not share state"
            )
        manager_status = node.manager_status
        if spec.role == "manager" and manager_status is None:
            # Recorded and shown; this node holds no cluster state (managers that share
            # state come with high availability), so it is not reachable as a manager.
            manager_status = ManagerStatus(
                leader=False,
                reachability="unreachable",
                addr=f"{node.status.addr}:{DEFAULT_MANAGER_PORT}",
            )
        elif spec.role == "worker":
            manager_status = None
        return tx.update(msgspec.structs.replace(node, spec=spec, manager_status=manager_status))

    return await store.update(write)
