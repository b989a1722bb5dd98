"""The replicated orchestrator: keeps `Replicas` slots of each replicated service.

A slot is runnable while one of its tasks is desired to run. Fewer slots than replicas:
new tasks in free slot numbers; more: whole slots removed (desired REMOVE), preferring
slots that run nothing, then nodes with the most tasks of the service, then tasks not
yet running. Slots whose tasks are out of date go to the update supervisor.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.manager.orchestrator.base import ServiceOrchestrator
from shoal.manager.orchestrator.restart import RestartSupervisor
from shoal.manager.orchestrator.task import (
    Slot,
    create_task,
    is_runnable,
    is_task_dirty,
    set_desired,
    slots_of,
)
from shoal.manager.orchestrator.update import UpdateSupervisor
from shoal.manager.store import Store, Tx
from shoal.types.service import Service
from shoal.types.task import TaskState

DEFAULT_REPLICAS = 1
# The most tasks one round (one transaction) creates, over all the services it
# reconciles or continues: a larger service, or many services created at once, are
# built over several transactions, the event loop free between them (each chunk's own
# events start the next round), so the API keeps answering while they are built.
MAX_TASKS_PER_RECONCILE = 250


@dataclass(slots=True)
class _Build:
    """A service still being built: the rest of its free slots, for the service as of
    `version` (any other change to it, or to its tasks, means a full reconcile)."""

    version: int
    free: Iterator[int]
    left: int


def replicas_of(service: Service) -> int:
    mode = service.spec.mode
    if mode is None or mode.replicated is None or mode.replicated.replicas is None:
        return DEFAULT_REPLICAS
    return mode.replicated.replicas


class ReplicatedOrchestrator(ServiceOrchestrator):
    modes = frozenset({"replicated"})

    def __init__(
        self,
        store: Store,
        restarts: RestartSupervisor,
        updates: UpdateSupervisor,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__(store, restarts, updates, clock)
        self._building: dict[str, _Build] = {}
        # What the current round may still create (reset as each round begins): a
        # hundred services created together are not 100 x 500 tasks in one round.
        self._budget = MAX_TASKS_PER_RECONCILE

    def begin_round(self) -> None:
        self._budget = MAX_TASKS_PER_RECONCILE

    def unfinished(self) -> set[str]:
        return set(self._building)

    def forget(self, service_id: str) -> None:
        self._building.pop(service_id, None)

    def continue_build(self, tx: Tx, service: Service) -> bool:
        """The next chunk of a service being built, without looking at its tasks again;
        False when it must be reconciled in full instead."""
        build = self._building.get(service.id)
        if build is None or build.version != service.version.index:
            self._building.pop(service.id, None)
            return False
        self.reconciles += 1
        self._create(tx, service, build)
        return True

    def _create(self, tx: Tx, service: Service, build: _Build) -> None:
        """Create what the round's budget allows of the build; the rest is continued by
        the next rounds (a build the budget left nothing for waits whole)."""
        count = min(build.left, self._budget)
        self._budget -= count
        for _ in range(count):
            create_task(tx, service, next(build.free))
            build.left -= 1
        if build.left:
            self._building[service.id] = build
        else:
            self._building.pop(service.id, None)

    def reconcile(self, tx: Tx, service: Service) -> None:
        self.reconciles += 1
        self._building.pop(service.id, None)
        slots = slots_of(tx.tasks_of_service(service.id))
        runnable: dict[int, Slot] = {}
        finished: dict[int, Slot] = {}
        for n, tasks in slots.items():
            live = [t for t in tasks if is_runnable(t)]
            if live:
                runnable[n] = live
            elif self._finished_for_good(tx, service, tasks):
                finished[n] = tasks
        want = replicas_of(service)
        have = len(runnable) + len(finished)
        removed: set[int] = set()
        if want > have:
            used = set(runnable) | set(finished)
            free = (n for n in range(1, 1 << 30) if n not in used)
            self._create(tx, service, _Build(service.version.index, free, want - have))
        elif want < have:
            removed = self._remove_slots(tx, runnable, finished, have - want)
        dirty = [
            slot
            for n, slot in runnable.items()
            if n not in removed and any(is_task_dirty(tx, service, t) for t in slot)
        ]
        if dirty or self._updates.interrupted(service):
            self.start_update(tx, service, dirty)

    def _remove_slots(
        self, tx: Tx, runnable: dict[int, Slot], finished: dict[int, Slot], count: int
    ) -> set[int]:
        per_node = Counter(t.node_id or "" for slot in runnable.values() for t in slot if t.node_id)

        def rank(item: tuple[int, Slot]) -> tuple[int, int, int]:
            n, slot = item
            t = slot[0]
            running = 1 if any(x.state == TaskState.RUNNING for x in slot) else 0
            return (-per_node.get(t.node_id or "", 0), running, -n)

        order = list(finished.items()) + sorted(runnable.items(), key=rank)
        for _, slot in order[:count]:
            for t in slot:
                cur = tx.get_task(t.id)
                if cur is not None and cur.desired < TaskState.REMOVE:
                    tx.update(set_desired(cur, TaskState.REMOVE))
        return {n for n, _ in order[:count]}
