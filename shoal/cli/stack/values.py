"""The values Compose writes as text, turned into the Engine API's numbers and shapes:
Go durations, docker's sizes, CPUs, `k=v` maps, published ports. Each refusal names
the path of the bad value."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from shoal.cli.stack.compose import ComposeError, PortLong, StrMap

NANO = 1_000_000_000

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": NANO,
    "m": 60 * NANO,
    "h": 3600 * NANO,
}


def duration(value: str, path: str) -> int:
    """Go's time.ParseDuration, in nanoseconds ("1m30s", "300ms", "0")."""
    text = value.strip()
    if text == "0":
        return 0
    pos, total = 0, Decimal(0)
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            break
        total += Decimal(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ComposeError(path, f"invalid duration {value!r} (e.g. 10s, 1m30s, 500ms)")
    return int(total)


_BYTES = re.compile(r"^(\d+(?:\.\d+)?) ?([kmgtp])?i?b?$", re.I)


def memory(value: str | int, path: str) -> int:
    """docker's RAMInBytes: 32M, 1g, 512k, 100b (binary multiples), or a number."""
    if isinstance(value, int):
        return value
    m = _BYTES.match(value.strip())
    if m is None:
        raise ComposeError(path, f"invalid size {value!r} (e.g. 32M, 1G)")
    unit = "bkmgtp".index((m.group(2) or "b").lower())
    return int(Decimal(m.group(1)) * 1024**unit)


def cpus(value: str | float, path: str) -> int:
    try:
        n = Decimal(str(value))
    except InvalidOperation:
        raise ComposeError(path, f"invalid number of CPUs {value!r}") from None
    if n < 0:
        raise ComposeError(path, f"invalid number of CPUs {value!r}")
    return int(n * NANO)


def str_map(value: StrMap | None, path: str) -> dict[str, str]:
    """A mapping or a list of `k=v` (a bare `k` is an empty value)."""
    if value is None:
        return {}
    if isinstance(value, list):
        out = {}
        for i, item in enumerate(value):
            k, _, v = item.partition("=")
            if not k:
                raise ComposeError(f"{path}[{i}]", f"invalid entry {item!r}")
            out[k] = v
        return out
    return {k: _scalar(v) for k, v in value.items()}


def _scalar(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


_PORT = re.compile(r"^(?:(?P<published>\d+):)?(?P<target>\d+)(?:/(?P<proto>tcp|udp|sctp))?$")


def port(value: str | int | PortLong, path: str) -> dict[str, Any]:
    if isinstance(value, PortLong):
        out: dict[str, Any] = {
            "Protocol": value.protocol or "tcp",
            "TargetPort": value.target,
            "PublishMode": value.mode or "ingress",
        }
        if value.published:
            out["PublishedPort"] = value.published
        return _check_port(out, path)
    m = _PORT.match(str(value).strip())
    if m is None:
        raise ComposeError(
            path, f"invalid port {value!r} (PUBLISHED:TARGET[/PROTOCOL] or TARGET; no host IP)"
        )
    out = {"Protocol": m.group("proto") or "tcp", "TargetPort": int(m.group("target"))}
    if m.group("published"):
        out["PublishedPort"] = int(m.group("published"))
    out["PublishMode"] = "ingress"
    return _check_port(out, path)


def _check_port(p: dict[str, Any], path: str) -> dict[str, Any]:
    for key in ("TargetPort", "PublishedPort"):
        if key in p and not 0 < p[key] < 65536:
            raise ComposeError(path, f"port {p[key]} out of range 1-65535")
    return p
