"""The agent: one session with a manager's dispatcher, and the node's task runners.

It registers the node, sends heartbeats at the period the dispatcher asks for, applies
assignments (starting, updating and removing task runners), reports task statuses in
batches, and serves its tasks' logs to the manager's log broker.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator

import msgspec

from shoal.agent.executor.base import Executor
from shoal.agent.network.state import NetworkState
from shoal.agent.starts import StartSlots, default_limit
from shoal.agent.task_runner import TaskRunner
from shoal.batching import Batcher
from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.log import get_logger
from shoal.metrics import Metrics
from shoal.types.agent import (
    AssignedTask,
    Assignment,
    DispatcherSession,
    LogMessage,
    LogOptions,
    TaskStatusUpdate,
)
from shoal.types.node import NodeDescription, NodeResources
from shoal.types.task import TaskState, TaskStatus, stub_task

# Status changes are reported with a leading edge (shoal/batching.py Batcher): the first
# after REPORT_INTERVAL_S of quiet at once, and the first task that comes to run (or
# ends) after REPORT_INTERVAL_S without one; later ones together REPORT_INTERVAL_S after
# the report before (a burst of starts travels in few reports). At most REPORT_MAX_BATCH
# a message.
REPORT_INTERVAL_S = 0.05
REPORT_MAX_BATCH = 10_000
# A failed session is retried after a backoff doubling between these bounds.
# The kinds of Dependency.key ("secret:<id>", "config:<id>").
DEP_SECRET = "secret"
DEP_CONFIG = "config"
SESSION_BACKOFF_MIN_S = 0.1
SESSION_BACKOFF_MAX_S = 8.0

log = get_logger("shoal.agent")


class Agent:
    def __init__(
        self,
        node_id: str,
        addr: str,
        executor: Executor,
        session: DispatcherSession,
        resources: NodeResources | None = None,
        clock: Clock = SYSTEM_CLOCK,
        network: NetworkState | None = None,
        max_starts: int | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """`max_starts`: task starts in flight at once (shoal.agent.starts; None: its
        default from the CPUs, 0: unbounded). `metrics`: the daemon's."""
        self.metrics = metrics if metrics is not None else Metrics()
        self.node_id = node_id
        # The networks this node's tasks attach to, as the dispatcher sends them: the
        # plumbing and the DNS resolver follow it.
        self.network = network if network is not None else NetworkState()
        self._clock = clock
        self.resources = resources
        self.addr = addr
        self.executor = executor
        self._session = session
        self._runners: dict[str, TaskRunner] = {}
        self.starts = StartSlots(default_limit() if max_starts is None else max_starts)
        self._statuses: dict[str, TaskStatus] = {}
        self._reports = Batcher(clock, REPORT_INTERVAL_S)
        # the last Assignment.network_seq applied, to acknowledge (_acknowledge)
        self._ack_seq = 0
        self._ack_wanted = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # Tasks an earlier daemon left that this node no longer runs, being discarded.
        self._discarding: dict[str, asyncio.Task[None]] = {}
        self._stopping = False
        # Payloads of secrets and configs the dispatcher sent this node, by kind: a
        # node that runs no task needing one never gets it (docker info shows these).
        self._deps_received = {DEP_SECRET: 0, DEP_CONFIG: 0}
        # A runtime that runs health checks itself tells the agent the moment a task
        # turns unhealthy: it leaves this node's backends at once (network/state.py).
        if hasattr(executor, "on_unhealthy"):
            executor.on_unhealthy = self.network.set_down

    # lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._session_loop(), name="agent-session"),
            loop.create_task(self._report_loop(), name="agent-reporter"),
        ]
        warm = getattr(self.executor, "warm", None)
        if warm is not None:  # what the first task's start would wait for (a launcher)
            self._tasks.append(loop.create_task(warm(), name="executor-warm"))
        log.info("agent started", node=self.node_id, max_concurrent_starts=self.starts.limit)

    async def stop(self, stop_tasks: bool = True) -> None:
        """Stop the agent; with `stop_tasks` also stop every task's process (as dockerd
        does without live-restore), else leave them running for the next daemon."""
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*self._discarding.values(), return_exceptions=True)
        runners = list(self._runners.values())
        await asyncio.gather(
            *(r.stop_for_daemon_exit() if stop_tasks else r.detach() for r in runners),
            return_exceptions=True,
        )
        self._runners.clear()
        await self.executor.close()

    # the session ------------------------------------------------------------------------------
    def describe(self) -> NodeDescription:
        desc = self.executor.describe()
        if self.resources is not None:
            desc = msgspec.structs.replace(desc, resources=self.resources)
        return desc

    async def _session_loop(self) -> None:
        backoff = SESSION_BACKOFF_MIN_S
        while not self._stopping:
            try:
                period = await self._session.register(
                    self.node_id, self.describe(), self.addr, self
                )
                backoff = SESSION_BACKOFF_MIN_S
                # The session lasts until either side fails: a missed heartbeat ack or
                # the end of the assignment stream.
                self._ack_seq = 0  # a session numbers its network updates from 1
                parts = [
                    asyncio.create_task(self._heartbeats(period), name="agent-heartbeats"),
                    asyncio.create_task(self._consume(), name="agent-assignments"),
                    asyncio.create_task(self._acknowledge(), name="agent-network-acks"),
                ]
                try:
                    done, _ = await asyncio.wait(parts, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for t in parts:
                        t.cancel()
                    await asyncio.gather(*parts, return_exceptions=True)
                for t in done:
                    exc = None if t.cancelled() else t.exception()
                    if exc is not None:
                        raise exc
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("session with the dispatcher failed", error=repr(e))
            await self._clock.sleep(backoff)
            backoff = min(backoff * 2, SESSION_BACKOFF_MAX_S)

    async def _consume(self) -> None:
        async for assignment in self._session.assignments(self.node_id):
            await self._apply(assignment)

    async def _acknowledge(self) -> None:
        """Draining: tell the manager the highest network update this node has put in
        place (the table, and the kernel through the barriers), without holding up
        the assignments that follow; acknowledgements coalesce while one is awaited."""
        sent = 0
        while True:
            await self._ack_wanted.wait()
            self._ack_wanted.clear()
            seq = self._ack_seq
            if seq <= sent:
                continue
            await self.network.applied()
            await self._session.update_task_status(self.node_id, [], applied=seq)
            sent = seq

    async def _heartbeats(self, period: float) -> None:
        while True:
            await self._clock.sleep(period)
            period = await self._session.heartbeat(self.node_id)

    async def _apply(self, assignment: Assignment) -> None:
        if assignment.network is not None:
            self.network.apply(assignment.network)
        if assignment.network_seq > self._ack_seq:
            self._ack_seq = assignment.network_seq
            self._ack_wanted.set()
        for tid in assignment.drained:
            drained = self._runners.get(tid)
            if drained is not None:
                drained.drained()
        deps = self.executor.dependencies
        if assignment.full:
            deps.clear()
        for d in assignment.dependencies:
            deps[d.key] = d
            kind = d.key.partition(":")[0]
            if kind in self._deps_received:
                self._deps_received[kind] += 1
        if assignment.dependencies or assignment.removed_dependencies:
            log.debug(
                "dependencies changed",
                received=[d.key for d in assignment.dependencies],
                removed=list(assignment.removed_dependencies),
            )
        if assignment.full:
            wanted = {a.task.id for a in assignment.tasks}
            for tid in list(self._runners):
                if tid not in wanted:
                    await self._remove(tid)
            loop = asyncio.get_running_loop()
            for tid in self.executor.known_task_ids():
                if tid not in wanted and tid not in self._runners and tid not in self._discarding:
                    # Left behind by an earlier daemon: stopped and cleaned up aside, so
                    # the tasks this node runs are adopted at once. (One whose start a
                    # kill -9 cut off waits out the executor's start timeout: in line,
                    # a few of them held every task of the node back for a minute.)
                    self._discarding[tid] = loop.create_task(
                        self._discard(tid), name=f"discard-{tid}"
                    )
        for a in assignment.tasks:
            self._upsert(a)
        for tid in assignment.removed:
            await self._remove(tid)
        for key in assignment.removed_dependencies:
            deps.pop(key, None)

    async def _discard(self, task_id: str) -> None:
        try:
            with contextlib.suppress(Exception):
                await discard_task(self.executor, task_id)
        finally:
            self._discarding.pop(task_id, None)

    def _upsert(self, assigned: AssignedTask) -> None:
        task = assigned.task
        runner = self._runners.get(task.id)
        if runner is None:
            controller = self.executor.controller(task, assigned.meta)
            runner = TaskRunner(
                task,
                controller,
                self._report,
                self._clock,
                self.starts,
                host_ports=assigned.meta.host_ports,
                before_stop=self._take_out,
                service_name=assigned.meta.service_name,
                metrics=self.metrics,
                runtime=self.executor.name,
            )
            self._runners[task.id] = runner
            discarding = self._discarding.get(task.id)
            if discarding is None:
                runner.start()
            else:  # ours again before its discard ended: start once it has
                discarding.add_done_callback(lambda _: runner.start())
        else:
            runner.update(task)

    async def _take_out(self, task_id: str) -> None:
        """Before a running task's stop signal (it has drained from the other nodes):
        out of this node's backends too, in the kernel."""
        self.network.set_down(task_id)
        await self.network.applied()

    async def _remove(self, task_id: str) -> None:
        runner = self._runners.pop(task_id, None)
        if runner is not None:
            self._statuses.pop(task_id, None)
            asyncio.get_running_loop().create_task(runner.remove(), name=f"remove-{task_id}")

    # status reports ---------------------------------------------------------------------------
    def _report(self, task_id: str, status: TaskStatus) -> None:
        state = TaskState.from_wire(status.state)
        if state == TaskState.RUNNING:
            self.network.set_up(task_id)  # a backend here first, then on other nodes
        elif state > TaskState.RUNNING:
            self.network.set_down(task_id)  # its process is gone: no backend any more
        self._statuses[task_id] = status
        self._reports.add(urgent=status.task_state >= TaskState.RUNNING)

    async def _report_loop(self) -> None:
        while True:
            await self._reports.next()
            batch, self._statuses = self._statuses, {}
            if not batch:
                continue  # their tasks were removed meanwhile
            updates = [TaskStatusUpdate(task_id=k, status=v) for k, v in batch.items()]
            for i in range(0, len(updates), REPORT_MAX_BATCH):
                try:
                    await self._session.update_task_status(
                        self.node_id, updates[i : i + REPORT_MAX_BATCH]
                    )
                except Exception as e:
                    log.warning("status report failed; will resend", error=repr(e))
                    for u in updates[i:]:
                        self._statuses.setdefault(u.task_id, u.status)
                    self._reports.add()
                    break

    # LogSource --------------------------------------------------------------------------------
    async def task_logs(self, task_id: str, options: LogOptions) -> AsyncIterator[LogMessage]:
        runner = self._runners.get(task_id)
        controller = runner.controller if runner else self.executor.controller(stub_task(task_id))
        async for m in controller.logs(options):
            yield m

    def task_counts(self) -> tuple[int, int]:
        """(tasks running on this node, tasks this node knows)."""
        running = sum(1 for r in self._runners.values() if r.state == TaskState.RUNNING)
        return running, len(self._runners)

    def task_states(self) -> Counter[tuple[str, str, TaskState]]:
        """How many of this node's tasks are in each state, by (service ID, service
        name, state)."""
        return Counter((r.task.service_id, r.service_name, r.state) for r in self._runners.values())

    def dependency_counts(self) -> dict[str, int]:
        """Secrets and configs: held now (in memory) and received since the start."""
        held = [key.partition(":")[0] for key in self.executor.dependencies]
        return {
            "secrets_held": held.count(DEP_SECRET),
            "secrets_received": self._deps_received[DEP_SECRET],
            "configs_held": held.count(DEP_CONFIG),
            "configs_received": self._deps_received[DEP_CONFIG],
        }

    def statistics(self) -> dict[str, int]:
        return {
            "tasks": len(self._runners),
            "pending_reports": len(self._statuses),
            **{f"starts_{k}": v for k, v in self.starts.statistics().items()},
            **self.dependency_counts(),
        }


async def discard_task(executor: Executor, task_id: str) -> None:
    """Stop a task the agent no longer owns, at once, and release what it holds."""
    controller = executor.controller(stub_task(task_id))
    await controller.shutdown(0)
    await controller.remove()
