"""The managers of a cluster as the store and the election know them: the cluster
ports agents may dial, and each manager's `ManagerStatus` as dockerd shows it.

With several managers (docs/ha.md) the status is not stored as it is shown: who leads
is the election's (the etcd key), and a manager is `reachable` while its node is
ready (its agent holds a session with the leader), `unreachable` once the leader's
dispatcher marked it down. The stored `ManagerStatus` keeps the address the manager
registered with (`Register.manager_addr`).
"""

from __future__ import annotations

import msgspec

from shoal.manager.store import ReadTx, Store, Tx
from shoal.types.node import ManagerStatus, Node

ROSTER_MAX_AGE_S = 1.0


def manager_addrs(view: ReadTx) -> list[str]:
    """The cluster ports of the managers the store knows (their registered address),
    ready ones first. A node promoted without a store to share (recorded
    `unreachable`: it holds no state) is not one to dial."""
    managers = [
        n
        for n in view.nodes()
        if n.spec.role == "manager"
        and n.manager_status is not None
        and n.manager_status.addr
        and n.manager_status.reachability != "unreachable"
    ]
    managers.sort(key=lambda n: (n.status.state != "ready", n.created_at, n.id))
    return [n.manager_status.addr for n in managers if n.manager_status is not None]


def with_status(node: Node, leader_id: str | None) -> Node:
    """`node` with its ManagerStatus as shown: Leader from the election, Reachability
    from the node's state (workers unchanged)."""
    if node.spec.role != "manager":
        return node
    addr = node.manager_status.addr if node.manager_status is not None else ""
    status = ManagerStatus(
        leader=node.id == leader_id,
        reachability="reachable" if node.status.state == "ready" else "unreachable",
        addr=addr,
    )
    return msgspec.structs.replace(node, manager_status=status)


class RosterCache:
    """`manager_addrs` for the sessions' heartbeat answers, computed again at most once
    every `max_age_s` (it walks every node; heartbeats come by the thousand)."""

    def __init__(self, store: Store, max_age_s: float = ROSTER_MAX_AGE_S) -> None:
        self._store = store
        self._max_age_s = max_age_s
        self._at = float("-inf")
        self._addrs: list[str] = []

    def get(self) -> list[str]:
        now = self._store.clock.monotonic()
        if now - self._at >= self._max_age_s:
            self._addrs = manager_addrs(self._store.view())
            self._at = now
        return self._addrs


def mark_leader(tx: Tx, node_id: str) -> None:
    """What a new leader records (pure): its ManagerStatus says Leader, no other
    manager's does (the events' `leader` attribute and `node demote` read the stored
    one; what node ls shows is computed from the election anyway)."""
    for node in tx.nodes():
        ms = node.manager_status
        if node.spec.role != "manager" or ms is None:
            continue
        leader = node.id == node_id
        if ms.leader != leader:
            status = msgspec.structs.replace(ms, leader=leader)
            tx.update(msgspec.structs.replace(node, manager_status=status))
