"""Turning API objects into Docker's JSON.

The objects the API encodes are Docker's structs, which hold Docker's fields only:
what shoal keeps beside them (shoal/types/meta.py) is not reachable from them."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from shoal.types.base import Model, encode_json, to_builtins


def wire(obj: Model) -> Any:
    return to_builtins(obj)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(data, separators=(",", ":")).encode() + b"\n",
        status=status,
        content_type="application/json",
    )


def json_structs_response(items: list[Any]) -> web.Response:
    """A list of API objects encoded straight from their structs (msgspec), never built
    as dicts first: what the list endpoints answer (100k tasks; docs/sim.md)."""
    return web.Response(
        body=encode_json(items) + b"\n", status=200, content_type="application/json"
    )


def empty(status: int = 200) -> web.Response:
    """dockerd's bodiless answers (no Content-Type)."""
    resp = web.Response(status=status)
    resp.content_type = ""
    return resp
