"""Writes through any manager: a follower forwards them to the leader (docs/ha.md).

As SwarmKit's raft proxy forwards a follower's control API calls, a follower's Engine
API forwards the HTTP request of a mutating swarm call (`docker service create`,
`node update`, `secret rm`, ...) as it is, to the leader's cluster port under
`/manager/api/` (mutual TLS; only a manager's certificate of the cluster may use that
route: shoal/manager/clusterport/access.py), and answers what the leader answered.
The leader's cluster port serves that route with the same Engine API app. Reads are
answered from the follower's own replica; the engine's own endpoints (containers,
images) and `swarm init/join/leave/unlock` are always local.

The leader is found from the election (its key names the leader's cluster port); a
follower that knows of no leader waits up to `LEADER_WAIT_S` for one (an election
under way), then answers Docker's "The swarm does not have a leader" (503). The
leader's side (`forwarded_middleware`) takes a forwarded write only while it leads
(never a second hop), and answers with its store index (`INDEX_HEADER`): the follower
answers its client once its replica holds that index (read-your-writes: the CLI reads
the service it just created from the same manager).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Middleware

from shoal.api.context import DaemonContext
from shoal.api.server import docker_headers
from shoal.errors import NoLeader
from shoal.log import get_logger
from shoal.manager.clusterport.access import FORWARD_PREFIX
from shoal.pki import MANAGER_SERVER_NAME

# An election after the leader died takes about the lease TTL (3 s) and one round.
LEADER_WAIT_S = 10.0
FORWARD_TIMEOUT_S = 60.0
# The leader's store index after a forwarded write; the follower answers once its
# replica holds it (at most CATCH_UP_S), so a read after the write sees it.
INDEX_HEADER = "X-Shoal-Index"
CATCH_UP_S = 5.0
CONNECT_TIMEOUT_S = 5.0
WRITES = frozenset({"POST", "PUT", "DELETE"})
# The swarm's write routes (the version prefix stripped); networks only without an
# engine (under the docker runtime a network create may be the engine's own).
_SWARM_WRITE = re.compile(r"^/(services|nodes|secrets|configs|swarm/update)(/|$)")
_NETWORK_WRITE = re.compile(r"^/networks(/|$)")
# Logs come from the agents' sessions, which the leader holds: a follower streams them
# from the leader.
_LOGS = re.compile(r"^/(services|tasks)/[^/]+/logs$")
_VERSION = re.compile(r"^/v\d+\.\d+(/.*)$")
# Hop-by-hop headers and those the client library sets itself.
_DROP = frozenset({"host", "content-length", "connection", "transfer-encoding", "keep-alive"})

log = get_logger("shoal.api.forward")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_swarm_write(method: str, path: str, engine: bool) -> bool:
    if method not in WRITES:
        return False
    m = _VERSION.match(path)
    bare = m.group(1) if m else path
    return bool(_SWARM_WRITE.match(bare) or (not engine and _NETWORK_WRITE.match(bare)))


def is_logs_read(method: str, path: str) -> bool:
    m = _VERSION.match(path)
    return method == "GET" and bool(_LOGS.match(m.group(1) if m else path))


def forward_middleware(daemon: DaemonContext, engine: bool) -> Middleware:
    """The API middleware: a swarm write on a follower goes to the leader
    (`daemon.write_leader`: None when this manager takes it itself)."""

    @web.middleware
    async def forward(request: web.Request, handler: Handler) -> web.StreamResponse:
        await daemon.store_moved()  # reads and writes wait, a few seconds, not refused
        if is_logs_read(request.method, request.path):
            addr = await daemon.write_leader(LEADER_WAIT_S) if daemon.manager else None
            if addr is None:
                return await handler(request)
            return await _stream(request, addr, daemon)
        if not is_swarm_write(request.method, request.path, engine):
            return await handler(request)
        addr = await daemon.write_leader(LEADER_WAIT_S)
        if addr is None:
            return await handler(request)
        resp = await _forward(request, addr, daemon)
        # read-your-writes: answer once this replica holds what the leader wrote
        index = resp.headers.pop(INDEX_HEADER, "")
        manager = daemon.manager
        if index.isdigit() and manager is not None:
            if not await manager.store.reached(int(index), CATCH_UP_S):
                log.warning("the replica did not catch up with a forwarded write", index=index)
        return resp

    return forward


def forwarded_middleware(daemon: DaemonContext) -> Middleware:
    """The leader's side (its cluster port's `/manager/api/`): a write a follower
    forwarded is taken here, or refused if this manager no longer leads (no second
    hop); the answer carries the store index the follower waits for."""

    @web.middleware
    async def forwarded(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method not in WRITES:
            return await handler(request)
        if await daemon.write_leader(0.0) is not None:
            raise NoLeader()
        resp = await handler(request)
        manager = daemon.manager
        if manager is not None and not resp.prepared:
            resp.headers[INDEX_HEADER] = str(manager.store.durable_index)
        return resp

    return forwarded


async def _stream(request: web.Request, addr: str, daemon: DaemonContext) -> web.StreamResponse:
    """A log stream from the leader, copied as it comes (`logs -f` lasts until the
    client leaves; the leader's side then ends with the connection)."""
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP}
    url = f"https://{addr}{FORWARD_PREFIX}{request.path_qs}"
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S)
    out: web.StreamResponse | None = None
    try:
        async with daemon.forward_http().get(
            url,
            headers=headers,
            ssl=daemon.manager_client_tls(),
            server_hostname=MANAGER_SERVER_NAME,
            timeout=timeout,
        ) as resp:
            out = web.StreamResponse(status=resp.status)
            if "Content-Type" in resp.headers:
                out.headers["Content-Type"] = resp.headers["Content-Type"]
            docker_headers(out)
            await out.prepare(request)
            async for chunk in resp.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
            return out
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        log.warning("streaming logs from the leader failed", leader=addr, error=repr(e))
        if out is not None and out.prepared:
            return out  # the stream ends where the leader's did
        raise NoLeader() from e


async def _forward(request: web.Request, addr: str, daemon: DaemonContext) -> web.StreamResponse:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP}
    body = await request.read()
    url = f"https://{addr}{FORWARD_PREFIX}{request.path_qs}"
    try:
        async with daemon.forward_http().request(
            request.method,
            url,
            data=body,
            headers=headers,
            ssl=daemon.manager_client_tls(),
            server_hostname=MANAGER_SERVER_NAME,
            timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S),
        ) as resp:
            payload = await resp.read()
            out = web.Response(status=resp.status, body=payload)
            for name in ("Content-Type", INDEX_HEADER):
                if name in resp.headers:
                    out.headers[name] = resp.headers[name]
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        log.warning("forwarding a write to the leader failed", leader=addr, error=repr(e))
        raise NoLeader() from e
    log.info("write forwarded", method=request.method, path=request.path, leader=addr)
    return out
