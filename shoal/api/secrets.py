"""`/secrets` and `/configs`: create, list (filters), inspect, update (labels), remove.

A secret's payload is never returned: `Secret` has no field for it (the store keeps it
beside the object), so no answer built from one can carry it."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from shoal.api import filters
from shoal.api.body import decode, int_query
from shoal.api.encode import empty, json_response, wire
from shoal.api.server import Router
from shoal.api.swarm import require_manager
from shoal.manager.controlapi import secrets as ctl
from shoal.types.secret import ConfigSpec, SecretSpec

FILTERS = ("id", "name", "names", "label")


def register(r: Router) -> None:
    for kind, plural, spec_type in (
        ("secret", "secrets", SecretSpec),
        ("config", "configs", ConfigSpec),
    ):
        r.add("GET", f"/{plural}", _lister(kind))
        r.add("POST", f"/{plural}/create", _creator(kind, spec_type))
        r.add("GET", f"/{plural}/{{id}}", _inspector(kind))
        r.add("DELETE", f"/{plural}/{{id}}", _remover(kind))
        r.add("POST", f"/{plural}/{{id}}/update", _updater(kind, spec_type))


def _matches(o: Any, f: filters.Filters) -> bool:
    name = o.spec.name or ""
    if "id" in f and not filters.match_prefix(o.id, f["id"]):
        return False
    if "name" in f and not filters.match_prefix(name, f["name"]):
        return False
    if "names" in f and name not in f["names"]:
        return False
    return not ("label" in f and not filters.match_label(o.spec.labels, f["label"]))


def _lister(kind: str) -> Any:
    async def list_(request: web.Request) -> web.Response:
        m = require_manager(request)
        f = filters.parse(request.query.get("filters"), FILTERS)
        view = m.store.view()
        items = view.secrets() if kind == "secret" else view.configs()
        out = [wire(o) for o in sorted(items, key=lambda o: (o.created_at, o.id)) if _matches(o, f)]
        return json_response(out)

    return list_


def _creator(kind: str, spec_type: type[Any]) -> Any:
    async def create(request: web.Request) -> web.Response:
        m = require_manager(request)
        spec = await decode(request, spec_type)
        if kind == "secret":
            obj: Any = await ctl.create_secret(m.store, spec)
        else:
            obj = await ctl.create_config(m.store, spec)
        return json_response({"ID": obj.id}, status=201)

    return create


def _inspector(kind: str) -> Any:
    async def inspect(request: web.Request) -> web.Response:
        m = require_manager(request)
        return json_response(wire(ctl.resolve(m.store.view(), kind, request.match_info["id"])))

    return inspect


def _remover(kind: str) -> Any:
    async def remove(request: web.Request) -> web.Response:
        m = require_manager(request)
        await ctl.remove(m.store, kind, request.match_info["id"])
        return empty(204)

    return remove


def _updater(kind: str, spec_type: type[Any]) -> Any:
    async def update(request: web.Request) -> web.Response:
        m = require_manager(request)
        version = int_query(request, "version")
        spec = await decode(request, spec_type)
        await ctl.update(m.store, kind, request.match_info["id"], version, spec)
        return empty()

    return update
