"""The base Struct and time helpers shared by every API object."""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec

# Integers as Docker's Go types hold them: dockerd refuses a number outside its field's
# type while decoding the body (400), so shoal never stores one. `extra["go"]` names the
# Go type; api/body.py checks the range of GO_INT_RANGES[go] (msgspec cannot bound an int
# beyond int64) and words a refusal as encoding/json does.
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
UINT64_MAX = (1 << 64) - 1
UINT32_MAX = (1 << 32) - 1
GO_INT_RANGES: dict[str, tuple[int, int]] = {
    "int64": (INT64_MIN, INT64_MAX),
    "int": (INT64_MIN, INT64_MAX),
    "time.Duration": (INT64_MIN, INT64_MAX),
    "uint64": (0, UINT64_MAX),
    "uint32": (0, UINT32_MAX),
}
Int64 = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX, extra={"go": "int64"})]
GoInt = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX, extra={"go": "int"})]
Duration = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX, extra={"go": "time.Duration"})]
UInt64 = Annotated[int, msgspec.Meta(ge=0, extra={"go": "uint64"})]
UInt32 = Annotated[int, msgspec.Meta(ge=0, le=UINT32_MAX, extra={"go": "uint32"})]


class Model(
    msgspec.Struct, frozen=True, omit_defaults=True, rename="pascal", kw_only=True, gc=False
):
    """Base of every API object: immutable, PascalCase on the wire, unset fields left out.

    Optional fields default to None so that what a client sent (even `false` or `{}`)
    round-trips exactly through the store: read-modify-write clients send it back.
    `omit_defaults` leaves out any value equal to its default, so a field Docker always
    sends has no default (it is required) unless its default is one Docker omits too.
    `gc=False`: API objects hold no reference cycles, so the cyclic collector need not
    track them (with 100k tasks in the store its pauses otherwise take seconds).
    """


class Version(Model):
    index: UInt64 = 0


def now_ns() -> int:
    return time.time_ns()


def format_time(ns: int) -> str:
    """RFC 3339 in UTC with all nine fraction digits: parsed by every Docker client, and
    fixed-width, so timestamps also sort correctly as strings."""
    secs, frac = divmod(ns, 1_000_000_000)
    return f"{_second(secs)}.{frac:09d}Z"


@functools.lru_cache(maxsize=64)
def _second(secs: int) -> str:
    return datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def parse_time(text: str) -> int:
    """Inverse of format_time (accepts any RFC 3339 time with up to 9 fraction digits)."""
    text = text.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    frac_ns = 0
    if "." in text:
        head, rest = text.split(".", 1)
        digits = ""
        for ch in rest:
            if not ch.isdigit():
                break
            digits += ch
        tz = rest[len(digits) :]
        frac_ns = int((digits + "000000000")[:9])
        text = head + tz
    dt = datetime.fromisoformat(text)
    return int(dt.timestamp()) * 1_000_000_000 + frac_ns


def to_builtins(obj: Any) -> Any:
    return msgspec.to_builtins(obj)


json_encoder = msgspec.json.Encoder()


def encode_json(obj: Any) -> bytes:
    return json_encoder.encode(obj)
