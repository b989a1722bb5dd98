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
    GET  /manager/keys       yes           manager           the node exists, same role
    POST /manager/join       yes           manager           the node exists, same role
                             (a join a follower took, for the leader to write)
    POST /manager/member     yes           manager           the node exists, same role
                             (a new manager's etcd member added: daemon/embedded.py)
    *    /manager/api/...    yes           manager           the node exists, same role
                             (a follower's Engine API writes, forwarded: api/forward.py)

Beside that, a removed node's ID stays on the cluster's list of removed nodes until its
certificates have expired (ca/removed.py): the server refuses such a certificate at the
TLS handshake (`RefuseRemoved`), and `admit` refuses it too.

`/ca/renew` asks only that the node exists: it is how a promoted or demoted node trades
its certificate for one with the role the store records (the new certificate carries
that role, never the old one).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass

from shoal.errors import PermissionDenied, Unauthenticated
from shoal.log import get_logger
from shoal.manager.ca.removed import is_removed
from shoal.manager.store import Store
from shoal.pki import Identity, peer_identity

log = get_logger("shoal.manager.clusterport")

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
    ("GET", "/manager/keys"): Rule(MANAGERS),
    ("POST", "/manager/join"): Rule(MANAGERS),
    ("POST", "/manager/member"): Rule(MANAGERS),
}
# Every path under it: the Engine API, for managers only (writes forwarded to the leader).
FORWARD_PREFIX = "/manager/api"
FORWARDED_API = Rule(MANAGERS)


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

    def removed(self, node_id: str) -> bool:
        """Is `node_id` on the cluster's list of removed nodes?"""
        return is_removed(self._store.view(), node_id)

    def check_member(self, ident: Identity, same_role: bool = True) -> None:
        """PermissionDenied when the node was removed, or (`same_role`) when its role in
        the store is no longer the certificate's."""
        view = self._store.view()
        node = view.get_node(ident.node_id)
        if node is None or is_removed(view, ident.node_id):
            raise PermissionDenied(
                f"permission denied: node {ident.node_id} is not a member of this cluster"
            )
        if same_role and node.spec.role != ident.role:
            raise PermissionDenied(
                f"permission denied: node {ident.node_id} is a {node.spec.role} now; "
                "its certificate must be renewed"
            )


class PeerRemoved(ssl.SSLCertVerificationError):
    """The peer's certificate is a removed node's: it fails the handshake like any
    certificate that does not verify."""


def refusing_removed(removed: Callable[[str], bool]) -> type[ssl.SSLObject]:
    """An SSLObject for the server's contexts that, once the chain has verified, fails
    the handshake when the certificate names a removed node (asyncio, so aiohttp, make
    their TLS objects from the context's `sslobject_class`)."""

    class RefuseRemoved(ssl.SSLObject):
        def do_handshake(self) -> None:
            super().do_handshake()
            ident = peer_identity(self)
            if ident is not None and removed(ident.node_id):
                log.warning("refused a removed node's certificate", node=ident.node_id)
                raise PeerRemoved(f"node {ident.node_id} was removed from the cluster")

    return RefuseRemoved
