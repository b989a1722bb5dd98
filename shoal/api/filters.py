"""Docker's `filters` query parameter: URL-encoded JSON `{"key": {"value": true}}`
(or the older `{"key": ["value"]}`)."""

from __future__ import annotations

import json
from collections.abc import Iterable

from shoal.errors import InvalidArgument

Filters = dict[str, list[str]]


def parse(raw: str | None, allowed: Iterable[str]) -> Filters:
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise InvalidArgument(f"invalid filter: {e}") from e
    if not isinstance(data, dict):
        raise InvalidArgument("invalid filter: expected a JSON object")
    out: Filters = {}
    allowed_set = set(allowed)
    for key, values in data.items():
        if key not in allowed_set:
            raise InvalidArgument(f"invalid filter '{key}'")
        if isinstance(values, dict):
            out[key] = [v for v, on in values.items() if on]
        elif isinstance(values, list):
            out[key] = [str(v) for v in values]
        else:
            raise InvalidArgument(f"invalid filter '{key}'")
    return out


def match_label(labels: dict[str, str] | None, wanted: list[str]) -> bool:
    """`label=k` needs the key; `label=k=v` the value too; all must hold."""
    labels = labels or {}
    for w in wanted:
        if "=" in w:
            k, v = w.split("=", 1)
            if labels.get(k) != v:
                return False
        elif w not in labels:
            return False
    return True


def match_prefix(value: str, wanted: list[str]) -> bool:
    return not wanted or any(value.startswith(w) for w in wanted)
