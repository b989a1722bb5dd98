"""Decoding request bodies into typed objects, with Docker-shaped errors.

Go's encoding/json matches field names case-insensitively, and clients rely on it
(docker-py sends `{"Mode": {"replicated": ...}}`). Bodies are therefore normalised to
the canonical field names before they are decoded, guided by the target type so that
user data (label keys, env maps) is never touched.
"""

from __future__ import annotations

import functools
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from shoal.errors import InvalidArgument

T = TypeVar("T")


@functools.cache
def _fields(struct: type) -> dict[str, tuple[str, msgspec.inspect.Type]]:
    """{lowercased wire name: (wire name, field type)} of a Struct class."""
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    return {f.encode_name.lower(): (f.encode_name, f.type) for f in info.fields}


def _normalise(value: Any, typ: msgspec.inspect.Type) -> Any:
    if isinstance(typ, msgspec.inspect.UnionType):
        for t in typ.types:
            if not isinstance(t, msgspec.inspect.NoneType):
                return _normalise(value, t)
        return value
    if isinstance(typ, msgspec.inspect.StructType) and isinstance(value, dict):
        fields = _fields(typ.cls)
        out = {}
        for key, v in value.items():
            name, ftype = (
                fields.get(key.lower(), (key, None)) if isinstance(key, str) else (key, None)
            )
            if key in out and name != key:
                continue  # an exact match wins over a case-insensitive one
            out[name] = _normalise(v, ftype) if ftype is not None else v
        return out
    if isinstance(typ, (msgspec.inspect.ListType, msgspec.inspect.SetType)) and isinstance(
        value, list
    ):
        return [_normalise(v, typ.item_type) for v in value]
    if isinstance(typ, msgspec.inspect.DictType) and isinstance(value, dict):
        return {k: _normalise(v, typ.value_type) for k, v in value.items()}
    return value


def parse(raw: bytes, typ: type[T]) -> T:
    try:
        data = msgspec.json.decode(raw)
        return msgspec.convert(_normalise(data, msgspec.inspect.type_info(typ)), type=typ)
    except msgspec.ValidationError as e:
        raise InvalidArgument(f"invalid JSON: {e}") from e
    except msgspec.DecodeError as e:
        raise InvalidArgument(f"invalid JSON: {e}") from e


async def decode(request: web.Request, typ: type[T]) -> T:
    raw = await request.read()
    if not raw.strip():
        raise InvalidArgument("request body is empty: a JSON object is expected")
    return parse(raw, typ)


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
