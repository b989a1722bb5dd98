"""The scheduler: assigns PENDING tasks to nodes.

It keeps its own view of nodes and their tasks, fed by store events, and never queries
the store on the hot path. Pending tasks are collected with a debounce (50 ms after the
last event, 1 s at most; leading-edge: the first after a quiet spell go at once) and
placed in one pass; decisions are written in batched
transactions. Tasks of one service and spec version share one filter pass; nodes are
then taken from a heap ordered by (tasks of this service, all tasks): SwarmKit's spread.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections import defaultdict
from dataclasses import dataclass

import msgspec

from shoal.batching import LeadingEdge
from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.manager.loops import MAX_EVENTS_PER_ROUND, LoopStats, supervise, take_burst
from shoal.manager.scheduler.constraint import node_value
from shoal.manager.scheduler.filters import Pipeline
from shoal.manager.scheduler.nodeinfo import NO_PORTS, HostPorts, NodeInfo, host_ports
from shoal.manager.store import Event, ReadTx, Store, Tx
from shoal.metrics import Metrics
from shoal.types.base import format_time, parse_time
from shoal.types.meta import TaskMeta
from shoal.types.node import Node
from shoal.types.swarm import Cluster
from shoal.types.task import Owner, Task, TaskState, can_transition

# Pending tasks are collected until no event came for COMMIT_DEBOUNCE_S, or for
# MAX_LATENCY_S at most, then placed in one pass (a burst of creations: one pass); but
# the first pending after COMMIT_DEBOUNCE_S without a pass are placed at once.
COMMIT_DEBOUNCE_S = 0.05
MAX_LATENCY_S = 1.0
# The most tasks one placement pass decides: a larger backlog is placed over several
# passes, each committed before the next (the event loop is free between them).
MAX_TASKS_PER_PASS = 500
MSG_ASSIGNED = "scheduler assigned task to node"
MSG_PREASSIGNED = "scheduler confirmed task can run on preassigned node"
MSG_PENDING = "pending task scheduling"
NO_SUITABLE_NODE = "no suitable node"
# Strategies, chosen for the whole cluster by the swarm label STRATEGY_LABEL.
SPREAD = "spread"  # fewest tasks of the service, then fewest tasks (SwarmKit's)
BINPACK = "binpack"  # most tasks first: fill a node before using the next
RANDOM = "random"
STRATEGIES = (SPREAD, BINPACK, RANDOM)
STRATEGY_LABEL = "shoal.scheduler.strategy"


@dataclass(frozen=True, slots=True)
class Decision:
    task_id: str
    node_id: str | None  # None: could not be placed
    err: str | None = None
    message: str = MSG_ASSIGNED


ASSIGNED = TaskState.ASSIGNED.wire
# The scheduler moves PENDING tasks to ASSIGNED, which the state machine allows it.
assert can_transition(TaskState.PENDING, TaskState.ASSIGNED, Owner.SCHEDULER)


def _needs_scheduling(task: Task) -> bool:
    # A job's tasks are desired COMPLETE: they run too.
    return task.state == TaskState.PENDING and task.desired <= TaskState.COMPLETE


class Scheduler:
    """One per leading manager; `run()` until `stop()`."""

    def __init__(
        self, store: Store, clock: Clock = SYSTEM_CLOCK, metrics: Metrics | None = None
    ) -> None:
        self._store = store
        self._clock = clock
        self._metrics = metrics if metrics is not None else Metrics()
        self.nodes: dict[str, NodeInfo] = {}
        self.pending: dict[str, Task] = {}
        # Pending tasks no node could take: not tried again until the nodes change (one
        # joins or is updated, a task leaves one), so a huge unplaceable service costs
        # one pass per task, not one per task per burst of events.
        self.parked: dict[str, Task] = {}
        # host-mode ports of the tasks that bind some (HostPortFilter), from their meta
        self.host_ports: dict[str, HostPorts] = {}
        self._pipeline = Pipeline(self._ports_of)
        self._stopped = asyncio.Event()
        self.scheduled = 0
        self.passes = 0
        # Leading edge (shoal/batching.py): tasks that become pending after
        # COMMIT_DEBOUNCE_S without any are placed at once, without the debounce.
        self._edge = LeadingEdge(clock, COMMIT_DEBOUNCE_S)
        self.strategy = SPREAD
        self._random = random.Random()
        self._stats = LoopStats()

    # state from the store ---------------------------------------------------------------
    def load(self, view: ReadTx) -> None:
        self._observe_cluster(view.cluster())
        self.nodes = {n.id: NodeInfo.of(n) for n in view.nodes()}
        # emptied in place: the dicts made in the constructor are the ones the manager
        # moved out of the garbage collector's way (Manager.start)
        self.pending.clear()
        self.parked.clear()
        self.host_ports.clear()
        for t in view.tasks():
            self._note_ports(t.id, view.task_meta(t.id))
            self._observe_task(t)

    def _note_ports(self, task_id: str, meta: TaskMeta | None) -> None:
        if meta is not None and meta.host_ports and task_id not in self.host_ports:
            ports = host_ports(meta)
            if ports:
                self.host_ports[task_id] = ports

    def _ports_of(self, task_id: str) -> HostPorts:
        return self.host_ports.get(task_id, NO_PORTS)

    def _observe_task(self, task: Task) -> None:
        if _needs_scheduling(task):
            if task.id in self.parked:
                self.parked[task.id] = task
            else:
                self.pending[task.id] = task
        else:
            self.pending.pop(task.id, None)
            self.parked.pop(task.id, None)
        info = self.nodes.get(task.node_id) if task.node_id else None
        if info is None:
            return
        # A task holds its node's resources from ASSIGNED until it has really stopped.
        if TaskState.ASSIGNED <= task.state <= TaskState.RUNNING:
            if task.id in info.tasks:
                info.tasks[task.id] = task
            else:
                info.add_task(task, self._ports_of(task.id))
        elif task.id in info.tasks:
            info.remove_task(task.id)
            self._unpark()

    def _forget_task(self, task: Task, removed: bool = False) -> None:
        if removed:
            self.host_ports.pop(task.id, None)
        self.pending.pop(task.id, None)
        self.parked.pop(task.id, None)
        if task.node_id and task.node_id in self.nodes:
            info = self.nodes[task.node_id]
            if task.id in info.tasks:
                info.remove_task(task.id)
                self._unpark()

    def _unpark(self) -> None:
        """The nodes changed: the tasks that fit none may fit now."""
        if self.parked:
            self.pending.update(self.parked)
            self.parked.clear()

    def _observe_cluster(self, cluster: Cluster | None) -> None:
        labels = (cluster.spec.labels if cluster else None) or {}
        wanted = labels.get(STRATEGY_LABEL, SPREAD)
        self.strategy = wanted if wanted in STRATEGIES else SPREAD

    def _observe_node(self, node: Node) -> None:
        self._unpark()
        info = self.nodes.get(node.id)
        if info is None:
            self.nodes[node.id] = NodeInfo.of(node)
            return
        old_res = info.node.description.resources
        new_res = node.description.resources
        info.available_cpus += new_res.nano_cpus - old_res.nano_cpus
        info.available_memory += new_res.memory_bytes - old_res.memory_bytes
        info.node = node

    def apply(self, events: list[Event]) -> None:
        for ev in events:
            if ev.kind == "task":
                if ev.action == "remove":
                    self._forget_task(ev.obj, removed=True)
                else:
                    self._note_ports(ev.obj.id, ev.meta)
                    if ev.old is not None and ev.old.node_id != ev.obj.node_id:
                        self._forget_task(ev.old)
                    self._observe_task(ev.obj)
            elif ev.kind == "cluster" and ev.action != "remove":
                self._observe_cluster(ev.obj)
            elif ev.kind == "node":
                if ev.action == "remove":
                    self.nodes.pop(ev.obj.id, None)
                else:
                    self._observe_node(ev.obj)

    # the loop -------------------------------------------------------------------------------
    async def run(self) -> None:
        await supervise("scheduler", self._run_once, self._stopped, self._stats, self._clock)

    async def _run_once(self) -> None:
        """Load the view (again, after a failed round: a resync), then place what each
        debounced burst of events leaves pending."""
        watcher = self._store.watch("task", "node", "cluster")
        try:
            self.load(self._store.view())
            await self.tick()
            while not self._stopped.is_set():
                events = await watcher.__anext__()
                events.extend(watcher.get_nowait_all(MAX_EVENTS_PER_ROUND))
                self.apply(events)
                # Placed at once (leading edge) when tasks are pending, now or as soon
                # as the burst brings some, and no pass went for COMMIT_DEBOUNCE_S.
                await take_burst(
                    watcher,
                    self.apply,
                    self._clock,
                    COMMIT_DEBOUNCE_S,
                    MAX_LATENCY_S,
                    full=lambda: bool(self.pending) and self._edge.delay() == 0,
                )
                if self.pending:
                    self._edge.sent()
                await self.tick()
                self._stats.rounds += 1
        finally:
            watcher.close()

    def stop(self) -> None:
        self._stopped.set()

    async def tick(self) -> None:
        """Place every pending task and commit the decisions, MAX_TASKS_PER_PASS at a
        time; the tasks that fit nowhere are parked."""
        while self.pending:
            chunk = list(itertools.islice(self.pending.values(), MAX_TASKS_PER_PASS))
            decisions = self.schedule(chunk)
            self.passes += 1
            await self._commit(decisions)
            # a turn of the event loop between passes, even when a pass wrote nothing
            # (200k unparked tasks that still fit nowhere: 200 passes, not one turn)
            await asyncio.sleep(0)

    # placement ------------------------------------------------------------------------------
    def schedule(self, tasks: list[Task]) -> list[Decision]:
        """Decide a node for each task, updating the local view as if they were placed."""
        decisions: list[Decision] = []
        groups: dict[tuple[str, int], list[Task]] = defaultdict(list)
        meta = self._store.view().task_meta
        for t in tasks:
            if t.node_id:
                decisions.append(self._check_preassigned(t))
            else:
                groups[(t.service_id, meta(t.id).spec_version)].append(t)
        for group in groups.values():
            group.sort(key=lambda t: (t.slot or 0, t.id))
            self._schedule_group(group, decisions)
        return decisions

    def _check_preassigned(self, task: Task) -> Decision:
        info = self.nodes.get(task.node_id or "")
        self._pipeline.set_task(task)
        if info is not None and self._pipeline.process(info):
            info.add_task(_assigned(task, info.id), self._ports_of(task.id))
            return Decision(task.id, info.id, message=MSG_PREASSIGNED)
        return Decision(task.id, None, err=self._no_suitable_node())

    def _schedule_group(self, tasks: list[Task], decisions: list[Decision]) -> None:
        first = tasks[0]
        self._pipeline.set_task(first)
        candidates = [info for info in self.nodes.values() if self._pipeline.process(info)]
        placement = first.spec.placement
        prefs = [
            p.spread.spread_descriptor
            for p in (placement.preferences or [] if placement else [])
            if p.spread and p.spread.spread_descriptor
        ]
        leftover = self._spread(candidates, prefs, tasks, decisions)
        if leftover:
            # What stopped the rest: run the filters again against the updated view.
            self._pipeline.set_task(leftover[0])
            for info in self.nodes.values():
                self._pipeline.process(info)
            err = self._no_suitable_node()
            decisions.extend(Decision(t.id, None, err=err) for t in leftover)

    def _no_suitable_node(self) -> str:
        explanation = self._pipeline.explain()
        return f"{NO_SUITABLE_NODE} ({explanation})" if explanation else NO_SUITABLE_NODE

    def _spread(
        self,
        candidates: list[NodeInfo],
        prefs: list[str],
        tasks: list[Task],
        decisions: list[Decision],
    ) -> list[Task]:
        """Placement preferences: split tasks evenly over the branches of each label,
        top-down; then fill nodes by spread order. Returns the tasks that fit nowhere."""
        if not tasks or not candidates:
            return tasks
        if not prefs:
            return self._fill(candidates, tasks, decisions)
        service_id = tasks[0].service_id
        branches: dict[str, list[NodeInfo]] = defaultdict(list)
        for info in candidates:
            branches[node_value(info.node, prefs[0]) or ""].append(info)
        load = {
            b: sum(i.service_counts.get(service_id, 0) for i in infos)
            for b, infos in branches.items()
        }
        share: dict[str, list[Task]] = defaultdict(list)
        heap = [(n, b) for b, n in load.items()]
        heapq.heapify(heap)
        for t in tasks:
            n, b = heapq.heappop(heap)
            share[b].append(t)
            heapq.heappush(heap, (n + 1, b))
        leftover: list[Task] = []
        for b, ts in share.items():
            leftover.extend(self._spread(branches[b], prefs[1:], ts, decisions))
        if leftover:
            leftover = self._fill(candidates, leftover, decisions)
        return leftover

    def _fill(
        self, candidates: list[NodeInfo], tasks: list[Task], decisions: list[Decision]
    ) -> list[Task]:
        """Place `tasks` on `candidates` in strategy order. Nodes sit in a heap keyed by
        the strategy; a node whose counters changed since it was pushed is re-keyed when
        it surfaces (lazy update), so each placement costs O(log nodes)."""
        if self.strategy == RANDOM:
            return self._fill_random(candidates, tasks, decisions)
        service_id = tasks[0].service_id
        binpack = self.strategy == BINPACK

        def key(i: NodeInfo) -> tuple[int, int]:
            svc = i.service_counts.get(service_id, 0)
            return (-i.active_count, -svc) if binpack else (svc, i.active_count)

        heap = [(key(i), i.id, i) for i in candidates]
        heapq.heapify(heap)
        pipeline = self._pipeline
        pipeline.set_task(tasks[0])
        leftover: list[Task] = []
        for task in tasks:
            placed = False
            while heap:
                k, nid, info = heapq.heappop(heap)
                if k != key(info):
                    heapq.heappush(heap, (key(info), nid, info))
                    continue
                if not pipeline.process_dynamic(info):
                    continue  # full for this group: resources and replicas only shrink here
                info.add_task(_assigned(task, info.id), self._ports_of(task.id))
                decisions.append(Decision(task.id, info.id))
                heapq.heappush(heap, (key(info), nid, info))
                placed = True
                break
            if not placed:
                leftover.append(task)
        return leftover

    def _fill_random(
        self, candidates: list[NodeInfo], tasks: list[Task], decisions: list[Decision]
    ) -> list[Task]:
        """Each task on a node drawn uniformly from those it still fits."""
        pool = list(candidates)
        self._pipeline.set_task(tasks[0])
        leftover: list[Task] = []
        for task in tasks:
            while pool:
                i = self._random.randrange(len(pool))
                info = pool[i]
                if not self._pipeline.process_dynamic(info):
                    pool[i] = pool[-1]
                    pool.pop()  # full for this group
                    continue
                info.add_task(_assigned(task, info.id), self._ports_of(task.id))
                decisions.append(Decision(task.id, info.id))
                break
            else:
                leftover.append(task)
        return leftover

    # writing decisions ------------------------------------------------------------------------
    async def _commit(self, decisions: list[Decision]) -> None:
        """Write the decisions; the scheduler's own view follows after the commit (the
        transaction only notes what it did)."""
        now_ns = self._clock.time_ns()
        ts = format_time(now_ns)
        stale: list[Decision] = []  # tasks gone or already handled: placed in our view only
        assigned: list[Decision] = []
        created: list[str] = []  # the CreatedAt of each assigned task

        def write(tx: Tx, d: Decision) -> None:
            t = tx.get_task(d.task_id)
            if t is None or not _needs_scheduling(t):
                stale.append(d)
                return
            # (_needs_scheduling: the task is PENDING, which the scheduler may assign)
            if d.node_id is None:
                if t.status.err == d.err and t.status.message == MSG_PENDING:
                    return
                status = msgspec.structs.replace(
                    t.status, message=MSG_PENDING, err=d.err, timestamp=ts
                )
                tx.update(msgspec.structs.replace(t, status=status))
                return
            status = msgspec.structs.replace(
                t.status, state=ASSIGNED, message=d.message, err=None, timestamp=ts
            )
            tx.update(msgspec.structs.replace(t, node_id=d.node_id, status=status))
            assigned.append(d)
            created.append(t.created_at)

        placed = [d for d in decisions if d.node_id is not None]
        failed = [d for d in decisions if d.node_id is None]
        await self._store.batch(placed + failed, write)
        for d in stale:
            if d.node_id is not None and d.node_id in self.nodes:
                self.nodes[d.node_id].remove_task(d.task_id)
        self.scheduled += len(assigned)
        self._observe_latency(now_ns, created)
        for d in placed:
            self.pending.pop(d.task_id, None)
        for d in failed:
            task = self.pending.pop(d.task_id, None)
            if task is not None:
                self.parked[d.task_id] = task

    def _observe_latency(self, now_ns: int, created: list[str]) -> None:
        """Count the assignments just committed, and time each from its task's
        CreatedAt to the assignment's timestamp (tasks made in one transaction share
        their CreatedAt: each distinct one is parsed once)."""
        self._metrics.tasks_scheduled.inc(len(created))
        parsed: dict[str, float] = {}
        for text in created:
            latency = parsed.get(text)
            if latency is None:
                latency = parsed[text] = (
                    max(0.0, (now_ns - parse_time(text)) / 1e9) if text else 0.0
                )
            self._metrics.scheduling_seconds.observe(latency)

    def statistics(self) -> dict[str, int]:
        return {
            "nodes": len(self.nodes),
            "pending": len(self.pending) + len(self.parked),
            "scheduled": self.scheduled,
            "passes": self.passes,
            **self._stats.as_dict(),
        }


def _assigned(task: Task, node_id: str) -> Task:
    return msgspec.structs.replace(task, node_id=node_id)
