"""The Docker Engine API server: aiohttp on unix sockets and TCP.

Every route answers with and without the `/vX.Y` prefix; every response carries the
headers the docker CLI negotiates on; every error is Docker's `{"message": ...}` with
its status code. Nothing else (no stack trace) reaches a client.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from aiohttp import web

from shoal import __version__
from shoal.api.context import DaemonContext
from shoal.api.listen import APITLS, check_hosts
from shoal.errors import http_error
from shoal.log import get_logger

if TYPE_CHECKING:
    from shoal.api import fastreads
    from shoal.api.frontdoor import FrontDoor

API_VERSION = "1.41"
MIN_API_VERSION = "1.12"
SERVER_HEADER = f"shoal/{__version__} (linux)"
# How long a stopping daemon waits for requests in flight (streams) before closing them.
SHUTDOWN_TIMEOUT_S = 2.0
CONTEXT_KEY = web.AppKey("daemon", DaemonContext)
_VERSION_RE = re.compile(r"^/v(\d+\.\d+)(/.*)$")

log = get_logger("shoal.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Handler)
# The attribute `reads` sets on a handler; SETTLES_ITSELF: the handler waits itself.
_READS_ATTR = "_shoal_reads"
SETTLES_ITSELF = "settles-itself"


def reads(*topics: str) -> Callable[[H], H]:
    """Name what store state a read route shows (kinds, RUNNING_TOPIC): the middleware
    then waits only for the not yet durable writes to those (Store.settled), not behind
    unrelated ones. `reads()`: it shows none (`/_ping`). `reads(SETTLES_ITSELF)`: the
    handler calls settled() itself, with topics it finds out. A read route not marked
    waits for every applied write."""

    def mark(handler: H) -> H:
        setattr(handler, _READS_ATTR, topics)
        return handler

    return mark


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


def docker_headers(resp: web.StreamResponse) -> None:
    """The headers dockerd sends on every answer (the CLI negotiates on them)."""
    resp.headers["API-Version"] = API_VERSION
    resp.headers["Docker-Experimental"] = "false"
    resp.headers["Ostype"] = "linux"
    resp.headers["Server"] = SERVER_HEADER


def _error(status: int, message: str) -> web.Response:
    resp = web.Response(
        status=status,
        body=json.dumps({"message": message}).encode() + b"\n",
        content_type="application/json",
    )
    docker_headers(resp)
    return resp


@web.middleware
async def docker_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    m = _VERSION_RE.match(request.path)
    if m:
        version = m.group(1)
        if _version_tuple(version) > _version_tuple(API_VERSION):
            return _error(
                400,
                f"client version {version} is too new. Maximum supported API "
                f"version is {API_VERSION}",
            )
        if _version_tuple(version) < _version_tuple(MIN_API_VERSION):
            return _error(
                400,
                f"client version {version} is too old. Minimum supported API "
                f"version is {MIN_API_VERSION}, please upgrade your client to a "
                "newer version",
            )
    try:
        if request.method in ("GET", "HEAD"):
            # reads show only what is durable, as of the request (Store.settled), of
            # what the route names (`reads`)
            daemon = request.app.get(CONTEXT_KEY)
            manager = daemon.manager if daemon is not None else None
            topics = getattr(request.match_info.handler, _READS_ATTR, None)
            if manager is not None and topics != (SETTLES_ITSELF,):
                await manager.store.settled(topics)
        resp = await handler(request)
    except ConnectionError:  # the client went away: nobody to answer
        raise
    except Exception as e:
        return _error(*http_error(e, method=request.method, path=request.path))
    if not resp.prepared:
        docker_headers(resp)
    return resp


class Router:
    """Registers each route with and without the version prefix."""

    def __init__(self, app: web.Application) -> None:
        self._app = app

    def add(self, method: str, path: str, handler: Handler) -> None:
        self._app.router.add_route(method, path, handler)
        self._app.router.add_route(method, r"/v{version:\d+\.\d+}" + path, handler)


def app_runner(app: web.Application) -> web.AppRunner:
    """The runner every listener of the daemon's serves `app` with. handler_cancellation:
    a client that goes away (a `logs -f` left) ends its handler at once instead of
    holding the daemon's shutdown."""
    return web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        handler_cancellation=True,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
    )


