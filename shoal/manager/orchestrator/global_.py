"""The global orchestrator: one task of each global service on every eligible node.

Eligible: ready, active, and meeting the service's constraints. A paused node keeps
its task but gets no new one; on a drained, down or removed node (or one that stops
meeting the constraints) the task is shut down. Tasks carry their NodeID from birth;
the scheduler only confirms they fit.
"""

from __future__ import annotations

from shoal.manager.orchestrator.base import ServiceOrchestrator
from shoal.manager.orchestrator.task import (
    create_task,
    invalid_node,
    is_runnable,
    is_task_dirty,
    set_desired,
)
from shoal.manager.scheduler import constraint
from shoal.manager.store import Tx
from shoal.types.node import Node
from shoal.types.service import Service
from shoal.types.task import Task, TaskState


def _constraints(service: Service) -> list[constraint.Constraint]:
    tt = service.spec.task_template
    exprs = tt.placement.constraints if tt and tt.placement and tt.placement.constraints else []
    try:
        return constraint.parse(exprs)
    except constraint.ConstraintError:
        return []


class GlobalOrchestrator(ServiceOrchestrator):
    modes = frozenset({"global"})
    moves_on_invalid_node = False

    def reconcile(self, tx: Tx, service: Service) -> None:
        self.reconciles += 1
        constraints = _constraints(service)
        by_node: dict[str, list[Task]] = {}
        for t in tx.tasks_of_service(service.id):
            if t.node_id:
                by_node.setdefault(t.node_id, []).append(t)
        dirty: list[list[Task]] = []
        nodes = {n.id: n for n in tx.nodes()}
        for node_id in set(nodes) | set(by_node):
            node = nodes.get(node_id)
            tasks = by_node.get(node_id, [])
            live = [t for t in tasks if is_runnable(t)]
            if not self._keeps_tasks(node, constraints):
                for t in live:
                    tx.update(set_desired(t, TaskState.SHUTDOWN))
                continue
            assert node is not None
            if not live:
                if self._finished_for_good(tx, service, tasks):
                    continue
                if node.spec.availability == "active" and node.status.state == "ready":
                    create_task(tx, service, None, node.id)
                continue
            if len(live) > 1 and not self._updates.is_updating(service.id):
                keep = self._latest(live)
                for t in live:
                    if t is not keep:
                        tx.update(set_desired(t, TaskState.SHUTDOWN))
                live = [keep] if keep else []
            if any(is_task_dirty(tx, service, t) for t in live):
                dirty.append(live)
        if dirty or self._updates.interrupted(service):
            self.start_update(tx, service, dirty)

    @staticmethod
    def _keeps_tasks(node: Node | None, constraints: list[constraint.Constraint]) -> bool:
        if node is None or invalid_node(node):
            return False
        return constraint.matches_all(constraints, node)

    def node_changed(self, tx: Tx, node_id: str) -> set[str]:
        return {s.id for s in tx.services() if self.owns(s)}
