"""Decoding request bodies into typed objects, with Docker-shaped errors.

Go's encoding/json matches field names case-insensitively, and clients rely on it
(docker-py sends `{"Mode": {"replicated": ...}}`). Bodies are therefore normalised to
the canonical field names before they are decoded, guided by the target type so that
user data (label keys, env maps) is never touched.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from shoal.errors import BodyTooLarge, InvalidArgument
from shoal.types.base import GO_INT_RANGES, INT64_MIN, UINT64_MAX

T = TypeVar("T")

# Largest request body the swarm endpoints read: SwarmKit refuses a transaction larger
# than 1.5 MiB (raft's MaxTransactionBytes), so no bigger spec can be stored there; a
# secret's 500 KiB of data, base64 in JSON, fits with room to spare.
MAX_BODY_BYTES = 1536 * 1024


@functools.cache
def _fields(struct: type) -> dict[str, tuple[str, msgspec.inspect.Type]]:
    """{lowercased wire name: (wire name, field type)} of a Struct class."""
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    return {f.encode_name.lower(): (f.encode_name, f.type) for f in info.fields}


# Go's names for the structs whose shoal name differs (error messages name Go's).
_GO_STRUCT_NAMES = {
    "EndpointPortConfig": "PortConfig",
    "ResourceObject": "Resources",
    "Resources": "ResourceRequirements",
}
# A number in an opaque field (Raw) still decodes into some Go integer there: anything
# beyond int64 and uint64 is refused whatever the field.
_ANY_INT_RANGE = (INT64_MIN, UINT64_MAX)


def _go_int(typ: msgspec.inspect.Type | None) -> str | None:
    """The Go integer type of a field (`extra["go"]`), or None when it is not one."""
    if isinstance(typ, msgspec.inspect.Metadata) and isinstance(typ.type, msgspec.inspect.IntType):
        return (typ.extra or {}).get("go")
    return None


class _Where:
    """Where a value sits, as encoding/json names it: the innermost struct and the path
    of field names from the root (no indices)."""

    __slots__ = ("struct", "path")

    def __init__(self, struct: str, path: tuple[str, ...]) -> None:
        self.struct = struct
        self.path = path

    def field(self, name: str) -> _Where:
        return _Where(self.struct, (*self.path, name))

    def inside(self, cls: type) -> _Where:
        return _Where(_GO_STRUCT_NAMES.get(cls.__name__, cls.__name__), self.path)

    def refuse(self, what: str, go: str) -> InvalidArgument:
        into = f"Go struct field {self.struct}.{'.'.join(self.path)}" if self.path else "Go value"
        return InvalidArgument(f"json: cannot unmarshal {what} into {into} of type {go}")


def _check_int(value: int, go: str | None, where: _Where) -> None:
    lo, hi = GO_INT_RANGES[go] if go is not None else _ANY_INT_RANGE
    if not lo <= value <= hi:
        raise where.refuse(f"number {value}", go or ("int64" if value < 0 else "uint64"))


def _check_any(value: Any, where: _Where) -> None:
    """Bounds of every integer in an opaque value (kept as the client sent it)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if type(v) is int:
            _check_int(v, None, where)
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


def _normalise(value: Any, typ: msgspec.inspect.Type | None, where: _Where) -> Any:
    if isinstance(typ, msgspec.inspect.UnionType):
        for t in typ.types:
            if not isinstance(t, msgspec.inspect.NoneType):
                return _normalise(value, t, where)
        return value
    if type(value) is int:
        _check_int(value, _go_int(typ), where)
        return value
    if isinstance(typ, msgspec.inspect.StructType) and isinstance(value, dict):
        fields = _fields(typ.cls)
        inner = where.inside(typ.cls)
        out = {}
        for key, v in value.items():
            name, ftype = (
                fields.get(key.lower(), (key, None)) if isinstance(key, str) else (key, None)
            )
            if key in out and name != key:
                continue  # an exact match wins over a case-insensitive one
            out[name] = _normalise(v, ftype, inner.field(name))
        return out
    if isinstance(typ, (msgspec.inspect.ListType, msgspec.inspect.SetType)) and isinstance(
        value, list
    ):
        return [_normalise(v, typ.item_type, where) for v in value]
    if isinstance(typ, msgspec.inspect.DictType) and isinstance(value, dict):
        return {k: _normalise(v, typ.value_type, where) for k, v in value.items()}
    if isinstance(value, (dict, list)):
        _check_any(value, where)
    return value


# What the body's type looks like, worked out once per type (msgspec's inspection of
# ServiceSpec takes 2-4 ms: every `service create` held the event loop that long).
_TYPE_INFO: dict[Any, msgspec.inspect.Type] = {}


def _type_info(typ: Any) -> msgspec.inspect.Type:
    info = _TYPE_INFO.get(typ)
    if info is None:
        info = _TYPE_INFO[typ] = msgspec.inspect.type_info(typ)
    return info


def parse(raw: bytes, typ: type[T]) -> T:
    try:
        data = msgspec.json.decode(raw)
        top = _Where(typ.__name__, ())
        return msgspec.convert(_normalise(data, _type_info(typ), top), type=typ)
    except msgspec.ValidationError as e:
        raise InvalidArgument(f"invalid JSON: {e}") from e
    except msgspec.DecodeError as e:
        raise InvalidArgument(f"invalid JSON: {e}") from e


async def read_limited(request: web.Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request's body, refused (413) as soon as it is known to exceed `limit`: from
    its Content-Length before anything is read, else while it streams in."""
    length = request.content_length
    if length is not None and length > limit:
        raise BodyTooLarge(length, limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(size, limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def decode(request: web.Request, typ: type[T]) -> T:
    raw = await read_limited(request)
    if not raw.strip():
        raise InvalidArgument("request body is empty: a JSON object is expected")
    return parse(raw, typ)


def int_query(request: web.Request, name: str, default: int | None = None) -> int:
    """A uint64 query parameter (`?version=`), parsed as Go's strconv.ParseUint."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        if default is None:
            raise InvalidArgument(f"missing parameter: {name}")
        return default
    if not (raw.isascii() and raw.isdigit()):
        raise InvalidArgument(f"invalid {name} value {raw!r}: not an integer")
    value = int(raw)
    if value > UINT64_MAX:
        raise InvalidArgument(f"invalid {name} value {raw!r}: value out of range")
    return value


def bool_query(request: web.Request, name: str) -> bool:
    return bool_value(request.query, name)


def bool_value(query: Mapping[str, str], name: str) -> bool:
    """A boolean query parameter, as dockerd reads one ("1", "true", "yes")."""
    return query.get(name, "").lower() in ("1", "true", "yes")
