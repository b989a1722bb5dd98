"""The cluster port's HTTP server (TLS; client certificates verified against the root).

Who may use which path is `access.py`'s table, checked for every request against the
certificate and the store. A path not listed there does not exist.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec
from aiohttp import web

from shoal.errors import InvalidArgument, NoLeader, NotFound, ResourceExhausted, http_error
from shoal.log import get_logger
from shoal.manager.ca.issuer import Issuer
from shoal.manager.ca.root import RootCA
from shoal.manager.clusterport.access import (
    ACCESS,
    FORWARD_PREFIX,
    FORWARDED_API,
    Gate,
    refusing_removed,
)
from shoal.manager.clusterport.ratelimit import JoinLimiter
from shoal.manager.clusterport.session import node_addr, serve_session
from shoal.manager.dispatcher.dispatcher import Dispatcher
from shoal.manager.roster import RosterCache
from shoal.manager.store import Store
from shoal.pki import Identity, NodeCredentials, peer_identity
from shoal.types.base import encode_json
from shoal.types.session import JoinRequest, RenewRequest

MSG_TOO_MANY_JOINS = (
    "rpc error: code = ResourceExhausted desc = too many join requests; try again later"
)
MSG_TOO_MANY_FAILED_JOINS = (
    "rpc error: code = ResourceExhausted desc = too many failed join attempts from this "
    "address; try again later"
)
IDENTITY_KEY = "shoal.identity"
# `/manager/join`: the address the joining node connected to the follower from
JOIN_PEER_HEADER = "X-Shoal-Join-Peer"
MAX_BODY = 1024 * 1024
SHUTDOWN_TIMEOUT_S = 2.0  # sessions in flight when the daemon stops

log = get_logger("shoal.manager.clusterport")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# A follower's join handed to the leader: (request body, peer) -> (status, body).
JoinVia = Callable[[bytes, str], Awaitable[tuple[int, bytes]]]


def _error(status: int, message: str) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps({"message": message}).encode(),
        content_type="application/json",
    )


class ClusterServer:
    def __init__(
        self,
        store: Store,
        dispatcher: Dispatcher,
        issuer: Issuer,
        root: RootCA,
        credentials: NodeCredentials,
        cluster_id: str,
        leading: Callable[[], bool] = lambda: True,
        shared_keys: Callable[[], bytes] | None = None,
        api: web.Application | None = None,
        join_via_leader: JoinVia | None = None,
        member: Callable[[bytes, str], Awaitable[bytes]] | None = None,
    ) -> None:
        """Several managers (docs/ha.md): `leading` says whether this manager leads
        (only the leader serves agent sessions: a follower answers 503 and the agent
        tries the next manager); `shared_keys` answers `GET /manager/keys` (what a
        joining manager needs to open the shared store); `api` is the Engine API app
        served under FORWARD_PREFIX to followers forwarding writes; `join_via_leader`
        hands a follower's joins to the leader (which writes the node), with the
        joining node's address (`/manager/join`); `member` answers `POST
        /manager/member` (a new manager's etcd member added, given the asking
        node's ID: shoal/daemon/grant.py)."""
        self._member = member
        self._join_via = join_via_leader
        self._leading = leading
        self._shared_keys = shared_keys
        self._roster = RosterCache(store) if shared_keys is not None else None
        self._api = api
        self._dispatcher = dispatcher
        self._issuer = issuer
        self._root = root
        self._credentials = credentials
        self._store = store
        # the context new connections get (swapped when the node's certificate or
        # trusted roots change: a root rotation)
        self._ssl: ssl.SSLContext | None = None
        self._gate = Gate(store, cluster_id)
        self._joins = JoinLimiter()
        self._runner: web.AppRunner | None = None
        self.port = 0

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._access], client_max_size=MAX_BODY)
        app.router.add_get("/ca/root", self._ca_root)
        app.router.add_post("/ca/join", self._ca_join)
        app.router.add_post("/ca/renew", self._ca_renew)
        app.router.add_get("/dispatcher/session", self._session)
        app.router.add_get("/manager/ping", self._manager_ping)
        app.router.add_get("/manager/keys", self._manager_keys)
        app.router.add_post("/manager/join", self._manager_join)
        app.router.add_post("/manager/member", self._manager_member)
        if self._api is not None:
            app.add_subapp(FORWARD_PREFIX, self._api)
        return app

    @web.middleware
    async def _access(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        rule = ACCESS.get((request.method, request.path))
        if rule is None and request.path.startswith(FORWARD_PREFIX + "/"):
            rule = FORWARDED_API
        if rule is None:
            return _error(404, "not found")
        ident = peer_identity(
            request.transport.get_extra_info("ssl_object") if request.transport else None
        )
        try:
            self._gate.admit(rule, ident, request.path)
            request[IDENTITY_KEY] = ident
            return await handler(request)
        except Exception as e:
            return _error(*http_error(e, port="cluster", path=request.path))

    async def start(self, host: str, port: int) -> int:
        self._runner = web.AppRunner(
            self._app(),
            access_log=None,
            handle_signals=False,
            handler_cancellation=True,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        )
        await self._runner.setup()
        base = self._ssl = self._server_context(self._credentials)
        base.sni_callback = self._pick_context
        site = web.TCPSite(self._runner, host, port, ssl_context=base)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        log.info("cluster port listening", host=host, port=self.port)
        return self.port

    def _pick_context(self, conn: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        # Called at every handshake (with or without SNI): the current context.
        if self._ssl is not None and self._ssl is not ctx:
            conn.context = self._ssl

    def set_credentials(self, credentials: NodeCredentials) -> None:
        """New connections present this certificate and trust these roots; those open
        keep what they had."""
        self._credentials = credentials
        self._ssl = self._server_context(credentials)

    def _server_context(self, credentials: NodeCredentials) -> ssl.SSLContext:
        """The node's server context, refusing removed nodes at the handshake (the
        object's class comes from the context a connection starts on)."""
        ctx = credentials.server_context()
        ctx.sslobject_class = refusing_removed(self._gate.removed)
        return ctx

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # handlers ---------------------------------------------------------------------------
    async def _ca_root(self, request: web.Request) -> web.Response:
        return web.Response(body=self._issuer.root_pem(), content_type="application/x-pem-file")

    async def _ca_join(self, request: web.Request) -> web.Response:
        peer = request.remote or ""
        if self._joins.failing(peer):
            raise ResourceExhausted(MSG_TOO_MANY_FAILED_JOINS)
        if not self._joins.allow(peer):
            raise ResourceExhausted(MSG_TOO_MANY_JOINS)
        if self._join_via is not None and not self._leading():
            status, body = await self._join_via(await request.read(), peer)
            if status == 400:  # refused by the leader: a wrong token, a bad CSR or body
                self._joins.failed(peer)
                log.warning("join refused", peer=peer)
            return web.Response(status=status, body=body, content_type="application/json")
        try:
            return await self._join(await request.read(), peer)
        except InvalidArgument:  # a wrong token, a bad CSR or body
            self._joins.failed(peer)
            log.warning("join refused", peer=peer)
            raise

    async def _join(self, raw: bytes, peer: str) -> web.Response:
        req = _decode(raw, JoinRequest)
        resp = await self._issuer.join(req, node_addr(peer, req.addr))
        log.info("node joined", node=resp.node_id, role=resp.role, hostname=req.hostname)
        return web.Response(body=encode_json(resp), content_type="application/json")

    async def _manager_join(self, request: web.Request) -> web.Response:
        """A join a follower took (its limits passed) for the leader to write; the
        joining node's address is the follower's word (a manager's certificate)."""
        if not self._leading():
            raise NoLeader()
        return await self._join(await request.read(), request.headers.get(JOIN_PEER_HEADER, ""))

    async def _ca_renew(self, request: web.Request) -> web.Response:
        ident: Identity = request[IDENTITY_KEY]
        req = _decode(await request.read(), RenewRequest)
        return web.Response(
            body=encode_json(self._issuer.renew(ident, req.csr)), content_type="application/json"
        )

    async def _session(self, request: web.Request) -> web.StreamResponse:
        if not self._leading():
            raise NoLeader("this manager does not lead: its agent sessions go to the leader")
        return await serve_session(
            request, request[IDENTITY_KEY], self._dispatcher, self._gate, self._store, self._roster
        )

    async def _manager_ping(self, request: web.Request) -> web.Response:
        return web.Response(body=b'{"ok":true}', content_type="application/json")

    async def _manager_keys(self, request: web.Request) -> web.Response:
        if self._shared_keys is None:
            raise NotFound("this manager's store is not shared")
        return web.Response(body=self._shared_keys(), content_type="application/json")

    async def _manager_member(self, request: web.Request) -> web.Response:
        if self._member is None:
            raise NotFound("this manager's store is not in embedded etcd members")
        ident: Identity = request[IDENTITY_KEY]
        body = await self._member(await request.read(), ident.node_id)
        return web.Response(body=body, content_type="application/json")


T = TypeVar("T")


def _decode(raw: bytes, typ: type[T]) -> T:
    try:
        return msgspec.json.decode(raw, type=typ)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        raise InvalidArgument(f"invalid request: {e}") from e
