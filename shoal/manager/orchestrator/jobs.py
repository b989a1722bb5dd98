"""The job orchestrator: replicated jobs and global jobs (SwarmKit's orchestrator/jobs).

A job runs its tasks to completion instead of keeping them running: its tasks are
desired COMPLETE, a task that exits 0 is done and never restarted, and a failed one is
restarted by the restart policy (its condition `any` acts as `on-failure`). Each run of
a job has a number, the service's `JobStatus.JobIteration`, which every update of the
spec increases; every task carries the iteration it was made for, and only the tasks of
the current one count. Tasks of an earlier run are stopped: removed if they still run,
otherwise shut down (kept as history).

- Replicated job: `TotalCompletions` slots, numbered 0..N-1 (the CLI's progress display
  reads them so). A slot is complete once one of its tasks is; active while one of its
  tasks is desired to run; finished for good when its last task failed and the policy
  will not restart it. New tasks go into free slots, never more than `MaxConcurrent`
  active at once.
- Global job: one task per eligible node (ready, active, meeting the constraints), on
  the nodes of the cluster and on every node that joins later. A node whose task
  completed, or failed for good, gets no other one in this run. Tasks on a node that is
  down, drained or gone, or no longer meets the constraints, are shut down. (SwarmKit's
  global reconciler skips nodes created after the run started; shoal runs the job on
  them too, as issue 11 asks and as the CLI's progress display expects.)

What differs from a service: no updater (a new spec is a new run), and a failed task's
slot or node whose restart policy gives up stays failed instead of getting a new task.
"""

from __future__ import annotations

import functools

from shoal.manager.orchestrator.base import ServiceOrchestrator
from shoal.manager.orchestrator.global_ import _constraints
from shoal.manager.orchestrator.replicated import MAX_TASKS_PER_RECONCILE
from shoal.manager.orchestrator.task import create_task, invalid_node, set_desired, slots_of
from shoal.manager.scheduler import constraint
from shoal.manager.store import Tx
from shoal.types.base import Version
from shoal.types.service import Service
from shoal.types.task import Task, TaskState


def iteration(service: Service) -> Version:
    """The current run of a job (0 before its first update)."""
    return service.job_status.job_iteration if service.job_status else Version()


def is_done(task: Task) -> bool:
    """The task completed (exited 0): its slot or node has run the job."""
    return task.state == TaskState.COMPLETE


def is_live(task: Task) -> bool:
    """Desired to run to completion (or held ready for it) and not completed."""
    return task.desired <= TaskState.COMPLETE and not is_done(task)


