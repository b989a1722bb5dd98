"""`/networks`: create, list (filters), inspect, remove: swarm (overlay) networks, in
dockerd's NetworkResource shape.

Under the docker runtime the engine's own (local) networks are there too, as on
dockerd: a list merges the engine's answer for the same query, a create that is not
for an overlay network goes to the engine, and an inspect or remove of a name the swarm
does not know is passed through."""

from __future__ import annotations

import json
import re

from aiohttp import web

from shoal.api import filters
from shoal.api.body import parse, read_limited
from shoal.api.encode import empty, json_response
from shoal.api.engine import proxy_of
from shoal.api.events import parse_timestamp
from shoal.api.server import Router, context
from shoal.api.swarm import require_manager
from shoal.errors import FailedPrecondition, InvalidArgument, NotFound
from shoal.manager.controlapi import networks as ctl
from shoal.manager.manager import Manager
from shoal.types.base import now_ns, parse_time
from shoal.types.network import Network

FILTERS = ("driver", "id", "label", "name", "scope", "type", "dangling")


PRUNE_FILTERS = ("label", "label!", "until")
_GO_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h))+$")
_GO_UNIT_NS = {"ns": 1, "us": 10**3, "µs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9}
_GO_UNIT_NS["h"] = 3600 * 10**9


def register(r: Router) -> None:
    r.add("GET", "/networks", list_)
    r.add("POST", "/networks/create", create)
    r.add("POST", "/networks/prune", prune)
    r.add("GET", "/networks/{id}", inspect)
    r.add("DELETE", "/networks/{id}", remove)


def _matches(n: Network, f: filters.Filters) -> bool:
    if "name" in f and (n.spec.name or "") not in f["name"]:
        return False  # swarm networks: the exact name (INDEX.md, filters)
    if "id" in f and not filters.match_prefix(n.id, f["id"]):
        return False
    if "driver" in f and ctl.OVERLAY not in f["driver"]:
        return False
    if "scope" in f and ctl.SCOPE_SWARM not in f["scope"]:
        return False
    if "type" in f and "custom" not in f["type"]:
        return False  # every swarm network is user-defined ("custom"), none "builtin"
    return not ("label" in f and not filters.match_label(n.spec.labels, f["label"]))


def _manager(request: web.Request) -> Manager | None:
    """The manager, or None on a node that is not one (outside a swarm, or a worker):
    as on dockerd, listing there answers the node's own networks, not an error."""
    d = context(request)
    if d.manager is None and not d.locked:
        return None
    return require_manager(request)


async def list_(request: web.Request) -> web.Response:
    f = filters.parse(request.query.get("filters"), FILTERS)
    for value in f.get("type", []):
        if value not in ("custom", "builtin"):
            raise InvalidArgument(f"invalid filter: 'type'='{value}'")
    dangling: bool | None = None
    for value in f.get("dangling", []):
        if value.lower() not in ("true", "1", "false", "0"):
            raise InvalidArgument(f"Invalid filter: 'dangling'='{value}'")
        dangling = value.lower() in ("true", "1")
    m = _manager(request)
    out = []
    if m is not None:
        view = m.store.view()
        used: set[str] = set()
        if dangling is not None:  # in use: named by a service (ingress always is)
            used = {c.target or "" for s in view.services() for c in ctl.service_networks(s.spec)}
        out = [
            ctl.network_resource(n)
            for n in sorted(view.networks(), key=lambda n: (n.created_at, n.id))
            if _matches(n, f)
            and (dangling is None or dangling != (n.id in used or bool(n.spec.ingress)))
        ]
    proxy = proxy_of(request)
    if proxy is not None:
        upstream = await proxy.get(request.raw_path)
        async with upstream:
            if upstream.status == 200:
                out += [n for n in await upstream.json() if n.get("Scope") != ctl.SCOPE_SWARM]
    return json_response(out)


async def create(request: web.Request) -> web.Response:
    raw = await read_limited(request)
    if not raw.strip():
        raise InvalidArgument("request body is empty: a JSON object is expected")
    req = parse(raw, ctl.NetworkCreateRequest)
    proxy = proxy_of(request)
    if proxy is not None and (req.driver or "bridge") != ctl.OVERLAY and req.scope != "swarm":
        status, content_type, body = await proxy.send("POST", request.raw_path, raw)
        return web.Response(status=status, body=body, headers={"Content-Type": content_type})
    m = require_manager(request)
    n = await ctl.create(m.store, req)
    return json_response({"Id": n.id, "Warning": ""}, status=201)


async def inspect(request: web.Request) -> web.StreamResponse:
    ref = request.match_info["id"]
    try:
        m = _manager(request)
        if m is None:
            raise NotFound(f"network {ref} not found")
        return json_response(ctl.network_resource(ctl.resolve(m.store.view(), ref)))
    except NotFound:
        proxy = proxy_of(request)
        if proxy is None or request.query.get("scope") == ctl.SCOPE_SWARM:
            raise
        return await proxy.forward(request)


async def remove(request: web.Request) -> web.StreamResponse:
    ref = request.match_info["id"]
    try:
        m = _manager(request)
        if m is None:
            raise NotFound(f"network {ref} not found")
        await ctl.remove(m.store, ref)
        return empty(204)
    except NotFound:
        proxy = proxy_of(request)
        if proxy is None:
            raise
        return await proxy.forward(request)


def _until_ns(raw: str) -> int:
    """dockerd's `until`: a Go duration before now, an RFC 3339 time, or Unix seconds."""
    if _GO_DURATION.match(raw):
        total = sum(
            float(n) * _GO_UNIT_NS[u]
            for n, u in re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", raw)
        )
        return now_ns() - int(total)
    try:
        return parse_time(raw)
    except ValueError:
        stamp = parse_timestamp(raw, "until")
        assert stamp is not None
        return stamp


async def prune(request: web.Request) -> web.StreamResponse:
    """`docker network prune`: the swarm networks no service uses (never ingress, as
    dockerd's clusterNetworksPrune), then the engine's own under the docker runtime."""
    f = filters.parse(request.query.get("filters"), PRUNE_FILTERS)
    until = min((_until_ns(v) for v in f.get("until", [])), default=None)
    deleted: list[str] = []
    m = _manager(request)
    if m is not None:
        for n in m.store.view().networks():
            if n.spec.ingress:
                continue
            if until is not None and n.created_at and parse_time(n.created_at) > until:
                continue
            labels = n.spec.labels or {}
            if "label" in f and not filters.match_label(labels, f["label"]):
                continue
            if any(filters.match_label(labels, [w]) for w in f.get("label!", [])):
                continue
            try:
                await ctl.remove(m.store, n.id)
            except (FailedPrecondition, NotFound):
                continue  # in use (or gone meanwhile): kept, as dockerd
            deleted.append(n.spec.name or n.id)
    proxy = proxy_of(request)
    if proxy is not None:
        status, _, body = await proxy.send("POST", request.raw_path, b"")
        if status == 200:
            deleted += json.loads(body).get("NetworksDeleted") or []
    return json_response({"NetworksDeleted": deleted or None})
