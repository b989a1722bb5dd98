"""The manager's gauges, read from its in-memory store at each scrape.

What the store holds (nodes, services, tasks by state) is counted when Prometheus asks,
from a view, never kept by hand beside the store: the counts cannot drift from it. Tasks
by service and state come from the store's own index (`ReadTx.task_states`), so a scrape
costs O(services × states), not a walk over 100ks of tasks. docs/metrics.md lists them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from shoal.manager.store import ReadTx, Store
from shoal.types.task import TaskState

# Every value the labels of shoal_nodes take, so a query sees zeros, not absent series.
NODE_STATES = ("unknown", "down", "ready", "disconnected")
NODE_AVAILABILITIES = ("active", "pause", "drain")
SERVICE_MODES = ("replicated", "global", "replicated-job", "global-job")
TASK_STATES = tuple(s.wire for s in TaskState)


class _Manager(Protocol):
    """What the collector reads of a running manager (shoal.manager.manager.Manager)."""

    @property
    def store(self) -> Store: ...

    def statistics(self) -> dict[str, dict[str, int]]: ...


class ManagerCollector(Collector):
    """Gauges of the store's contents and of the loops, for the manager `current()`
    returns at scrape time (None: this daemon runs no manager now, nothing to show)."""

    def __init__(self, current: Callable[[], _Manager | None]) -> None:
        self._current = current

    def describe(self) -> list[object]:
        return []  # the families exist only while a manager runs: none to check up front

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        manager = self._current()
        if manager is None:
            return
        view = manager.store.view()
        yield nodes_family(view)
        yield services_family(view)
        yield tasks_family(view)
        stats = manager.statistics()
        yield GaugeMetricFamily(
            "shoal_dispatcher_sessions",
            "Agent sessions the dispatcher holds open",
            value=stats["dispatcher"]["sessions"],
        )
        yield GaugeMetricFamily(
            "shoal_scheduler_pending_tasks",
            "Pending tasks the scheduler has not placed (waiting for a node included)",
            value=stats["scheduler"]["pending"],
        )
        failures = CounterMetricFamily(
            "shoal_manager_loop_failures",
            "Rounds of a manager loop that failed (logged, then resynced)",
            labels=["loop"],
        )
        for loop, st in sorted(stats.items()):
            count = st.get("failures", st.get("loop_failures"))
            if count is not None:
                failures.add_metric([loop], count)
        yield failures


def nodes_family(view: ReadTx) -> GaugeMetricFamily:
    counts = {(s, a): 0 for s in NODE_STATES for a in NODE_AVAILABILITIES}
    for node in view.nodes():
        key = (node.status.state, node.spec.availability)
        counts[key] = counts.get(key, 0) + 1
    family = GaugeMetricFamily(
        "shoal_nodes", "Nodes by state and availability", labels=["state", "availability"]
    )
    for (state, availability), n in sorted(counts.items()):
        family.add_metric([state, availability], n)
    return family


def services_family(view: ReadTx) -> GaugeMetricFamily:
    counts = dict.fromkeys(SERVICE_MODES, 0)
    for service in view.services():
        mode = service.spec.mode.kind if service.spec.mode is not None else "replicated"
        counts[mode] = counts.get(mode, 0) + 1
    family = GaugeMetricFamily("shoal_services", "Services by mode", labels=["mode"])
    for mode, n in sorted(counts.items()):
        family.add_metric([mode], n)
    return family


def tasks_family(view: ReadTx) -> GaugeMetricFamily:
    """Tasks by service and by observed state: every state of every service (zeros
    too, so `shoal_tasks{state="running"}` has a sample for a service none of whose
    tasks runs), and the tasks of a removed service, still shutting down, by its name
    as the tasks remember it."""
    family = GaugeMetricFamily(
        "shoal_tasks",
        "Tasks by service and state (the state observed, as `docker service ps` shows it)",
        labels=["service_id", "service", "state"],
    )
    states = view.task_states()
    for service in sorted(view.services(), key=lambda s: s.id):
        counts = states.pop(service.id, {})
        for state in TASK_STATES:
            family.add_metric([service.id, service.spec.name or "", state], counts.get(state, 0))
    for service_id, counts in sorted(states.items()):
        name = view.any_task_meta(service_id).service_name
        for wire, n in sorted(counts.items()):
            family.add_metric([service_id, name, wire], n)
    return family
