"""API fuzzing (issue 15): hypothesis drives the swarm endpoints of the Docker Engine
API v1.41 (tests/fixtures/docker-engine-api-v1.41.yaml) against a running daemon, a
bounded number of cases per operation and a fixed seed.

Each case is a request built from the operation's parameters and body schema: values
the spec allows, values of the wrong type, numbers beyond every Go integer, unknown and
real object IDs. What must hold of every answer:

- no 5xx, except the ones dockerd itself answers with (`DOCKER_5XX`, by message);
- no stack trace and no Python repr in any body;
- every error is Docker's shape, `{"message": "..."}` and nothing else;
- a refused request changed nothing: the store's index (read from the daemon's own
  SQLite file, as test_api_limits does) is the same after it.

The node is drained, so no task a fuzzed service asks for ever runs (its command could
be anything); replica counts the API would accept are kept small.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from .harness import Daemon, DaemonFactory, init_swarm
from .test_api_limits import store_index

pytestmark = pytest.mark.integration

SPEC_PATH = Path(__file__).resolve().parents[1] / "fixtures" / "docker-engine-api-v1.41.yaml"
PREFIXES = ("/swarm", "/nodes", "/services", "/tasks", "/secrets", "/configs")
# Operations not fuzzed: leaving the swarm ends the test's cluster.
SKIPPED = {("post", "/swarm/leave")}
CASES_PER_OPERATION = 40
SEED = 15
# 5xx answers dockerd gives too (worded as it words them): tolerated, counted.
DOCKER_5XX = (
    "update out of sequence",
    "rpc error: code = Unknown desc = constraint expected one operator",  # a bad constraint
    "rpc error: code = Unknown desc = key '",
    "rpc error: code = Unknown desc = value '",
    "This node is already part of a swarm",
)
REPR = re.compile(
    r"Traceback|File \"|object at 0x|<[a-z_.]+\.[A-Za-z_]+ |\b[A-Z][A-Za-z]*(Error|Exception)\(|"
    r"\bmsgspec\b|\bshoal\.[a-z_]+\.|aiohttp"
)
SMALL = 3  # the most replicas (or job counts) a fuzzed service that would be accepted gets
QUIET_S = 0.03
QUIET_TIMEOUT_S = 3.0

SPEC: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text())
DEFS: dict[str, Any] = SPEC["definitions"]
STATS = {"cases": 0, "refused": 0, "docker_5xx": 0}
SEEN_5XX: set[str] = set()


def operations() -> list[tuple[str, str]]:
    out = []
    for path, item in SPEC["paths"].items():
        if not path.startswith(PREFIXES):
            continue
        for method in item:
            if method in ("get", "post", "delete", "put") and (method, path) not in SKIPPED:
                out.append((method, path))
    return out


# ------------------------------------------------------------------ schema -> strategy

GO_INTS = {
    "int64": (-(1 << 63), (1 << 63) - 1),
    "uint64": (0, (1 << 64) - 1),
    "uint32": (0, (1 << 32) - 1),
    "uint16": (0, (1 << 16) - 1),
    "uint8": (0, 255),
}
JSON_LEAF = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
ANY_JSON = st.recursive(
    JSON_LEAF,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def integers(fmt: str | None) -> st.SearchStrategy[int]:
    lo, hi = GO_INTS.get(fmt or "int64", GO_INTS["int64"])
    edges = st.sampled_from([lo, hi, 0, 1, -1, hi + 1, lo - 1, 10**20, -(10**20)])
    return st.integers(0, 5) | st.integers(lo, hi) | edges


def from_schema(schema: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """Values the schema describes, with some that break it (another type, any JSON)."""
    if "$ref" in schema:
        name = schema["$ref"].split("/")[-1]
        if depth > 6:
            return st.just({})
        return st.deferred(lambda: from_schema(DEFS[name], depth + 1))
    if "allOf" in schema:
        merged: dict[str, Any] = {"type": "object", "properties": {}}
        for part in schema["allOf"]:
            part = DEFS[part["$ref"].split("/")[-1]] if "$ref" in part else part
            merged["properties"].update(part.get("properties", {}))
        return from_schema(merged, depth)
    typ = schema.get("type")
    if "enum" in schema:
        good: st.SearchStrategy[Any] = st.sampled_from(schema["enum"])
    elif typ == "object" or "properties" in schema:
        props = schema.get("properties", {})
        good = st.fixed_dictionaries(
            {}, optional={k: from_schema(v, depth + 1) for k, v in props.items()}
        )
        extra = schema.get("additionalProperties")
        if not props:
            value = from_schema(extra, depth + 1) if isinstance(extra, dict) else JSON_LEAF
            good = st.dictionaries(st.text(max_size=10), value, max_size=3)
    elif typ == "array":
        good = st.lists(from_schema(schema.get("items", {}), depth + 1), max_size=3)
    elif typ == "integer":
        good = integers(schema.get("format"))
    elif typ == "number":
        good = st.floats(allow_nan=False, allow_infinity=False) | st.integers()
    elif typ == "boolean":
        good = st.booleans()
    elif typ == "string":
        good = st.text(max_size=20) | st.sampled_from(["", "x", "busybox", "node.role==manager"])
    else:
        return ANY_JSON
    return st.one_of(good, good, good, ANY_JSON) if depth > 0 else good


def keep_small(body: Any) -> Any:
    """A replica count (or job count) the API would accept is made small: the point is
    what the API accepts, not building huge services again and again."""
    if isinstance(body, dict):
        out = {}
        for k, v in body.items():
            if (
                k in ("Replicas", "MaxConcurrent", "TotalCompletions")
                and type(v) is int
                and v > SMALL
                and v <= 500_000
            ):
                v = SMALL
            out[k] = keep_small(v)
        return out
    if isinstance(body, list):
        return [keep_small(v) for v in body]
    return body


# ------------------------------------------------------------------ the daemon


@pytest.fixture(scope="module")
def target(daemon_factory: DaemonFactory) -> Daemon:
    daemon = daemon_factory(node_name="shoal-fuzz")
    init_swarm(daemon)
    node = daemon.api.nodes()[0]["ID"]
    daemon.docker("node", "update", "--availability", "drain", node)
    daemon.docker("secret", "create", "s1", "-", input="secret")
    daemon.docker("config", "create", "c1", "-", input="config")
    daemon.create_service("seeded", "--replicas", "1", "busybox", "sleep", "1000")
    return daemon


def known_ids(daemon: Daemon) -> list[str]:
    ids: list[str] = []
    for path in ("/nodes", "/services", "/secrets", "/configs", "/tasks"):
        resp = daemon.http("GET", f"/v1.41{path}")
        if resp.status == 200:
            for obj in resp.json():
                ids.append(obj["ID"])
                name = (obj.get("Spec") or {}).get("Name")
                if name:
                    ids.append(name)
    return ids


def version_of(daemon: Daemon, path: str) -> int | None:
    resp = daemon.http("GET", f"/v1.41{path}")
    if resp.status != 200:
        return None
    return int(resp.json().get("Version", {}).get("Index", 0))


def quiet_index(daemon: Daemon) -> int:
    """The store's index once nothing is being written (a fuzzed service's tasks may
    still be on their way through the loops)."""
    deadline = time.monotonic() + QUIET_TIMEOUT_S
    last = store_index(daemon)
    while time.monotonic() < deadline:
        time.sleep(QUIET_S)
        now = store_index(daemon)
        if now == last:
            return now
        last = now
    return last


def request_for(
    draw: st.DrawFn, method: str, path: str, ids: list[str], daemon: Daemon
) -> tuple[str, str, bytes | None]:
    op = SPEC["paths"][path][method]
    params = op.get("parameters", []) + SPEC["paths"][path].get("parameters", [])
    url = path
    query: dict[str, str] = {}
    body: bytes | None = None
    for p in params:
        if p["in"] == "path":
            value = draw(st.sampled_from(ids) | st.text(min_size=1, max_size=12), label=p["name"])
            url = url.replace("{" + p["name"] + "}", urllib.parse.quote(value, safe=""))
        elif p["in"] == "query":
            if p["name"] == "follow":
                continue  # a streaming answer that never ends
            if p["name"] == "version" and draw(st.booleans(), label="current version"):
                current = version_of(daemon, url.rsplit("/update", 1)[0])
                if current is not None:
                    query["version"] = str(current)
                    continue
            if not draw(st.booleans(), label=f"with {p['name']}"):
                continue
            value = draw(from_schema({"type": p.get("type", "string")}), label=p["name"])
            if p["name"] == "filters" and draw(st.booleans()):
                value = json.dumps(
                    draw(
                        st.dictionaries(
                            st.text(max_size=8),
                            st.lists(st.text(max_size=8), max_size=2),
                            max_size=2,
                        )
                    )
                )
            query[p["name"]] = json.dumps(value) if not isinstance(value, str) else value
        elif p["in"] == "body":
            value = draw(from_schema(p.get("schema", {})) | ANY_JSON, label="body")
            value = keep_small(value)
            if isinstance(value, dict) and path.startswith("/nodes/"):
                value["Availability"] = "drain"  # never let a fuzzed task run
            raw = json.dumps(value).encode()
            if draw(st.integers(0, 9), label="mangle") == 0:
                raw = raw[: draw(st.integers(0, len(raw)))]  # cut short: malformed JSON
            body = raw
    if query:
        url += "?" + urllib.parse.urlencode(query)
    return method.upper(), "/v1.41" + url, body


def check_answer(
    daemon: Daemon, method: str, url: str, before: int, status: int, body: bytes
) -> None:
    text = body.decode(errors="replace")
    assert not REPR.search(text), f"{method} {url} -> {status}: internals in the body: {text[:500]}"
    if status >= 400:
        STATS["refused"] += 1
        data = json.loads(body)
        assert isinstance(data, dict) and list(data) == ["message"], (method, url, status, text)
        assert isinstance(data["message"], str) and data["message"], (method, url, text)
        assert "internal error" not in data["message"], (method, url, status, text)
        if status >= 500:
            assert any(m in data["message"] for m in DOCKER_5XX), (method, url, status, text)
            STATS["docker_5xx"] += 1
            SEEN_5XX.add(f"{status} {data['message'][:90]}")
        after = store_index(daemon)
        assert after == before, (
            f"{method} {url} -> {status} {text!r} moved the index {before} -> {after}"
        )


@pytest.fixture(scope="module", autouse=True)
def report() -> Any:
    t0 = time.monotonic()
    yield
    print(
        f"\nfuzzed {STATS['cases']} cases over {len(operations())} operations in "
        f"{time.monotonic() - t0:.0f} s: {STATS['refused']} refused, "
        f"{STATS['docker_5xx']} of them dockerd's own 5xx (seed {SEED})"
    )
    for line in sorted(SEEN_5XX):
        print(f"  dockerd's 5xx: {line}")


@pytest.mark.parametrize(("method", "path"), operations(), ids=lambda x: str(x))
def test_fuzz_operation(target: Daemon, method: str, path: str) -> None:
    ids = known_ids(target)

    @seed(SEED)
    @settings(
        max_examples=CASES_PER_OPERATION,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def case(data: st.DataObject) -> None:
        m, url, body = request_for(data.draw, method, path, ids, target)
        before = quiet_index(target)
        headers = {"Content-Type": "application/json"} if body is not None else {}
        resp = target.http(m, url, body, headers, timeout=30)
        STATS["cases"] += 1
        check_answer(target, m, url, before, resp.status, resp.body)

    case()
    assert target.ping() == 200