class JobOrchestrator(ServiceOrchestrator):
    modes = frozenset({"replicated-job", "global-job"})
    moves_on_invalid_node = True

    # Replicated jobs whose reconcile stopped at MAX_TASKS_PER_RECONCILE: reconciled
    # again each round until all their tasks are made.
    _more: set[str] = set()

    def unfinished(self) -> set[str]:
        return set(self._more)

    def forget(self, service_id: str) -> None:
        self._more = self._more - {service_id}

    def reconcile(self, tx: Tx, service: Service) -> None:
        self.reconciles += 1
        self.forget(service.id)
        current: list[Task] = []
        run = iteration(service)
        for t in tx.tasks_of_service(service.id):
            if t.job_iteration == run:
                current.append(t)
            else:
                self._retire(tx, t)
        if service.spec.mode and service.spec.mode.replicated_job is not None:
            self._reconcile_replicated(tx, service, current)
        else:
            self._reconcile_global(tx, service, current)

    def _check_task(self, tx: Tx, task: Task) -> bool:
        """Held tasks (desired READY) are handled as in the base; a task of a job that
        ended (completed or failed) or whose node went away reconciles its job."""
        if super()._check_task(tx, task):
            return True
        service = tx.get_service(task.service_id)
        if not self.owns(service) or task.desired != TaskState.COMPLETE:
            return False
        if task.state > TaskState.RUNNING:
            return True
        return bool(task.node_id) and invalid_node(tx.get_node(task.node_id or ""))

    def node_changed(self, tx: Tx, node_id: str) -> set[str]:
        """Every global job (a node may have joined, come back or changed), and the
        replicated jobs with a task on the node."""
        out = {s.id for s in tx.services() if self.owns(s) and _is_global_job(s)}
        out |= {t.service_id for t in tx.tasks_on_node(node_id)}
        return {sid for sid in out if self.owns(tx.get_service(sid))}

    # -------------------------------------------------------------------------------------
    def _retire(self, tx: Tx, task: Task) -> None:
        """A task of an earlier run: stop it (REMOVE while it may still run, so it is not
        kept as history; SHUTDOWN once it ended)."""
        if task.desired > TaskState.COMPLETE:
            return
        stopped = task.state > TaskState.RUNNING
        tx.update(set_desired(task, TaskState.SHUTDOWN if stopped else TaskState.REMOVE))

    def _restart(self, tx: Tx, service: Service, task: Task, force: bool = False) -> bool:
        """Replace a failed task (or, with `force`, one on a node gone away) as the
        restart policy says. True when a replacement was made."""
        new = self._restarts.restart(tx, service, task, force=force)
        if new is not None and not force:
            self._effects.append(functools.partial(self._restarts.record, task))
        return new is not None

    def _settle(self, tx: Tx, service: Service, tasks: list[Task]) -> tuple[bool, bool]:
        """One slot's (or node's) tasks of this run: restart the failed, move those
        on a node gone away, stop the extras of a completed one. Returns (done,
        active)."""
        if any(is_done(t) for t in tasks):
            for t in tasks:
                if is_live(t):
                    tx.update(set_desired(t, TaskState.SHUTDOWN))
            return True, False
        active = False
        for t in tasks:
            if not is_live(t):
                continue
            if t.state > TaskState.COMPLETE:
                active |= self._restart(tx, service, t)
            elif (
                t.node_id
                and t.state >= TaskState.ASSIGNED
                and invalid_node(tx.get_node(t.node_id))
                and t.slot is not None
            ):
                active |= self._restart(tx, service, t, force=True)
            else:
                active = True
        return False, active

    def _reconcile_replicated(self, tx: Tx, service: Service, tasks: list[Task]) -> None:
        mode = service.spec.mode
        rj = mode.replicated_job if mode else None
        assert rj is not None
        total = rj.total_completions or 0
        concurrent = rj.max_concurrent or 0
        used: set[int] = set()
        active = 0
        for n, slot in slots_of(tasks).items():
            done, live = self._settle(tx, service, slot)
            if done or live:
                used.add(n)
                active += live
            elif self._finished_for_good(tx, service, _fresh(tx, slot)):
                used.add(n)  # failed for good: it counts against the total
        free = [n for n in range(total) if n not in used]
        wanted = max(0, concurrent - active)
        if wanted > MAX_TASKS_PER_RECONCILE:
            wanted = MAX_TASKS_PER_RECONCILE
            self._more = self._more | {service.id}
        for slot_number in free[:wanted]:
            create_task(
                tx,
                service,
                slot_number,
                desired=TaskState.COMPLETE,
                job_iteration=iteration(service),
            )

    def _reconcile_global(self, tx: Tx, service: Service, tasks: list[Task]) -> None:
        constraints = _constraints(service)
        by_node: dict[str, list[Task]] = {}
        for t in tasks:
            if t.node_id:
                by_node.setdefault(t.node_id, []).append(t)
        nodes = {n.id: n for n in tx.nodes()}
        for node_id in set(nodes) | set(by_node):
            node = nodes.get(node_id)
            on_node = by_node.get(node_id, [])
            if node is None or invalid_node(node) or not constraint.matches_all(constraints, node):
                for t in on_node:
                    if is_live(t):
                        tx.update(set_desired(t, TaskState.SHUTDOWN))
                continue
            done, live = self._settle(tx, service, on_node)
            if done or live:
                continue
            if on_node and self._finished_for_good(tx, service, _fresh(tx, on_node)):
                continue
            if node.spec.availability == "active" and node.status.state == "ready":
                create_task(
                    tx,
                    service,
                    None,
                    node_id,
                    desired=TaskState.COMPLETE,
                    job_iteration=iteration(service),
                )


def _fresh(tx: Tx, tasks: list[Task]) -> list[Task]:
    """`tasks` as this transaction now has them (after a restart changed some)."""
    return [t for t in (tx.get_task(x.id) for x in tasks) if t is not None]


def _is_global_job(service: Service) -> bool:
    return service.spec.mode is not None and service.spec.mode.global_job is not None
