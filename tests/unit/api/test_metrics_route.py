"""`GET /metrics` on the API (shoal/api/metrics.py), and the API's latency labelled by
route pattern (the version prefix taken off, never the raw path) and status code. The
real app (build_app) on aiohttp's test server, for a daemon that is in no swarm."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from shoal.api.metrics import UNMATCHED_ROUTE
from shoal.api.server import build_app
from shoal.metrics import Metrics


class NoSwarm:
    """The API's view of a daemon that is in no swarm (no manager, no agent)."""

    node_name = "solo"
    runtime = "process"
    engine_labels: dict[str, str] = {}
    engine_host = None
    manager = None
    node_id = None
    locked = False

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.metrics = Metrics()

    async def store_moved(self) -> None:
        return None


def api_seconds_count(metrics: Metrics, method: str, route: str, status: str) -> float:
    v = metrics.registry.get_sample_value(
        "shoal_api_request_duration_seconds_count",
        {"method": method, "route": route, "status": status},
    )
    return 0.0 if v is None else v


def test_requests_are_timed_by_route_pattern_and_status(tmp_path: Path) -> None:
    daemon = NoSwarm(tmp_path)

    async def main() -> str:
        async with TestClient(TestServer(build_app(daemon))) as client:  # type: ignore[arg-type]
            assert (await client.get("/_ping")).status == 200
            assert (await client.get("/v1.41/_ping")).status == 200
            for sid in ("abc", "def"):
                resp = await client.get(f"/v1.41/services/{sid}")
                assert resp.status == 503  # not a manager
            assert (await client.get("/no/such/route")).status == 404
            resp = await client.get("/metrics")
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            return await resp.text()

    text = asyncio.run(main())
    m = daemon.metrics
    # with and without the version prefix: one route
    assert api_seconds_count(m, "GET", "/_ping", "200") == 2
    # two IDs, one series
    assert api_seconds_count(m, "GET", "/services/{id}", "503") == 2
    assert api_seconds_count(m, "GET", UNMATCHED_ROUTE, "404") == 1
    # what /metrics answered parses as Prometheus' text format, and had the requests
    # timed before it
    families = {f.name: f for f in text_string_to_metric_families(text)}
    api = families["shoal_api_request_duration_seconds"]
    routes = {s.labels["route"] for s in api.samples}
    assert {"/_ping", "/services/{id}", UNMATCHED_ROUTE} <= routes
    assert not any("abc" in r for r in routes)
    assert "shoal_process_cpu_seconds" not in families  # a unit test's Metrics: none
    assert all(name.startswith("shoal_") for name in families)
