"""Field-for-field fidelity with dockerd 20.10: the *shape* of what shoal answers (the
set of key paths, each with its value's JSON type) against what dockerd answered to the
same request in the recorded transcripts (tests/fixtures/docker-cli-transcripts).

Values differ (IDs, times, certificates); shapes must not: a field dockerd always
sends, even at a zero value, must be there; one it never sends must not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shoal.api.encode import wire
from shoal.manager.ca.root import RootCA
from shoal.manager.controlapi.swarm import init_spec, new_cluster
from shoal.manager.store import MemoryBackend, Store
from shoal.types.swarm import SwarmInitRequest

TRANSCRIPTS = Path(__file__).resolve().parents[2] / "fixtures" / "docker-cli-transcripts"

# Known differences, each with its reason; the test fails if one disappears (so the
# list stays true) or a new one appears.
KNOWN_SWARM_DIFFERENCES: set[str] = set()


def shape(value: Any, path: str = "") -> set[str]:
    """`path: type` for every key path of a JSON value (list elements under `[]`)."""
    if isinstance(value, dict):
        out = {f"{path}: object"} if path else set()
        for k, v in value.items():
            out |= shape(v, f"{path}.{k}")
        return out
    if isinstance(value, list):
        out = {f"{path}: array"}
        for v in value:
            out |= shape(v, f"{path}[]")
        return out
    kind = {bool: "boolean", int: "number", float: "number", str: "string"}.get(type(value), "null")
    return {f"{path}: {kind}"}


def differences(dockerd: Any, shoal: Any) -> set[str]:
    theirs, ours = shape(dockerd), shape(shoal)
    return {f"only dockerd: {p}" for p in theirs - ours} | {
        f"only shoal: {p}" for p in ours - theirs
    }


def recorded(name: str, method: str, path: str) -> Any:
    for e in json.loads((TRANSCRIPTS / name).read_text()):
        if e["method"] == method and e["path"] == path and e["status"] == 200:
            return e["response_body"]
    raise AssertionError(f"{method} {path} not in {name}")


async def _swarm_after_init() -> Any:
    store = Store(MemoryBackend())
    cluster = new_cluster("c1", init_spec(None), RootCA.create(), SwarmInitRequest())
    await store.update(lambda tx: tx.create(cluster))
    view = store.view().cluster()
    assert view is not None
    return wire(view)


def test_swarm_inspect_after_a_plain_init_has_dockerds_shape() -> None:
    import asyncio

    dockerd = recorded("009-swarm-update-task-history-limit.json", "GET", "/v1.41/swarm")
    ours = asyncio.run(_swarm_after_init())
    assert differences(dockerd, ours) == KNOWN_SWARM_DIFFERENCES


@pytest.mark.parametrize(
    ("a", "b", "diff"),
    [
        ({"A": 0}, {"A": 0}, set()),
        ({"A": 0}, {}, {"only dockerd: .A: number"}),
        (
            {"A": [{"B": "x"}]},
            {"A": []},
            {"only dockerd: .A[]: object", "only dockerd: .A[].B: string"},
        ),
    ],
)
def test_shape_diff(a: Any, b: Any, diff: set[str]) -> None:
    assert differences(a, b) == diff
