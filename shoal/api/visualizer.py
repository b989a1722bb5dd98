"""The visualizer: a page of the cluster's nodes and tasks, live from the manager's store.

Every manager serves it, read-only, on the Docker API's hosts at `/visualizer` (Docker's
API has no such route; the events it reads are at `/visualizer/events`), with no access
control beyond the listener's own (a `--tlsverify` host asks the browser for a client
certificate), and, with `--visualizer-addr HOST:PORT`, on a port of its own that serves
nothing else (the page at `/` as well).

- **The page** (`static/visualizer.html`, package data) is one HTML file with its CSS and
  vanilla JS: nothing to build, nothing fetched from elsewhere. Nodes are columns (role,
  state, availability), tasks are cards coloured by their service's name (state, slot).
- **The stream** is server-sent events: `snapshot` (everything shown), then `node`,
  `service` and `task` changes as the store commits them (shoal/manager/visualizer.py
  builds them; only the views it defines go out). A comment every HEARTBEAT_S keeps
  proxies from closing an idle stream. A browser that takes no write for
  WRITE_TIMEOUT_S is cut off; one that falls behind the feed is closed by it; either
  way its page reconnects (`retry:`) and starts again from a snapshot.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
from functools import cache
from importlib import resources

from aiohttp import web

from shoal.api.context import DaemonContext
from shoal.api.listen import is_loopback
from shoal.api.server import CONTEXT_KEY, app_runner, docker_middleware, reads
from shoal.api.swarm import require_manager
from shoal.clock import Clock
from shoal.log import get_logger
from shoal.manager.visualizer import WATCHED_KINDS, Subscription

PAGE_PATH = "/visualizer"
EVENTS_PATH = "/visualizer/events"
# A comment line sent when nothing happened for this long, so the stream stays open.
HEARTBEAT_S = 15.0
# A browser that does not take one write in this long is cut off.
WRITE_TIMEOUT_S = 30.0
# How long a page waits before it reconnects after its stream ended (SSE `retry:`).
RETRY_MS = 1000
_HEARTBEAT = b": keepalive\n\n"

log = get_logger("shoal.api.visualizer")


@cache
def page() -> tuple[bytes, str]:
    """The page, and its Content-Security-Policy: nothing loaded from anywhere, the
    stream from this origin, and only the page's own script (by its hash) runs."""
    html = resources.files("shoal.api").joinpath("static/visualizer.html").read_bytes()
    m = re.search(rb"<script>(.*?)</script>", html, re.S)
    assert m is not None, "visualizer.html has its script inline"
    digest = base64.b64encode(hashlib.sha256(m.group(1)).digest()).decode()
    csp = (
        "default-src 'none'; connect-src 'self'; style-src 'unsafe-inline'; "
        f"script-src 'sha256-{digest}'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return html, csp


@reads()
async def serve_page(request: web.Request) -> web.Response:
    html, csp = page()
    return web.Response(
        body=html,
        content_type="text/html",
        charset="utf-8",
        headers={
            "Content-Security-Policy": csp,
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
        },
    )


@reads(*WATCHED_KINDS)
async def events(request: web.Request) -> web.StreamResponse:
    manager = require_manager(request)
    snap, sub = manager.visualizer.subscribe()
    try:
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # a reverse proxy must not hold events back
            }
        )
        await resp.prepare(request)
        try:
            await _send(resp, b"retry: %d\n\n" % RETRY_MS + snap, manager.clock)
            while (batch := await _next(sub, manager.clock)) is not None:
                await _send(resp, b"".join(batch) if batch else _HEARTBEAT, manager.clock)
        except TimeoutError:  # the browser takes nothing: cut it off
            log.info("visualizer client cut off: it stopped reading")
            if request.transport is not None:
                request.transport.abort()
            return resp
        except ConnectionError:  # the browser went away
            return resp
        with contextlib.suppress(ConnectionError):
            await resp.write_eof()
        return resp
    finally:
        sub.close()


async def _next(sub: Subscription, clock: Clock) -> list[bytes] | None:
    """The next batch of events; [] when HEARTBEAT_S passed without one; None once the
    subscription is closed."""
    try:
        return await clock.wait_for(sub.next_batch(), HEARTBEAT_S)
    except TimeoutError:
        return [] if sub.closed_reason is None else None


async def _send(resp: web.StreamResponse, data: bytes, clock: Clock) -> None:
    await clock.wait_for(resp.write(data), WRITE_TIMEOUT_S)


def register(app: web.Application) -> None:
    """The page and its stream on the Docker API's app (unversioned: shoal's own)."""
    app.router.add_get(PAGE_PATH, serve_page)
    app.router.add_get(EVENTS_PATH, events, allow_head=False)


def build_app(daemon: DaemonContext) -> web.Application:
    """The visualizer's own port: the page (at `/` too) and its stream, nothing else."""
    app = web.Application(middlewares=[docker_middleware])
    app[CONTEXT_KEY] = daemon
    app.router.add_get("/", serve_page)
    register(app)
    return app


class VisualizerServer:
    """Serves the visualizer alone on `--visualizer-addr HOST:PORT`, plain HTTP."""

    def __init__(self, daemon: DaemonContext, host: str, port: int) -> None:
        self._app = build_app(daemon)
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._runner = app_runner(self._app)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host or "0.0.0.0", self._port).start()
        if is_loopback(self._host):
            log.info("visualizer listening", addr=f"{self._host}:{self._port}")
        else:
            log.warning(
                "visualizer listening beyond this machine: whoever reaches it sees the "
                "cluster's node, service and task names and states",
                addr=f"{self._host}:{self._port}",
            )

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
