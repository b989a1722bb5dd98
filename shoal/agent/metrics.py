"""The agent's gauges, read from its task runners at each scrape.

Every daemon has an agent, workers included: its `/metrics` shows the tasks this node
runs by service and state (`shoal_agent_tasks`), beside the executor's start times the
runners record as they go (shoal/metrics.py). docs/metrics.md lists them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shoal.types.task import TaskState


class _Agent(Protocol):
    """What the collector reads of a running agent (shoal.agent.agent.Agent)."""

    def task_states(self) -> Counter[tuple[str, str, TaskState]]: ...


class AgentCollector(Collector):
    """This node's tasks by service and state, for the agent `current()` returns at
    scrape time (None: not in a swarm, no agent: nothing to show)."""

    def __init__(self, current: Callable[[], _Agent | None]) -> None:
        self._current = current

    def describe(self) -> list[object]:
        return []  # the family exists only while an agent runs

    def collect(self) -> Iterator[GaugeMetricFamily]:
        agent = self._current()
        if agent is None:
            return
        family = GaugeMetricFamily(
            "shoal_agent_tasks",
            "Tasks this node's agent holds, by service and state (as the agent sees it)",
            labels=["service_id", "service", "state"],
        )
        for (service_id, service, state), n in sorted(agent.task_states().items()):
            family.add_metric([service_id, service, state.wire], n)
        yield family