def build_app(daemon: DaemonContext, forwarded: bool = False) -> web.Application:
    """The Engine API app; `forwarded`: the one a leader's cluster port serves to
    followers forwarding writes (api/forward.py)."""
    from shoal.api import (
        events,
        logs,
        networks,
        nodes,
        secrets,
        services,
        swarm,
        system,
        tasks,
        visualizer,
    )
    from shoal.api.forward import forward_middleware, forwarded_middleware
    from shoal.api.metrics import latency_middleware
    from shoal.api.metrics import register as register_metrics

    # The latency middleware outermost: it times the answer docker_middleware gives;
    # a follower's writes go to the leader inside it (errors in Docker's shape).
    forward = (
        forwarded_middleware(daemon)
        if forwarded
        else forward_middleware(daemon, engine=bool(daemon.engine_host))
    )
    app = web.Application(
        middlewares=[latency_middleware, docker_middleware, forward],
        client_max_size=64 * 1024**2,
    )
    app[CONTEXT_KEY] = daemon
    router = Router(app)
    for module in (system, swarm, services, tasks, nodes, logs, secrets, networks, events):
        module.register(router)
    register_metrics(router)  # GET /metrics: before the engine's catch-all
    visualizer.register(app)  # shoal's own page, unversioned (docs/visualizer.md)
    if daemon.engine_host:
        from shoal.api import engine

        engine.register(app, daemon.engine_host)  # last: it answers every other path
    return app


def context(request: web.Request) -> DaemonContext:
    return request.app[CONTEXT_KEY]


def _prepare_socket_path(raw: str) -> Path:
    """Make the socket's directory and drop a stale socket left by a killed daemon."""
    path = Path(raw)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        path.unlink()
    return path


class APIServer:
    """Serves the app on every `--host` (unix:///path, tcp://addr:port); TCP hosts with
    `tls` when given (listen.py: who may reach which host)."""

    def __init__(
        self,
        daemon: DaemonContext,
        hosts: list[str],
        tls: APITLS | None = None,
        insecure_tcp: bool = False,
    ) -> None:
        self._daemon = daemon
        self._app = build_app(daemon)
        self._hosts = hosts
        self._tls = tls
        self._insecure_tcp = insecure_tcp
        self._runner: web.AppRunner | None = None
        self._sockets: list[Path] = []
        self._doors: list[FrontDoor] = []

    async def start(self) -> None:
        hosts = check_hosts(self._hosts, self._tls, self._insecure_tcp)
        ssl_context = self._tls.context() if self._tls is not None else None
        self._runner = app_runner(self._app)
        await self._runner.setup()
        for host in hosts:
            if host.path is not None:
                # on a thread of its own, which answers the lists beside the event loop
                # and hands it every other connection (frontdoor.py)
                path = _prepare_socket_path(str(host.path))
                door = self._front_door(path)
                door.start()
                self._doors.append(door)
                self._sockets.append(path)
                log.info("API listening", host=host.raw)
                continue
            site: web.BaseSite = web.TCPSite(
                self._runner, host.addr or "0.0.0.0", host.port, ssl_context=ssl_context
            )
            await site.start()
            if self._tls is None or not self._tls.verify:
                log.warning(
                    "API listening on TCP without client certificate verification: "
                    "whoever reaches it is root on this machine",
                    host=host.raw,
                    tls=self._tls is not None,
                )
            else:
                log.info("API listening", host=host.raw, tls="verify")

    def _front_door(self, path: Path) -> FrontDoor:
        from shoal.api import fastreads
        from shoal.api.frontdoor import FrontDoor

        loop = asyncio.get_running_loop()
        runner = self._runner
        assert runner is not None
        daemon = self._daemon

        async def adopt(sock: socket.socket) -> None:
            server = runner.server
            if server is None:  # stopping
                sock.close()
                return
            try:
                await loop.connect_accepted_socket(server, sock)
            except Exception:
                sock.close()
                raise

        def hand_over(sock: socket.socket) -> None:  # (the front door's thread)
            asyncio.run_coroutine_threadsafe(adopt(sock), loop)

        def answer(method: str, path: str, query: Mapping[str, str]) -> fastreads.Answer | None:
            return fastreads.answer(daemon, method, path, query)

        def observe(method: str, route: str, status: int, seconds: float) -> None:
            daemon.metrics.api_seconds.labels(method, route, str(status)).observe(seconds)

        return FrontDoor(path, answer, hand_over, observe)

    async def stop(self) -> None:
        for door in self._doors:
            door.stop()
        self._doors = []
        if self._runner is not None:
            await self._runner.cleanup()
        for path in self._sockets:
            path.unlink(missing_ok=True)
