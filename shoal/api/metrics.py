"""`GET /metrics`: the daemon's Prometheus metrics, on every API listener.

Every daemon serves it, workers too (their agent's metrics, the API's, the process's);
a manager adds the store's and the loops'. dockerd has no `/metrics` route on its API
(its metrics address is a separate option), so no docker client is ever answered
something else here. Like `/_ping` it shows no store state to settle first: what it
counts is read as it is now (`reads()`).

The API's latency is timed by a middleware around every route (`latency_middleware`):
labelled with the route's pattern with the version prefix taken off
(`/services/{id}`), never the raw path, so a scrape's series do not grow with IDs.
"""

from __future__ import annotations

import asyncio
import re

from aiohttp import web

from shoal.api.server import CONTEXT_KEY, Handler, Router, reads
from shoal.metrics import CONTENT_TYPE

# The route label of a request no route matched (a 404 or 405 answered by the router).
UNMATCHED_ROUTE = "unmatched"
# The status label of a request whose client went away before the answer.
STATUS_CLIENT_GONE = "499"
_VERSION_PREFIX = re.compile(r"^/v\{version[^}]*\}")


def register(router: Router) -> None:
    router.add("GET", "/metrics", get_metrics)


@reads()
async def get_metrics(request: web.Request) -> web.Response:
    body = request.app[CONTEXT_KEY].metrics.exposition()
    resp = web.Response(body=body)
    resp.headers["Content-Type"] = CONTENT_TYPE
    return resp


def route_of(request: web.Request) -> str:
    """The pattern of the route that answers `request`, without the version prefix."""
    info = request.match_info
    if info.http_exception is not None:
        return UNMATCHED_ROUTE
    resource = info.route.resource
    if resource is None:
        return UNMATCHED_ROUTE
    return _VERSION_PREFIX.sub("", resource.canonical) or "/"


@web.middleware
async def latency_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Time each request, outermost, so the status is the one sent (errors included).
    A stream (`logs -f`, `events`) is timed to its end."""
    daemon = request.app[CONTEXT_KEY]
    loop = asyncio.get_running_loop()
    started = loop.time()
    status = STATUS_CLIENT_GONE
    try:
        resp = await handler(request)
        status = str(resp.status)
        return resp
    except (ConnectionError, asyncio.CancelledError):
        raise
    except web.HTTPException as e:
        status = str(e.status)
        raise
    except Exception:
        status = "500"
        raise
    finally:
        daemon.metrics.api_seconds.labels(request.method, route_of(request), status).observe(
            loop.time() - started
        )
