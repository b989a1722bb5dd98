"""Who may use what on the cluster port.

The certificate says who the peer is (CN node ID, OU role, O cluster ID); the store says
whether that is still true. A certificate outlives a `node rm` or a `node demote` (it is
valid until it expires), so every request and every session message is checked against
the node as the store records it now:

    path                     certificate   roles             the store must say
    GET  /ca/root            no            -                 -
    POST /ca/join            no (token)    -                 -
    POST /ca/renew           yes           worker, manager   the node exists
    GET  /dispatcher/session yes           worker, manager   the node exists, same role
    GET  /manager/ping       yes           manager           the node exists, same role

`/ca/renew` asks only that the node exists: it is how a promoted or demoted node trades
its certificate for one with the role the store records (the new certificate carries
that role, never the old one).
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal.errors import PermissionDenied, Unauthenticated
from shoal.manager.store import Store
from shoal.pki import Identity

ANY_NODE = frozenset({"worker", "manager"})
MANAGERS = frozenset({"manager"})


@dataclass(frozen=True, slots=True)
class Rule:
    roles: frozenset[str] | None  # None: no certificate needed
    same_role: bool = True  # the certificate's role must be the node's role in the store


ACCESS: dict[tuple[str, str], Rule] = {
    ("GET", "/ca/root"): Rule(None),
    ("POST", "/ca/join"): Rule(None),
    ("POST", "/ca/renew"): Rule(ANY_NODE, same_role=False),
    ("GET", "/dispatcher/session"): Rule(ANY_NODE),
    ("GET", "/manager/ping"): Rule(MANAGERS),
}


class Gate:
    """Checks identities against the rules and the store (reads only)."""

    def __init__(self, store: Store, cluster_id: str) -> None:
        self._store = store
        self._cluster_id = cluster_id

    def admit(self, rule: Rule, ident: Identity | None, path: str) -> None:
        """Raises Unauthenticated or PermissionDenied unless `ident` may use `path`."""
        if rule.roles is None:
            return
        if ident is None:
            raise Unauthenticated("a node certificate of this cluster is required")
        if ident.cluster_id != self._cluster_id:
            raise PermissionDenied("certificate is from another cluster")
        if ident.role not in rule.roles:
            raise PermissionDenied(f"permission denied: {ident.role} nodes may not use {path}")
        self.check_member(ident, same_role=rule.same_role)

    def check_member(self, ident: Identity, same_role: bool = True) -> None:
        """PermissionDenied when the node was removed, or (`same_role`) when its role in
        the store is no longer the certificate's."""
        node = self._store.view().get_node(ident.node_id)
        if node is None:
            raise PermissionDenied(
                f"permission denied: node {ident.node_id} is not a member of this cluster"
            )
        if same_role and node.spec.role != ident.role:
            raise PermissionDenied(
                f"permission denied: node {ident.node_id} is a {node.spec.role} now; "
                "its certificate must be renewed"
            )
