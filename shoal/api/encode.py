"""Turning API objects into Docker's JSON: shoal's internal fields are left out."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from shoal.types.base import to_builtins
from shoal.types.service import Service
from shoal.types.task import Task

_INTERNAL: dict[type, tuple[str, ...]] = {
    Service: ("SpecVersion", "RegistryAuth"),
    Task: ("SpecVersion", "ServiceName", "RegistryAuth"),
}


def wire(obj: Any) -> Any:
    data = to_builtins(obj)
    for key in _INTERNAL.get(type(obj), ()):
        data.pop(key, None)
    return data


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(data, separators=(",", ":")).encode() + b"\n",
        status=status,
        content_type="application/json",
    )


def empty(status: int = 200) -> web.Response:
    """dockerd's bodiless answers (no Content-Type)."""
    resp = web.Response(status=status)
    resp.content_type = ""
    return resp
