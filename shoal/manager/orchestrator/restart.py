"""The restart supervisor: decides whether a finished task is replaced, and when.

As SwarmKit's: inside the orchestrator's transaction the old task is told to shut down
and, if the policy allows, a replacement is created in the same slot with desired state
READY; a timer moves it to RUNNING after the restart delay and once the old task has
stopped (or `OLD_TASK_TIMEOUT_S` passed). Restart history is kept in memory.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from dataclasses import dataclass

from shoal.manager.loops import log_failure
from shoal.manager.orchestrator.task import new_task, set_desired
from shoal.manager.store import Store, Tx
from shoal.types.base import format_time, now_ns
from shoal.types.service import Service
from shoal.types.task import Task, TaskState

DEFAULT_RESTART_DELAY_NS = 5_000_000_000
DEFAULT_RESTART_CONDITION = "any"
OLD_TASK_TIMEOUT_S = 60.0
# How often a held task re-checks whether its predecessor stopped.
OLD_TASK_POLL_S = 0.05


@dataclass(slots=True)
class _History:
    # monotonic times of restarts of this slot (or node, for global services)
    times: deque[float]


def restart_condition(service: Service) -> str:
    policy = service.spec.task_template.restart_policy if service.spec.task_template else None
    return policy.condition if policy and policy.condition else DEFAULT_RESTART_CONDITION


def restart_delay_s(service: Service) -> float:
    policy = service.spec.task_template.restart_policy if service.spec.task_template else None
    delay = policy.delay if policy and policy.delay is not None else DEFAULT_RESTART_DELAY_NS
    return delay / 1e9


class RestartSupervisor:
    """Shared by the replicated and global orchestrators (one per manager)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._history: dict[tuple[str, object], _History] = defaultdict(lambda: _History(deque()))
        self._delayed: dict[str, asyncio.Task[None]] = {}
        self.restarts = 0

    @staticmethod
    def _key(task: Task) -> tuple[str, object]:
        return (task.service_id, task.slot if task.slot is not None else task.node_id)

    def should_restart(
        self, task: Task, service: Service, slot_tasks: list[Task] | None = None
    ) -> bool:
        """Whether the policy restarts `task`. Attempts are counted both in memory and
        from the slot's history in the store (`slot_tasks`: tasks of the same spec
        version beyond the first are restarts), so a daemon restart forgets nothing
        the task history still shows."""
        condition = restart_condition(service)
        if condition == "none":
            return False
        if condition == "on-failure" and task.state == TaskState.COMPLETE:
            return False
        mode = service.spec.mode.kind if service.spec.mode else "replicated"
        if mode.endswith("-job") and task.state == TaskState.COMPLETE:
            return False
        policy = service.spec.task_template.restart_policy if service.spec.task_template else None
        max_attempts = policy.max_attempts if policy and policy.max_attempts else 0
        if not max_attempts:
            return True
        window_s = (policy.window or 0) / 1e9 if policy else 0.0
        hist = self._history[self._key(task)].times
        cutoff = time.monotonic() - window_s
        in_memory = sum(1 for t in hist if not window_s or t >= cutoff)
        in_store = 0
        if slot_tasks:
            same = sorted(
                (t for t in slot_tasks if t.spec_version == task.spec_version),
                key=lambda t: (t.created_at, t.id),
            )[1:]
            wall_cutoff = format_time(now_ns() - int(window_s * 1e9)) if window_s else ""
            in_store = sum(1 for t in same if t.created_at >= wall_cutoff)
        return max(in_memory, in_store) < max_attempts

    def restart(self, tx: Tx, service: Service, task: Task, force: bool = False) -> Task | None:
        """Shut `task` down and, if the policy allows (or `force`: its node is gone),
        create its replacement, held at READY until its delay has passed."""
        if task.desired > TaskState.COMPLETE:
            return None  # already handled by an earlier call
        tx.update(set_desired(task, TaskState.SHUTDOWN))
        if not force and not self.should_restart(task, service, self._slot(tx, task)):
            return None
        node_id = task.node_id if task.slot is None else None  # global tasks stay on their node
        replacement = new_task(service, task.slot, node_id, desired=TaskState.READY)
        replacement = tx.create(replacement)
        if not force:
            self._history[self._key(task)].times.append(time.monotonic())
        self.restarts += 1
        # Wait for the old task to stop first, unless it is already dead or its node is
        # down (it will never report stopping).
        node = tx.get_node(task.node_id) if task.node_id else None
        wait_old = (
            node is not None and node.status.state != "down" and (task.state <= TaskState.RUNNING)
        )
        self.delay_start(task.id if wait_old else None, replacement.id, restart_delay_s(service))
        return replacement

    @staticmethod
    def _slot(tx: Tx, task: Task) -> list[Task]:
        """The tasks that share `task`'s slot (or node, for a global service)."""
        return [
            t
            for t in tx.tasks_of_service(task.service_id)
            if (t.slot, t.node_id if t.slot is None else None)
            == (task.slot, task.node_id if task.slot is None else None)
        ]

    def delay_start(self, old_task_id: str | None, new_task_id: str, delay_s: float) -> None:
        """Move `new_task_id` to desired RUNNING after `delay_s` and once the old task
        is no longer running (SwarmKit's DelayStart)."""
        task = asyncio.get_running_loop().create_task(
            self._start_after(old_task_id, new_task_id, delay_s), name=f"delay-start-{new_task_id}"
        )
        task.add_done_callback(log_failure)
        self._delayed[new_task_id] = task

    def is_delayed(self, task_id: str) -> bool:
        return task_id in self._delayed

    async def wait_old_stopped(self, old_task_id: str | None, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while old_task_id and time.monotonic() < deadline:
            old = self._store.view().get_task(old_task_id)
            if old is None or old.state > TaskState.RUNNING or (old.state < TaskState.ASSIGNED):
                return
            await asyncio.sleep(OLD_TASK_POLL_S)

    async def _start_after(self, old_task_id: str | None, new_task_id: str, delay_s: float) -> None:
        try:
            await asyncio.gather(
                asyncio.sleep(delay_s), self.wait_old_stopped(old_task_id, OLD_TASK_TIMEOUT_S)
            )

            def start(tx: Tx) -> None:
                t = tx.get_task(new_task_id)
                if t is not None and t.desired == TaskState.READY:
                    tx.update(set_desired(t, TaskState.RUNNING))

            self._store.update(start)
        finally:
            self._delayed.pop(new_task_id, None)

    def clear_service(self, service_id: str) -> None:
        for key in [k for k in self._history if k[0] == service_id]:
            del self._history[key]

    def stop(self) -> None:
        for t in self._delayed.values():
            t.cancel()
        self._delayed.clear()

    def statistics(self) -> dict[str, int]:
        return {"restarts": self.restarts, "delayed": len(self._delayed)}
