"""Prometheus metrics, checked by the real Prometheus server (Debian's `prometheus`)
scraping every daemon of a three-node cluster: the manager and both workers serve
`/metrics` on their API's loopback TCP host; the running tasks by service Prometheus
answers (from the manager's store, and summed over the three agents) match
`docker service ls` REPLICAS, before and after a scale; the instruments of issue 12
(scheduling, heartbeats, commits, API latency by route, executor starts) have counted.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ..cluster_harness import Cluster, NodeFactory
from ..harness import PROGRESS_TIMEOUT_S, wait_until
from ..prometheus import Prometheus

SLEEP = ("busybox", "sleep", "1000")
# Prometheus scrapes every second: what changed shows within a few scrapes.
SHOWN_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def tcp_trio(node_factory: NodeFactory) -> Cluster:
    """Three daemons on the host's loopback, each with its API on a TCP port too."""
    manager = node_factory("node-1", tcp=True)
    cluster = Cluster.init(manager)
    for name in ("node-2", "node-3"):
        cluster.join(node_factory(name, tcp=True))
    return cluster


@pytest.fixture
def prometheus(tcp_trio: Cluster, tmp_path: Path) -> Iterator[Prometheus]:
    targets = {name: node.tcp_host.removeprefix("tcp://") for name, node in tcp_trio.nodes.items()}
    server = Prometheus(targets, tmp_path / "prometheus.log")
    try:
        server.start()
        yield server
    finally:
        server.close()
    assert not server.root.exists()


def service_ls(cluster: Cluster) -> dict[str, tuple[int, int]]:
    """{name: (running, desired)} as `docker service ls` shows REPLICAS."""
    out = cluster.manager.docker("service", "ls", "--format", "{{.Name}} {{.Replicas}}").stdout
    shown = {}
    for line in out.splitlines():
        name, replicas = line.split()
        running, desired = replicas.split("/")
        shown[name] = (int(running), int(desired))
    return shown


def wait_matches(cluster: Cluster, prom: Prometheus, expect: dict[str, int]) -> None:
    """Wait until `docker service ls` shows `expect` running (all converged), then
    until Prometheus' answers match it, from the store and from the agents."""

    def converged() -> dict[str, tuple[int, int]] | None:
        shown = service_ls(cluster)
        want = {name: (n, n) for name, n in expect.items()}
        return shown if shown == want else None

    shown = wait_until(converged, timeout=PROGRESS_TIMEOUT_S, what=f"service ls showing {expect}")
    running = {name: float(r) for name, (r, _) in shown.items()}

    def store_view() -> dict[str, float] | None:
        got = prom.by('sum by (service) (shoal_tasks{state="running"})', "service")
        return got if got == running else None

    def agents_view() -> dict[str, float] | None:
        got = prom.by('sum by (service) (shoal_agent_tasks{state="running"})', "service")
        got = {s: v for s, v in got.items() if v}  # a service scaled to 0 shows no task
        return got if got == {s: v for s, v in running.items() if v} else None

    wait_until(store_view, timeout=SHOWN_TIMEOUT_S, what=f"prometheus: store running {running}")
    wait_until(agents_view, timeout=SHOWN_TIMEOUT_S, what=f"prometheus: agents running {running}")


def per_node_now(prom: Prometheus) -> dict[str, float]:
    return prom.by('sum by (node) (shoal_agent_tasks{state="running"})', "node")


def test_prometheus_scrapes_every_daemon_and_agrees_with_service_ls(
    tcp_trio: Cluster, prometheus: Prometheus
) -> None:
    cluster = tcp_trio
    try:
        up = prometheus.wait_up(3)
        assert sorted(up) == ["node-1", "node-2", "node-3"]
        cluster.manager.create_service("web", "--replicas", "5", *SLEEP)
        cluster.manager.create_service("api", "--replicas", "2", *SLEEP)
        cluster.manager.create_service("agent", "--mode", "global", *SLEEP)
        wait_matches(cluster, prometheus, {"web": 5, "api": 2, "agent": 3})

        # every daemon was scraped for its own tasks: the three agents each run some
        per_node = prometheus.by('sum by (node) (shoal_agent_tasks{state="running"})', "node")
        assert set(per_node) == {"node-1", "node-2", "node-3"}
        assert all(n >= 1 for n in per_node.values()), per_node

        cluster.manager.docker("service", "scale", "--detach", "web=1", "api=4")
        wait_matches(cluster, prometheus, {"web": 1, "api": 4, "agent": 3})

        # the manager's gauges and counters, as Prometheus holds them
        nodes = prometheus.by("shoal_nodes", "state")
        assert prometheus.by('shoal_nodes{state="ready",availability="active"}', "node") == {
            "node-1": 3.0
        }, nodes
        assert prometheus.by("shoal_dispatcher_sessions", "node") == {"node-1": 3.0}
        assert prometheus.by('shoal_services{mode="replicated"}', "node") == {"node-1": 2.0}
        scheduled = prometheus.by("shoal_scheduler_tasks_scheduled_total", "node")
        assert scheduled["node-1"] >= 5 + 2 + 2  # the first tasks and api's scale-up
        latency = prometheus.by("shoal_scheduler_latency_seconds_count", "node")
        assert latency["node-1"] == scheduled["node-1"]
        assert prometheus.by("shoal_dispatcher_heartbeats_total", "node")["node-1"] > 3
        commits = prometheus.by("shoal_store_commits_total", "node")["node-1"]
        assert commits > 0
        assert prometheus.by("shoal_store_commit_duration_seconds_count", "node")["node-1"] > 0
        # the API's latency, by route pattern: the CLI's service list from the manager
        routes = prometheus.by(
            'sum by (route) (shoal_api_request_duration_seconds_count{node="node-1",status="200"})',
            "route",
        )
        assert routes.get("/services", 0) > 0, routes
        assert routes.get("/services/{id}/update", 0) > 0, routes  # the scale
        ids = [svc["ID"] for svc in cluster.manager.api.services()]
        assert not [r for r in routes if any(i in r for i in ids)], routes
        # the executor's starts, timed on every node (agents: workers too)
        starts = prometheus.by(
            "sum by (node) (shoal_executor_start_duration_seconds_count)", "node"
        )
        assert set(starts) == {"node-1", "node-2", "node-3"} and min(starts.values()) >= 1
        # only the manager holds the store: a worker shows no store gauges
        assert set(prometheus.by("shoal_tasks", "node")) == {"node-1"}
        # the unix socket serves the same: a worker's own tasks, in the text format
        worker = cluster.nodes["node-2"]
        resp = worker.http("GET", "/metrics")
        assert resp.status == 200 and resp.headers["content-type"].startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(resp.body.decode())}
        mine = sum(
            s.value for s in families["shoal_agent_tasks"].samples if s.labels["state"] == "running"
        )
        assert mine == per_node_now(prometheus)["node-2"]
        assert "shoal_tasks" not in families and "shoal_process_cpu_seconds" in families
    finally:
        cluster.remove_all_services()
