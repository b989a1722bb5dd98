"""The manager: wires the store to the control loops.

Only a leading manager runs orchestrators, scheduler, allocator, reaper and the
dispatcher (`lead()` / `follow()`, driven by shoal/manager/leadership.py with several
managers; one manager always leads); every manager keeps the event log and the
visualizer's feed, and serves reads from its store.
The loops never call each other: they meet in the store and its watches.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Protocol

from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.log import get_logger
from shoal.manager.allocator.allocator import Allocator
from shoal.manager.ca.rotation import RotationReconciler
from shoal.manager.dispatcher.dispatcher import Dispatcher
from shoal.manager.events import EventLog
from shoal.manager.logbroker import LogBroker
from shoal.manager.loops import log_failure
from shoal.manager.orchestrator.global_ import GlobalOrchestrator
from shoal.manager.orchestrator.jobs import JobOrchestrator
from shoal.manager.orchestrator.reaper import TaskReaper
from shoal.manager.orchestrator.replicated import ReplicatedOrchestrator
from shoal.manager.orchestrator.restart import RestartSupervisor
from shoal.manager.orchestrator.update import UpdateSupervisor
from shoal.manager.scheduler.scheduler import Scheduler
from shoal.manager.store import Store
from shoal.manager.visualizer import VisualizerFeed
from shoal.metrics import Metrics

log = get_logger("shoal.manager")


class _Loop(Protocol):
    def run(self) -> Coroutine[Any, Any, None]: ...

    def stop(self) -> None: ...

    def statistics(self) -> dict[str, int]: ...


class Manager:
    def __init__(
        self, store: Store, clock: Clock = SYSTEM_CLOCK, metrics: Metrics | None = None
    ) -> None:
        """`clock`: the one every loop reads and waits on (tests pass a FakeClock).
        `metrics`: the daemon's (the store's when None)."""
        self.store = store
        self.clock = clock
        self.metrics = metrics if metrics is not None else store.metrics
        self.events = EventLog(store, clock)  # first: it watches from construction
        self.visualizer = VisualizerFeed(store, clock)  # so does the visualizer's feed
        # one dispatcher for the manager's life (the cluster port serves its sessions);
        # it runs while this manager leads
        self.dispatcher = Dispatcher(store, clock, self.metrics)
        self.logbroker = LogBroker(store, self.dispatcher)
        # every manager: the read side
        self._loops: dict[str, _Loop] = {"events": self.events, "visualizer": self.visualizer}
        self._leader_loops: dict[str, _Loop] = {}
        self._build_leader_loops()
        self._tasks: list[asyncio.Task[None]] = []
        self._leader_tasks: list[asyncio.Task[None]] = []
        self.leading = False

    def _build_leader_loops(self) -> None:
        """The loops only a leader runs, new for each leadership (a stopped loop does
        not run again)."""
        store, clock = self.store, self.clock
        self.restarts = RestartSupervisor(store, clock)
        self.updates = UpdateSupervisor(store, clock)
        self.scheduler = Scheduler(store, clock, self.metrics)
        self.allocator = Allocator(store, clock)
        self.replicated = ReplicatedOrchestrator(store, self.restarts, self.updates, clock)
        self.global_ = GlobalOrchestrator(store, self.restarts, self.updates, clock)
        self.jobs = JobOrchestrator(store, self.restarts, self.updates, clock)
        self.reaper = TaskReaper(store, clock)
        self.rotation = RotationReconciler(store, clock)
        self._leader_loops = {
            "dispatcher": self.dispatcher,
            "restarts": self.restarts,
            "allocator": self.allocator,
            "scheduler": self.scheduler,
            "replicated": self.replicated,
            "global": self.global_,
            "jobs": self.jobs,
            "reaper": self.reaper,
            "root-rotation": self.rotation,
        }

    def _spawn(self, name: str, loop: _Loop) -> asyncio.Task[None]:
        t = asyncio.get_running_loop().create_task(loop.run(), name=f"manager-{name}")
        t.add_done_callback(log_failure)
        return t

    def start(self, lead: bool = True) -> None:
        """The store's feed of other managers' commits and the read side; the leader's
        loops too when `lead` (one manager: it always leads), else from lead()."""
        feed = asyncio.get_running_loop().create_task(self.store.run(), name="manager-store")
        feed.add_done_callback(log_failure)
        self._tasks.append(feed)
        for name, loop in self._loops.items():
            self._tasks.append(self._spawn(name, loop))
        if lead:
            self.lead()
        log.info("manager started", index=self.store.index, leading=self.leading)

    def lead(self) -> None:
        """Start the leader's loops (elected). They start from the store as it is:
        what runs is adopted, nothing is rescheduled for having changed leaders."""
        if self.leading:
            return
        if not self._leader_loops:
            self._build_leader_loops()
        self.leading = True
        for name, loop in self._leader_loops.items():
            self._leader_tasks.append(self._spawn(name, loop))
        log.info("leader's loops started", index=self.store.index)

    async def follow(self) -> None:
        """Stop the leader's loops (the leadership was lost); the dispatcher's
        sessions end, so their agents go to the new leader."""
        if not self.leading:
            return
        self.leading = False
        await self._stop_leader_loops()
        self.dispatcher.close_all("this manager no longer leads")
        self._leader_loops = {}
        log.info("leader's loops stopped; following")

    async def _stop_leader_loops(self) -> None:
        for loop in self._leader_loops.values():
            loop.stop()
        self.updates.stop()
        for t in self._leader_tasks:
            t.cancel()
        await asyncio.gather(*self._leader_tasks, return_exceptions=True)
        self._leader_tasks.clear()

    async def stop(self) -> None:
        await self._stop_leader_loops()
        for loop in self._loops.values():
            loop.stop()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self.store.close()
        log.info("manager stopped")

    def statistics(self) -> dict[str, dict[str, int]]:
        loops = {**self._loops, **self._leader_loops}
        stats = {name: loop.statistics() for name, loop in loops.items()}
        stats["store"] = self.store.statistics()
        stats["updates"] = self.updates.statistics()
        return stats
