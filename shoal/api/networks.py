"""`/networks`: create, list (filters), inspect, remove: swarm (overlay) networks, in
dockerd's NetworkResource shape."""

from __future__ import annotations

from aiohttp import web

from shoal.api import filters
from shoal.api.body import decode
from shoal.api.encode import empty, json_response
from shoal.api.server import Router
from shoal.api.swarm import require_manager
from shoal.manager.controlapi import networks as ctl
from shoal.types.network import Network

FILTERS = ("driver", "id", "label", "name", "scope", "type", "dangling")


def register(r: Router) -> None:
    r.add("GET", "/networks", list_)
    r.add("POST", "/networks/create", create)
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


async def list_(request: web.Request) -> web.Response:
    m = require_manager(request)
    f = filters.parse(request.query.get("filters"), FILTERS)
    for value in f.get("type", []):
        if value not in ("custom", "builtin"):
            raise filters.InvalidArgument(f"invalid filter: 'type'='{value}'")
    view = m.store.view()
    out = [
        ctl.network_resource(n)
        for n in sorted(view.networks(), key=lambda n: (n.created_at, n.id))
        if _matches(n, f)
    ]
    return json_response(out)


async def create(request: web.Request) -> web.Response:
    m = require_manager(request)
    req = await decode(request, ctl.NetworkCreateRequest)
    n = await ctl.create(m.store, req)
    return json_response({"Id": n.id, "Warning": ""}, status=201)


async def inspect(request: web.Request) -> web.Response:
    m = require_manager(request)
    return json_response(
        ctl.network_resource(ctl.resolve(m.store.view(), request.match_info["id"]))
    )


async def remove(request: web.Request) -> web.Response:
    m = require_manager(request)
    await ctl.remove(m.store, request.match_info["id"])
    return empty(204)
