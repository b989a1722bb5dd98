"""The event loop every service orchestrator shares: it watches the store and hands
each changed service, task and node to the mode-specific reconciler."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.manager.loops import LoopStats, reconcile_loop
from shoal.manager.orchestrator.restart import RestartSupervisor
from shoal.manager.orchestrator.task import Slot, invalid_node, is_runnable, set_desired
from shoal.manager.orchestrator.update import UpdateSupervisor, default_make_task
from shoal.manager.store import Event, Store, Tx
from shoal.types.node import Node
from shoal.types.service import Service
from shoal.types.task import Task, TaskState

# The most tasks of removed services one round marks desired REMOVE: a huge service
# removed is taken down over several rounds (each chunk's own events start the next),
# the event loop free between them.
MAX_REMOVALS_PER_ROUND = 500


class ServiceOrchestrator:
    """Base: subclasses say which services they own and how to reconcile one.

    Its transactions are pure: what they cause beyond the store (an updater started or
    cancelled, a restart counted) is noted in `_effects` and done after the commit, so a
    transaction that fails leaves no trace."""

    modes: frozenset[str] = frozenset()

    def __init__(
        self,
        store: Store,
        restarts: RestartSupervisor,
        updates: UpdateSupervisor,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._store = store
        self._clock = clock
        self._restarts = restarts
        self._updates = updates
        self._stopped = asyncio.Event()
        self.reconciles = 0
        self._effects: list[Callable[[], None]] = []
        self._stats = LoopStats()
        # Removed services: the IDs of their tasks still to mark desired REMOVE.
        self._removing: dict[str, list[str]] = {}

    def owns(self, service: Service | None) -> bool:
        if service is None:
            return False
        mode = service.spec.mode.kind if service.spec.mode else "replicated"
        return mode in self.modes

    async def run(self) -> None:
        await reconcile_loop(
            self._store,
            ("service", "task", "node"),
            self._fresh(self._check_all),
            self._fresh(self._handle),
            self._stopped,
            name=type(self).__name__,
            stats=self._stats,
            after=self._after_commit,
            clock=self._clock,
        )

    def _fresh(self, fn: Callable[..., None]) -> Callable[..., None]:
        """`fn` as a transaction that starts with no effects noted (a failed one's are
        dropped with it)."""

        @functools.wraps(fn)
        def run(*args: object) -> None:
            self._effects = []
            fn(*args)

        return run

    async def _after_commit(self) -> None:
        effects, self._effects = self._effects, []
        for effect in effects:
            effect()

    def stop(self) -> None:
        self._stopped.set()

    # initial sweep (also after a restart of the daemon) -----------------------------------
    def _check_all(self, tx: Tx) -> None:
        self.begin_round()
        for sid in self.unfinished():
            self.forget(sid)
        self._removing = {}
        for t in tx.tasks():
            if t.service_id and tx.get_service(t.service_id) is None:
                # Its service was removed and the manager stopped before the removal's
                # event was handled (kill -9), or its removal was under way: no event
                # will come again (SwarmKit's taskinit.CheckTasks removes such tasks at
                # start the same way).
                if t.desired < TaskState.REMOVE:
                    self._removing.setdefault(t.service_id, []).append(t.id)
                continue
            self._check_task(tx, t)
        self._remove_some(tx)
        for s in tx.services():
            if self.owns(s):
                self.reconcile(tx, s)

    # events ----------------------------------------------------------------------------------
    def _handle(self, tx: Tx, events: list[Event]) -> None:
        self.begin_round()
        dirty_services: set[str] = set()
        for ev in events:
            if ev.kind == "service":
                if ev.action == "remove":
                    if self.owns(ev.obj):
                        self._service_removed(tx, ev.obj)
                elif self.owns(ev.obj):
                    dirty_services.add(ev.obj.id)
            elif ev.kind == "task":
                if ev.action == "remove":
                    dirty_services.add(ev.obj.service_id)
                else:
                    cur = tx.get_task(ev.obj.id)
                    if cur is not None and self._check_task(tx, cur):
                        dirty_services.add(cur.service_id)
            elif ev.kind == "node":
                dirty_services |= self.node_changed(tx, ev.obj.id)
        for sid in dirty_services:
            s = tx.get_service(sid)
            if self.owns(s):
                assert s is not None
                self.reconcile(tx, s)
        if self._stats.backlog:
            # Behind on events (a build's own tasks being allocated and scheduled): the
            # next chunk waits until this loop has caught up, which also keeps every
            # watcher's queue, and the memory and GC work it holds, bounded.
            return
        self._remove_some(tx)
        for sid in self.unfinished() - dirty_services:
            s = tx.get_service(sid)
            if s is None or not self.owns(s):
                self.forget(sid)
            elif not self.continue_build(tx, s):
                self.reconcile(tx, s)

    def _check_task(self, tx: Tx, task: Task) -> bool:
        """Restart a task that should run but has finished or whose node went away.
        True when its service needs reconciling."""
        service = tx.get_service(task.service_id)
        if not self.owns(service) or not is_runnable(task):
            return False
        assert service is not None
        if task.state > TaskState.RUNNING:
            if self._restarts.restart(tx, service, task) is not None:
                self._effects.append(functools.partial(self._restarts.record, task))
            return True
        if task.node_id and task.state >= TaskState.ASSIGNED and self.moves_on_invalid_node:
            node = tx.get_node(task.node_id)
            if invalid_node(node):
                self._restarts.restart(tx, service, task, force=True)
                return True
        return False

    moves_on_invalid_node = True

    def _service_removed(self, tx: Tx, service: Service) -> None:
        self._effects.append(functools.partial(self._updates.cancel, service.id))
        self._effects.append(functools.partial(self._restarts.clear_service, service.id))
        self.forget(service.id)
        left = tx.task_ids_of_service(service.id)  # (filtered as they are marked)
        if left:
            self._removing[service.id] = left
        # (marked desired REMOVE by _remove_some, MAX_REMOVALS_PER_ROUND a round)

    def _remove_some(self, tx: Tx) -> None:
        """Mark the next MAX_REMOVALS_PER_ROUND tasks of removed services desired
        REMOVE. (A round that fails loses what it took off the lists; the resync's sweep
        finds those tasks again.)"""
        budget = MAX_REMOVALS_PER_ROUND
        for sid in list(self._removing):
            left = self._removing[sid]
            while left and budget:
                budget -= 1
                t = tx.get_task(left.pop())
                if t is not None and t.desired < TaskState.REMOVE:
                    tx.update(set_desired(t, TaskState.REMOVE))
            if not left:
                del self._removing[sid]
            if not budget:
                return

    # for subclasses -------------------------------------------------------------------------
    def reconcile(self, tx: Tx, service: Service) -> None:
        raise NotImplementedError

    def begin_round(self) -> None:
        """A round (one transaction) begins: reset what bounds its work."""

    def unfinished(self) -> set[str]:
        """Services whose reconcile stopped at its bound: each round continues them."""
        return set()

    def continue_build(self, tx: Tx, service: Service) -> bool:
        """Continue an unfinished service; False: reconcile it in full instead."""
        return False

    def forget(self, service_id: str) -> None:
        """Drop what is kept about an unfinished service (a resync, a removal)."""

    def node_changed(self, tx: Tx, node_id: str) -> set[str]:
        """Services to reconcile after a node changed."""
        node = tx.get_node(node_id)
        out: set[str] = set()
        if invalid_node(node):
            for t in tx.tasks_on_node(node_id):
                if self._check_task(tx, t):
                    out.add(t.service_id)
        return out

    def start_update(self, tx: Tx, service: Service, slots: list[Slot]) -> None:
        """Note that `service`'s dirty `slots` need its updater (started after commit)."""
        spec_version = tx.service_meta(service.id).spec_version
        self._effects.append(
            functools.partial(self._updates.update, service, spec_version, slots, default_make_task)
        )

    def statistics(self) -> dict[str, int]:
        return {"reconciles": self.reconciles, **self._stats.as_dict()}

    def _latest(self, tasks: list[Task]) -> Task | None:
        return max(tasks, key=lambda t: (t.created_at, t.id), default=None)

    def _finished_for_good(self, tx: Tx, service: Service, tasks: list[Task]) -> bool:
        """The slot's (or node's) last task ended and the restart policy will not
        replace it: it still counts, so no new task is made for it."""
        latest = self._latest(tasks)
        return (
            latest is not None
            and latest.desired == TaskState.SHUTDOWN
            and latest.state > TaskState.RUNNING
            and not self._restarts.should_restart(tx, latest, service, tasks)
        )


def node_is_usable(node: Node | None) -> bool:
    return node is not None and not invalid_node(node)
