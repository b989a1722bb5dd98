"""Turning API objects into Docker's JSON.

The objects the API encodes are Docker's structs, which hold Docker's fields only:
what shoal keeps beside them (shoal/types/meta.py) is not reachable from them."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from shoal.types.base import Model, to_builtins


def wire(obj: Model) -> Any:
    return to_builtins(obj)


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
