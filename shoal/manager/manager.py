"""The manager: wires the store to the control loops.

Only a leading manager runs orchestrators, scheduler, allocator and reaper; every
manager serves the API and agent sessions (one manager today: it always leads).
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
        self.restarts = RestartSupervisor(store, clock)
        self.updates = UpdateSupervisor(store, clock)
        self.dispatcher = Dispatcher(store, clock, self.metrics)
        self.logbroker = LogBroker(store, self.dispatcher)
        self.scheduler = Scheduler(store, clock, self.metrics)
        self.allocator = Allocator(store, clock)
        self.replicated = ReplicatedOrchestrator(store, self.restarts, self.updates, clock)
        self.global_ = GlobalOrchestrator(store, self.restarts, self.updates, clock)
        self.jobs = JobOrchestrator(store, self.restarts, self.updates, clock)
        self.reaper = TaskReaper(store, clock)
        self.rotation = RotationReconciler(store, clock)
        self._loops: dict[str, _Loop] = {
            "events": self.events,
            "dispatcher": self.dispatcher,
            "restarts": self.restarts,
            "allocator": self.allocator,
            "scheduler": self.scheduler,
            "replicated": self.replicated,
            "global": self.global_,
            "jobs": self.jobs,
            "reaper": self.reaper,
            "root-rotation": self.rotation,
            "visualizer": self.visualizer,
        }
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        feed = asyncio.get_running_loop().create_task(self.store.run(), name="manager-store")
        feed.add_done_callback(log_failure)
        self._tasks.append(feed)
        for name, loop in self._loops.items():
            t = asyncio.get_running_loop().create_task(loop.run(), name=f"manager-{name}")
            t.add_done_callback(log_failure)
            self._tasks.append(t)
        log.info("manager started", index=self.store.index)

    async def stop(self) -> None:
        for loop in self._loops.values():
            loop.stop()
        self.updates.stop()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self.store.close()
        log.info("manager stopped")

    def statistics(self) -> dict[str, dict[str, int]]:
        stats = {name: loop.statistics() for name, loop in self._loops.items()}
        stats["store"] = self.store.statistics()
        stats["updates"] = self.updates.statistics()
        return stats
