"""The CA's two operations on the cluster port: admitting a node that presents a join
token (a new Node and its first certificate) and renewing a node's certificate."""

from __future__ import annotations

from shoal.errors import InvalidArgument, NotFound, PermissionDenied
from shoal.ids import new_id
from shoal.manager.ca.root import RootCA, token_matches
from shoal.manager.ca.rotation import current_root, signer
from shoal.manager.ca.signer import node_cert_expiry, sign_node_certificate
from shoal.manager.roster import manager_addrs
from shoal.manager.store import ReadTx, Store, Tx
from shoal.pki import Identity
from shoal.types.node import NODE_JOINED, Node, NodeDescription, NodeSpec, NodeStatus
from shoal.types.service import JoinTokens
from shoal.types.session import JoinRequest, JoinResponse, RenewResponse

MSG_BAD_TOKEN = (
    "rpc error: code = InvalidArgument desc = A valid join token is necessary to join this cluster"
)


class Issuer:
    """Signs with the cluster's signer as the store records it (the new root during a
    rotation, its cross-signed certificate sent beside each leaf); `root` is the root
    kept in the certificates directory, the signer until a rotation has finished."""

    def __init__(self, store: Store, root: RootCA, manager_addrs: list[str]) -> None:
        self._store = store
        self._root = root
        self.managers = manager_addrs

    def root_pem(self) -> bytes:
        """The cluster's root (`GET /ca/root`): the old one until a rotation finishes."""
        return current_root(self._store.view(), self._root).cert_pem

    def _sign(
        self, view: ReadTx, csr_pem: bytes, node_id: str, role: str, cluster_id: str
    ) -> bytes:
        s = signer(view, self._root)
        cert = sign_node_certificate(
            s.root, csr_pem, node_id, role, cluster_id, node_cert_expiry(self._expiry_ns(view))
        )
        return cert + s.chain

    def _expiry_ns(self, tx: ReadTx) -> int | None:
        cluster = tx.cluster()
        cfg = cluster.spec.ca_config if cluster else None
        return cfg.node_cert_expiry if cfg else None

    async def join(self, req: JoinRequest, addr: str) -> JoinResponse:
        """Admit a node that presents a join token; `addr` is where it connects from
        (what it sent in `req.addr` is only a hint, checked by the caller). The
        certificate is signed before the transaction, which only records the node (and
        checks the token again, in case it was rotated meanwhile)."""
        availability = req.availability or "active"
        if availability not in ("active", "pause", "drain"):
            raise InvalidArgument(f"invalid availability {availability!r}")
        view = self._store.view()
        cluster = view.cluster()
        if cluster is None:
            raise NotFound("this manager has no cluster")
        role = _role_of(req.token, cluster.join_tokens)
        node_id = new_id()
        # A bad CSR raises CSRError, an InvalidArgument: the client is told (400).
        cert = self._sign(view, req.csr.encode(), node_id, role, cluster.id)

        def write(tx: Tx) -> None:
            current = tx.cluster()
            if current is None or _role_of(req.token, current.join_tokens) != role:
                raise InvalidArgument(MSG_BAD_TOKEN)
            tx.create(
                Node(
                    id=node_id,
                    spec=NodeSpec(labels={}, role=role, availability=availability),
                    description=NodeDescription(hostname=req.hostname, tls_info=current.tls_info),
                    status=NodeStatus(state=NODE_JOINED, addr=addr),
                )
            )

        await self._store.update(write)
        return JoinResponse(
            node_id=node_id,
            certificate=cert.decode(),
            role=role,
            cluster_id=cluster.id,
            managers=manager_addrs(self._store.view()) or list(self.managers),
        )

    def renew(self, ident: Identity, csr_pem: str) -> RenewResponse:
        """A new certificate for a node already in the cluster; its role is the one the
        store records now (a promotion or demotion takes effect here)."""
        view = self._store.view()
        node = view.get_node(ident.node_id)
        cluster = view.cluster()
        if node is None or cluster is None or cluster.id != ident.cluster_id:
            raise PermissionDenied(f"node {ident.node_id} is not a member of this cluster")
        cert = self._sign(view, csr_pem.encode(), node.id, node.spec.role, cluster.id)
        return RenewResponse(certificate=cert.decode())


def _role_of(token: str, tokens: JoinTokens) -> str:
    if token_matches(token, tokens.manager):
        return "manager"
    if token_matches(token, tokens.worker):
        return "worker"
    raise InvalidArgument(MSG_BAD_TOKEN)


def issue_own_certificate(
    root: RootCA, csr_pem: bytes, node_id: str, cluster_id: str, expiry_ns: int | None
) -> bytes:
    """The first manager's certificate, made at `swarm init`."""
    return sign_node_certificate(
        root, csr_pem, node_id, "manager", cluster_id, node_cert_expiry(expiry_ns)
    )
