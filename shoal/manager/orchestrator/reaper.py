"""The task reaper: deletes old tasks so history stays bounded.

Keeps at most `TaskHistoryRetentionLimit` tasks per slot (per node for global
services), counting the one that runs, as SwarmKit does (the limit is raised to
MaxAttempts + 1 for a service whose restart policy sets MaxAttempts, whose restart
history needs them); only stopped tasks are deleted, oldest first. A negative limit
keeps everything. Tasks desired REMOVE go once they stopped (or never reached a node).
The tasks of a job's current run (desired COMPLETE) are not history: they are how the
job counts its completions.

Driven by task events only, as SwarmKit's: a change that may leave something to delete
marks its slot (or task) dirty; the dirty set is reaped REAPER_BATCH_S after the first
mark, or at once when REAPER_MAX_DIRTY piled up. Idle, it costs nothing; a task desired
REMOVE that still runs is looked at again when its own stop is committed.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.manager.loops import MAX_EVENTS_PER_ROUND, LoopStats, supervise, take_burst
from shoal.manager.orchestrator.task import is_runnable
from shoal.manager.store import Event, Store, Tx
from shoal.types.swarm import DEFAULT_TASK_HISTORY
from shoal.types.task import Task, TaskState

# Time bound of a batch: how long after the first dirty mark the reaper deletes.
REAPER_BATCH_S = 0.25
# Size bound of a batch: this many dirty slots and tasks are reaped at once.
REAPER_MAX_DIRTY = 1000


def _stopped(task: Task) -> bool:
    return task.state > TaskState.RUNNING or task.state < TaskState.ASSIGNED


class TaskReaper:
    def __init__(self, store: Store, clock: Clock = SYSTEM_CLOCK) -> None:
        self._store = store
        self._clock = clock
        self._stopped = asyncio.Event()
        self._dirty: set[tuple[str, object]] = set()
        self._removing: set[str] = set()
        self.deleted = 0
        self._stats = LoopStats()

    async def run(self) -> None:
        await supervise("reaper", self._run_once, self._stopped, self._stats, self._clock)

    async def _run_once(self) -> None:
        """Note every task of a fresh view (at start, after a failed round), reap, then
        reap each batch of changes."""
        watcher = self._store.watch("task")
        try:
            view = self._store.view()
            for t in view.tasks():
                self._note(t)
            await self._reap()
            while not self._stopped.is_set():
                events = await watcher.__anext__()
                events.extend(watcher.get_nowait_all(MAX_EVENTS_PER_ROUND))
                self._note_events(events)
                if not self._has_work():
                    continue
                await take_burst(
                    watcher,
                    self._note_events,
                    self._clock,
                    REAPER_BATCH_S,
                    REAPER_BATCH_S,
                    full=lambda: len(self._dirty) + len(self._removing) >= REAPER_MAX_DIRTY,
                )
                await self._reap()
                self._stats.rounds += 1
        finally:
            watcher.close()

    def stop(self) -> None:
        self._stopped.set()

    def _has_work(self) -> bool:
        return bool(self._dirty or self._removing)

    def _note_events(self, events: list[Event]) -> None:
        for ev in events:
            if ev.action != "remove":
                self._note(ev.obj)

    def _note(self, t: Task) -> None:
        if t.desired >= TaskState.REMOVE:
            self._removing.add(t.id)
        elif not is_runnable(t):
            self._dirty.add((t.service_id, t.slot if t.slot is not None else t.node_id))

    async def _reap(self) -> None:
        if not self._has_work():
            return
        dirty, self._dirty = self._dirty, set()
        removing, self._removing = self._removing, set()
        # What still runs (`later`) is noted again by the event of its stop.
        deleted, _later = await self._store.update(lambda tx: _reap_tx(tx, dirty, removing))
        self.deleted += deleted

    def statistics(self) -> dict[str, int]:
        return {"deleted": self.deleted, **self._stats.as_dict()}


def _reap_tx(tx: Tx, dirty: set[tuple[str, object]], removing: set[str]) -> tuple[int, set[str]]:
    """Delete what may go; returns how many tasks were deleted and the tasks desired
    removed that still run."""
    cluster = tx.cluster()
    limit = DEFAULT_TASK_HISTORY
    if cluster and cluster.spec.orchestration:
        lim = cluster.spec.orchestration.task_history_retention_limit
        limit = DEFAULT_TASK_HISTORY if lim is None else lim
    deleted = 0
    later: set[str] = set()
    for tid in removing:
        t = tx.get_task(tid)
        if t is None:
            continue
        if _stopped(t):
            tx.delete("task", tid)
            deleted += 1
        else:
            later.add(tid)
    groups: dict[tuple[str, object], list[Task]] = defaultdict(list)
    services = {sid for sid, _ in dirty}
    keep: dict[str, int] = {}
    for sid in services:
        keep[sid] = _history_limit(tx, sid, limit)
        for t in tx.tasks_of_service(sid):
            key = (sid, t.slot if t.slot is not None else t.node_id)
            # A job's task still desired COMPLETE is its run's record (a completion,
            # or a failure awaiting its restart): never history.
            if key in dirty and t.desired != TaskState.COMPLETE:
                groups[key].append(t)
    for (sid, _), history in groups.items():
        excess = len(history) - keep[sid]
        if keep[sid] < 0 or excess <= 0:
            continue
        history.sort(key=lambda t: (t.created_at, t.id))
        for t in history:
            if excess <= 0:
                break
            if _stopped(t):
                tx.delete("task", t.id)
                deleted += 1
                excess -= 1
    return deleted, later


def _history_limit(tx: Tx, service_id: str, limit: int) -> int:
    """SwarmKit keeps MaxAttempts + 1 tasks of a service whose restart policy sets
    MaxAttempts, whatever the cluster's limit."""
    service = tx.get_service(service_id)
    template = service.spec.task_template if service else None
    restart = template.restart_policy if template else None
    if restart is not None and restart.max_attempts:
        return restart.max_attempts + 1
    return limit
