"""`GET /events`: the manager's swarm events, and the engine's own under the docker runtime.

As dockerd's route (api/server/router/system): `since` and `until` are Unix times
(`seconds[.fraction]`); with either, the answer starts with the logged events in that
window; with an `until` already past it ends there, with one still to come it goes on
streaming live events until then, and without one until the client goes. The answer
is `application/json`, chunked, one EventMessage per line, each sent as it happens.

Under the docker runtime the local engine's events (containers, images, local
networks, ...; scope "local") are merged in: the same query goes to the engine's
`/events`, unless the filters leave only swarm types or only the swarm scope. For a
window already past, both are merged in time order; live, each line goes out as it
comes from either side (so the engine's past events may follow the swarm's).

A subscriber that reads too slowly is closed by the event log and its stream ends;
nothing else waits for it (shoal/manager/events.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Coroutine
from typing import Any

import aiohttp
from aiohttp import web

from shoal.api import filters
from shoal.api.engine import proxy_of
from shoal.api.server import Router, context, docker_headers
from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.errors import InvalidArgument
from shoal.manager.events import FILTER_KEYS, EventFilter, LoggedEvent, Subscription
from shoal.types.event import SCOPE_LOCAL, SWARM_EVENT_TYPES

# Types only the swarm has: a `type=` filter naming only these leaves the engine out.
_SWARM_ONLY_TYPES = frozenset(SWARM_EVENT_TYPES) - {"network"}


def register(r: Router) -> None:
    r.add("GET", "/events", events)


def parse_timestamp(raw: str, name: str) -> int | None:
    """dockerd's `seconds[.fraction]` (timetypes.ParseTimestamps) in ns; None if empty."""
    if not raw:
        return None
    secs, _, frac = raw.partition(".")
    try:
        seconds = int(secs)
        nanos = int((frac + "000000000")[:9]) if frac else 0
    except ValueError as e:
        raise InvalidArgument(f"invalid {name} value {raw!r}") from e
    return seconds * 1_000_000_000 + (nanos if seconds >= 0 else -nanos)


def wants_engine(filter_: EventFilter) -> bool:
    types = filter_.values("type")
    if types and all(t in _SWARM_ONLY_TYPES for t in types):
        return False
    scopes = filter_.values("scope")
    return not scopes or SCOPE_LOCAL in scopes


async def events(request: web.Request) -> web.StreamResponse:
    q = request.query
    since = parse_timestamp(q.get("since", ""), "since")
    until = parse_timestamp(q.get("until", ""), "until")
    if until is not None and since is not None and until < since:
        raise InvalidArgument(
            f"`since` time ({q['since']}) cannot be after `until` time ({q['until']})"
        )
    filter_ = EventFilter(filters.parse(q.get("filters"), FILTER_KEYS))
    daemon = context(request)
    manager = None if daemon.locked else daemon.manager
    clock: Clock = manager.clock if manager is not None else SYSTEM_CLOCK
    only_past = until is not None and until < clock.time_ns()

    proxy = proxy_of(request) if wants_engine(filter_) else None
    upstream = await proxy.get(f"/events?{request.query_string}") if proxy else None
    if upstream is not None and upstream.status != 200:
        # the engine refused the query (a filter it does not know): answer as it did
        async with upstream:
            body = await upstream.read()
        return web.Response(status=upstream.status, body=body, content_type="application/json")

    past: list[LoggedEvent] = []
    sub: Subscription | None = None
    if manager is not None:
        past, sub = manager.events.subscribe(filter_, since, until)
    try:
        resp = web.StreamResponse()
        resp.content_type = "application/json"
        resp.enable_chunked_encoding()
        docker_headers(resp)
        await resp.prepare(request)  # the CLI waits for the headers before it prints
        if only_past:
            engine_lines = await _read_all(upstream) if upstream is not None else []
            for line in _merge([ev.line for ev in past], engine_lines):
                await resp.write(line)
        else:
            for ev in past:
                await resp.write(ev.line)
            await _stream_live(resp, sub, upstream, clock, until)
        with contextlib.suppress(ConnectionError):
            await resp.write_eof()
        return resp
    finally:
        if sub is not None:
            sub.close()
        if upstream is not None:
            upstream.close()


async def _stream_live(
    resp: web.StreamResponse,
    sub: Subscription | None,
    upstream: aiohttp.ClientResponse | None,
    clock: Clock,
    until: int | None,
) -> None:
    """Until `until` (or the client leaves): the swarm's events as they are published
    and the engine's as they come. The stream ends early when the subscription is
    closed (too slow, the manager stopped); without a manager, when the engine's ends."""
    pumps: list[asyncio.Task[None]] = []

    def start(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        pumps.append(task)
        return task

    main: asyncio.Future[None] | None = None
    if upstream is not None:
        main = start(_pump_engine(resp, upstream))
    if sub is not None:
        main = start(_pump_swarm(resp, sub))
    if main is None:
        main = asyncio.get_running_loop().create_future()  # nothing to send: only wait
        pumps.append(main)  # type: ignore[arg-type]
    try:
        if until is None:
            await main
        else:
            with contextlib.suppress(TimeoutError):
                await clock.wait_for(asyncio.shield(main), (until - clock.time_ns()) / 1e9)
    except ConnectionError:
        pass
    finally:
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)


async def _pump_swarm(resp: web.StreamResponse, sub: Subscription) -> None:
    async for batch in sub:
        await resp.write(b"".join(ev.line for ev in batch))


async def _pump_engine(resp: web.StreamResponse, upstream: aiohttp.ClientResponse) -> None:
    while line := await upstream.content.readline():
        await resp.write(line)


async def _read_all(upstream: aiohttp.ClientResponse) -> list[bytes]:
    lines = (await upstream.read()).splitlines()
    return [line + b"\n" for line in lines if line.strip()]


def _merge(swarm: list[bytes], engine: list[bytes]) -> list[bytes]:
    """Both sides' lines in time order (each side is in order already; stable)."""
    if not engine:
        return swarm
    return sorted(swarm + engine, key=_time_nano)


def _time_nano(line: bytes) -> int:
    try:
        return int(json.loads(line).get("timeNano", 0))
    except (ValueError, AttributeError):
        return 0
