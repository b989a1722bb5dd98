"""The daemon's Prometheus metrics: what is counted and timed where it happens.

One `Metrics` per daemon process, each with its own `CollectorRegistry` (never
prometheus_client's global one), so that several managers and agents in one test
process do not share or collide. A component takes the daemon's `Metrics`, or makes a
private one when given none (a unit test's Store, Scheduler, ...).

What is a count of objects (nodes, services, tasks by state, sessions) is not kept
here: collectors beside the manager and the agent (shoal/manager/metrics.py,
shoal/agent/metrics.py) read it from their state at scrape time. docs/metrics.md lists
every metric. Every name starts with `shoal_`.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.registry import Collector

NAMESPACE = "shoal"
# The content type of the text exposition format prometheus_client writes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Bucket bounds, in seconds, for each kind of latency.
# From a task's creation to its assignment: ms when the cluster is idle, up to minutes
# for a task that waited for a node (resources, constraints) or behind a huge build.
SCHEDULING_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
# One group commit: an fsync of SQLite's WAL (sub-ms on tmpfs, ms to 100s of ms on disk).
COMMIT_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
# An API answer (streams such as `logs -f` and `events` last as long as the client).
API_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# An executor's start (a process forked by the warm launcher; a container created and
# started by dockerd).
START_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """The instruments one daemon updates, and the registry `/metrics` exposes."""

    def __init__(self, process: bool = False) -> None:
        """`process`: also expose this process's CPU, memory and file descriptors
        (`shoal_process_*`): the daemon's, not a unit test's helpers'."""
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        if process:
            ProcessCollector(namespace=NAMESPACE, registry=r)
        # store
        self.store_commits = Counter(
            "shoal_store_commits",
            "Transactions the manager's store made durable",
            registry=r,
        )
        self.store_group_commits = Counter(
            "shoal_store_group_commits",
            "Backend commits (each makes one or more transactions durable)",
            registry=r,
        )
        self.store_commit_seconds = Histogram(
            "shoal_store_commit_duration_seconds",
            "Time one group commit took in the backend (SQLite, fsync)",
            buckets=COMMIT_BUCKETS_S,
            registry=r,
        )
        # scheduler
        self.tasks_scheduled = Counter(
            "shoal_scheduler_tasks_scheduled",
            "Tasks the scheduler assigned to a node",
            registry=r,
        )
        self.scheduling_seconds = Histogram(
            "shoal_scheduler_latency_seconds",
            "From a task's creation to its assignment to a node",
            buckets=SCHEDULING_BUCKETS_S,
            registry=r,
        )
        # dispatcher
        self.heartbeats = Counter(
            "shoal_dispatcher_heartbeats",
            "Heartbeats the dispatcher received from agents (registrations included)",
            registry=r,
        )
        # API
        self.api_seconds = Histogram(
            "shoal_api_request_duration_seconds",
            "Time to answer an API request, by method, route pattern and status code",
            ["method", "route", "status"],
            buckets=API_BUCKETS_S,
            registry=r,
        )
        # agent
        self.executor_start_seconds = Histogram(
            "shoal_executor_start_duration_seconds",
            "Time the executor took to start a task (STARTING to RUNNING), by runtime",
            ["runtime"],
            buckets=START_BUCKETS_S,
            registry=r,
        )
        self.executor_start_failures = Counter(
            "shoal_executor_start_failures",
            "Task starts that failed, by runtime",
            ["runtime"],
            registry=r,
        )

    def register(self, collector: Collector) -> None:
        """Add a collector read at scrape time (the manager's, the agent's)."""
        self.registry.register(collector)

    def exposition(self) -> bytes:
        """Every metric, in Prometheus' text format."""
        return generate_latest(self.registry)
