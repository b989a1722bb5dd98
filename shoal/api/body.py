"""Decoding request bodies into typed objects, with Docker-shaped errors."""

from __future__ import annotations

from typing import TypeVar

import msgspec
from aiohttp import web

from shoal.errors import InvalidArgument

T = TypeVar("T")


async def decode(request: web.Request, typ: type[T]) -> T:
    raw = await request.read()
    if not raw.strip():
        raise InvalidArgument("request body is empty: a JSON object is expected")
    try:
        return msgspec.json.decode(raw, type=typ)
    except msgspec.ValidationError as e:
        raise InvalidArgument(f"invalid JSON: {e}") from e
    except msgspec.DecodeError as e:
        raise InvalidArgument(f"invalid JSON: {e}") from e


def int_query(request: web.Request, name: str, default: int | None = None) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        if default is None:
            raise InvalidArgument(f"missing parameter: {name}")
        return default
    try:
        return int(raw)
    except ValueError as e:
        raise InvalidArgument(f"invalid {name} value {raw!r}: not an integer") from e


def bool_query(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() in ("1", "true", "yes")
