"""The dispatcher: one session per agent.

It registers nodes, watches their heartbeats (a node that misses `HEARTBEAT_GRACE`
periods is marked down), streams each node its assignments (first the complete set,
then only what changed: new tasks, desired-state changes, removals), and writes the
task statuses agents report in batches bounded by size and time.
"""

from __future__ import annotations

import asyncio
import heapq
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import msgspec

from shoal.batching import Batcher
from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.errors import NotFound
from shoal.log import get_logger
from shoal.manager.ca.removed import remove_node
from shoal.manager.dispatcher.drain import DrainTracker
from shoal.manager.dispatcher.networks import NetworkView
from shoal.manager.loops import MAX_EVENTS_PER_ROUND, LoopStats, next_backoff
from shoal.manager.store import Event, ReadTx, Store, Tx, WatcherClosed
from shoal.metrics import Metrics
from shoal.types.agent import (
    AssignedTask,
    Assignment,
    Dependency,
    LogSource,
    TaskStatusUpdate,
)
from shoal.types.base import parse_time
from shoal.types.meta import TaskMeta
from shoal.types.node import NODE_JOINED, ManagerStatus, Node, NodeDescription, NodeStatus
from shoal.types.swarm import DEFAULT_HEARTBEAT_PERIOD_NS
from shoal.types.task import Owner, Task, TaskState, TaskStatus, can_transition

# What the route loop watches: tasks and nodes for assignments; services and networks
# too for the nodes' network views (dispatcher/networks.py).
ROUTED_KINDS = ("task", "node", "service", "network")
HEARTBEAT_GRACE = 3  # periods without a heartbeat before a node is down
HEARTBEAT_EPSILON_S = 0.5  # jitter on the period given to agents
# A new leader's grace for the nodes it has no session with yet: longer than an agent's
# longest wait between two session tries (8 s), so a fail-over loses no live node.
UNKNOWN_NODE_GRACE_S = 12.0
# Agents' status reports are written with a leading edge (shoal/batching.py Batcher):
# the first after STATUS_BATCH_INTERVAL_S of quiet at once, and the first of a task that
# came to run (or ended) after STATUS_BATCH_INTERVAL_S without one; later ones in one
# batch STATUS_BATCH_INTERVAL_S after the write before, or at once when
# STATUS_BATCH_MAX_ITEMS are waiting.
STATUS_BATCH_MAX_ITEMS = 10_000
STATUS_BATCH_INTERVAL_S = 0.1
MSG_HEARTBEAT_FAILURE = "heartbeat failure"
# A node that joined (it holds a certificate) but never opened a session is forgotten
# after this long, so joins that go nowhere do not leave node rows forever.
UNREGISTERED_NODE_TTL_S = 300.0
UNREGISTERED_SWEEP_S = 30.0

log = get_logger("shoal.manager.dispatcher")


@dataclass(slots=True)
class _Session:
    node_id: str
    logs: LogSource
    # None: the session was revoked (node removed, role changed); its stream ends
    queue: asyncio.Queue[Assignment | None] = field(default_factory=asyncio.Queue)
    sent: set[str] = field(default_factory=set)
    # need-to-know: the dependencies each sent task holds, and how many tasks hold each
    task_deps: dict[str, list[str]] = field(default_factory=dict)
    held: dict[str, int] = field(default_factory=dict)
    # the last Assignment.network_seq sent (dispatcher/drain.py)
    network_seq: int = 0

    def send(self, a: Assignment) -> None:
        if a.network is not None:
            self.network_seq += 1
            a = msgspec.structs.replace(a, network_seq=self.network_seq)
        self.queue.put_nowait(a)


def dependency_keys(task: Task) -> list[str]:
    """ "secret:<id>" and "config:<id>" for what the task's container spec refers to."""
    cs = task.spec.container_spec
    if cs is None:
        return []
    keys = [f"secret:{r.secret_id}" for r in cs.secrets or () if r.secret_id]
    keys += [f"config:{r.config_id}" for r in cs.configs or () if r.config_id]
    return sorted(set(keys))


def _assignable(task: Task) -> bool:
    return task.node_id is not None and task.state >= TaskState.ASSIGNED


class Dispatcher:
    """Implements the agent side's `DispatcherSession` protocol."""

    def __init__(
        self, store: Store, clock: Clock = SYSTEM_CLOCK, metrics: Metrics | None = None
    ) -> None:
        self._store = store
        self._clock = clock
        self._metrics = metrics if metrics is not None else Metrics()
        self._sessions: dict[str, _Session] = {}
        self._networks = NetworkView()
        self._drain = DrainTracker()
        # per node, the monotonic time after which it is down: set at each beat from the
        # period that node was given (a period changed meanwhile applies from its next
        # beat), and kept after a session drops so the node still expires
        self._deadlines: dict[str, float] = {}
        # the same deadlines in time order, for one timer on the earliest; an entry a
        # later beat superseded is dropped when it surfaces (so a beat costs O(log n))
        self._deadline_heap: list[tuple[float, str]] = []
        self._earlier_deadline = asyncio.Event()
        # keyed by (node, task): a node's report never replaces another node's
        self._pending_status: dict[tuple[str, str], TaskStatus] = {}
        self._status_batches = Batcher(clock, STATUS_BATCH_INTERVAL_S)
        self._stopped = asyncio.Event()
        self.status_writes = 0
        self.rejected_reports = 0  # malformed frames, bad items
        self._stats: dict[str, LoopStats] = {
            name: LoopStats() for name in ("route", "status", "heartbeats", "unregistered")
        }

    # configuration --------------------------------------------------------------------------
    def heartbeat_period(self) -> float:
        cluster = self._store.view().cluster()
        period = DEFAULT_HEARTBEAT_PERIOD_NS
        if cluster and cluster.spec.dispatcher and cluster.spec.dispatcher.heartbeat_period:
            period = cluster.spec.dispatcher.heartbeat_period
        return period / 1e9

    # the loops ------------------------------------------------------------------------------
    async def run(self) -> None:
        """Until stop(); after close_all() it may run again (a manager leading again)."""
        self._arm_unknown()
        loops = [
            asyncio.create_task(self._route_loop(), name="dispatcher-route"),
            asyncio.create_task(self._flush_loop(), name="dispatcher-status"),
            asyncio.create_task(self._expire_loop(), name="dispatcher-heartbeats"),
            asyncio.create_task(self._forget_loop(), name="dispatcher-unregistered"),
        ]
        try:
            await self._stopped.wait()
        finally:
            for t in loops:
                t.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await self._flush()

    def stop(self) -> None:
        self._stopped.set()

    def _arm_unknown(self) -> None:
        """A dispatcher that starts (a new leader's) gives every node the store says is
        up and that has no session here a grace of HEARTBEAT_GRACE periods (at least
        UNKNOWN_NODE_GRACE_S) to register before it is down (SwarmKit marks them
        unknown): a node that died with the old leader, or while no manager led, is
        noticed, and one whose agent is between two tries is not taken for dead (a node
        down has its tasks replaced)."""
        grace = max(self.heartbeat_period() * HEARTBEAT_GRACE, UNKNOWN_NODE_GRACE_S)
        deadline = self._clock.monotonic() + grace
        for node in self._store.view().nodes():
            if node.status.state == "down" or node.id in self._deadlines:
                continue
            self._deadlines[node.id] = deadline
            heapq.heappush(self._deadline_heap, (deadline, node.id))
        self._earlier_deadline.set()

    def close_all(self, reason: str) -> None:
        """This manager stopped leading: every session ends (the agents go to the new
        leader), and the deadlines are forgotten (the new leader keeps them)."""
        for node_id in list(self._sessions):
            self.revoke(node_id, reason)
        self._deadlines.clear()
        self._deadline_heap.clear()
        self._pending_status.clear()
        self._stopped = asyncio.Event()  # run() may start again

    async def _forever(self, what: str, round_: Callable[[], Awaitable[None]]) -> None:
        """Run `round_` again and again: one that raises is logged with the loop's name
        and counted, and the loop goes on after a backoff that doubles while rounds keep
        failing."""
        stats = self._stats[what]
        backoff = 0.0
        while True:
            try:
                await round_()
                stats.rounds += 1
                backoff = 0.0
            except Exception:
                stats.failures += 1
                log.exception("dispatcher loop failed; continuing", loop=what)
                backoff = next_backoff(backoff)
                await self._clock.sleep(backoff)

    async def _route_loop(self) -> None:
        """Route committed task changes to the sessions of their nodes. A round that
        raises is logged and counted, and every session is sent its complete set again
        (what the round should have sent is in it), after a backoff that doubles while
        rounds keep failing; a watcher that fell behind is replaced the same way."""
        stats = self._stats["route"]
        watcher = self._store.watch(*ROUTED_KINDS)
        self._resend_full()  # builds the network view; sessions opened before get it
        backoff = 0.0
        try:
            while True:
                try:
                    events = await watcher.__anext__()
                    events.extend(watcher.get_nowait_all(MAX_EVENTS_PER_ROUND))
                    self._route_events(events)
                    stats.rounds += 1
                    backoff = 0.0
                except WatcherClosed as e:
                    stats.resyncs += 1
                    log.warning("dispatcher resyncs its sessions", reason=str(e))
                    watcher.close()
                    watcher = self._store.watch(*ROUTED_KINDS)
                    self._resend_full()
                except Exception:
                    stats.failures += 1
                    log.exception("dispatcher loop failed; continuing", loop="route")
                    backoff = next_backoff(backoff)
                    await self._clock.sleep(backoff)
                    self._resend_full()
        finally:
            watcher.close()

    def _resend_full(self) -> None:
        view = self._store.view()
        self._networks = NetworkView.build(view)
        for node_id, s in self._sessions.items():
            s.queue.put_nowait(self._full_set(view, node_id, s))  # numbered there

    def _full_set(self, view: ReadTx, node_id: str, s: _Session) -> Assignment:
        """Every task the node must run, with the secrets and configs they need, as the
        first message of a session says it."""
        tasks = [
            AssignedTask(task=t, meta=view.task_meta(t.id))
            for t in view.tasks_on_node(node_id)
            if _assignable(t)
        ]
        s.sent = {a.task.id for a in tasks}
        s.network_seq += 1
        full = Assignment(
            full=True,
            tasks=tasks,
            network=self._networks.full(node_id),
            network_seq=s.network_seq,
        )
        s.task_deps, s.held = {}, {}
        for assigned in tasks:
            if not assigned.task.state.terminal:
                self._acquire(s, assigned.task, full)
        return full

    def _route_events(self, events: list[Event]) -> None:
        changes: dict[str, Assignment] = {}
        leaving: list[Task] = []
        for ev in events:
            if ev.kind == "node":
                self._node_changed(ev)
            elif ev.kind == "task":
                self._route_event(ev, changes)
                self._track_leaving(ev, leaving)
        for node_id, update in self._networks.apply(events).items():
            if node_id in self._sessions:
                a = changes.setdefault(node_id, Assignment())
                changes[node_id] = msgspec.structs.replace(a, network=update)
        for node_id, a in changes.items():
            s = self._sessions.get(node_id)
            if s is not None:
                s.send(a)
        # after this round's updates are numbered: what each node must have applied
        sent = {n: s.network_seq for n, s in self._sessions.items()}
        drained: dict[str, list[str]] = {}
        for t in leaving:
            assert t.node_id is not None
            if self._drain.leaving(t.id, t.node_id, sent):
                drained.setdefault(t.node_id, []).append(t.id)
        self._tell_drained(drained)

    def _track_leaving(self, ev: Event, leaving: list[Task]) -> None:
        """A task on networks whose desired state just moved past RUNNING while it is
        live on a node is leaving: it must drain before it stops (drain.py)."""
        t: Task = ev.obj
        old: Task | None = ev.old
        if ev.action == "remove" or t.state > TaskState.RUNNING:
            self._drain.forget(t.id)
            return
        if (
            old is not None
            and old.desired <= TaskState.RUNNING < t.desired
            and t.networks_attachments
            and t.node_id in self._sessions
        ):
            leaving.append(t)

    def _tell_drained(self, drained: dict[str, list[str]]) -> None:
        for node_id, task_ids in drained.items():
            s = self._sessions.get(node_id)
            if s is not None:
                s.send(Assignment(drained=task_ids))

    def _node_changed(self, ev: Event) -> None:
        """A removed node, or one whose role changed, loses its session at once: the
        certificate it holds no longer says what the store says (see clusterport/access)."""
        old: Node | None = ev.old
        if ev.action == "remove":
            self.revoke(ev.obj.id, "the node was removed from the swarm")
        elif old is not None and old.spec.role != ev.obj.spec.role:
            self.revoke(ev.obj.id, f"the node's role changed to {ev.obj.spec.role}")

    def revoke(self, node_id: str, reason: str) -> None:
        s = self._sessions.pop(node_id, None)
        self._deadlines.pop(node_id, None)
        if s is not None:
            log.info("session revoked", node=node_id, reason=reason)
            s.queue.put_nowait(None)
            self._tell_drained(self._drain.session_ended(node_id))

    def _route_event(self, ev: Event, changes: dict[str, Assignment]) -> None:
        task: Task = ev.obj
        old: Task | None = ev.old
        meta: TaskMeta = ev.meta

        def add(node_id: str, t: Task | None = None, removed: str | None = None) -> None:
            s = self._sessions.get(node_id)
            if s is None:
                return
            a = changes.setdefault(node_id, Assignment())
            if t is not None:
                if t.id not in s.sent and not t.state.terminal:
                    self._acquire(s, t, a)
                elif t.state > TaskState.RUNNING:
                    self._release(s, t.id, a)
                a.tasks.append(AssignedTask(task=t, meta=meta))
                s.sent.add(t.id)
            if removed is not None and removed in s.sent:
                a.removed.append(removed)
                s.sent.discard(removed)
                self._release(s, removed, a)

        if old is not None and old.node_id and old.node_id != task.node_id:
            add(old.node_id, removed=old.id)
        if ev.action == "remove":
            if task.node_id:
                add(task.node_id, removed=task.id)
            return
        if not _assignable(task):
            return
        assert task.node_id is not None
        s = self._sessions.get(task.node_id)
        if s is None:
            return
        if task.id not in s.sent or old is None or old.desired_state != task.desired_state:
            add(task.node_id, task)

    def _acquire(self, s: _Session, task: Task, a: Assignment) -> None:
        """The task's dependencies, sent to the node with it unless it holds them."""
        keys = dependency_keys(task)
        if not keys:
            return
        s.task_deps[task.id] = keys
        view = self._store.view()
        for key in keys:
            if s.held.get(key, 0) == 0:
                dep = _payload(view, key)
                if dep is None:
                    continue
                a.dependencies.append(dep)
                if key in a.removed_dependencies:
                    a.removed_dependencies.remove(key)
            s.held[key] = s.held.get(key, 0) + 1

    @staticmethod
    def _release(s: _Session, task_id: str, a: Assignment) -> None:
        """A task that left the node (or finished) no longer holds its dependencies;
        the node drops those no other task there holds."""
        for key in s.task_deps.pop(task_id, ()):
            left = s.held.get(key, 0) - 1
            if left > 0:
                s.held[key] = left
                continue
            s.held.pop(key, None)
            a.dependencies[:] = [d for d in a.dependencies if d.key != key]
            a.removed_dependencies.append(key)

    async def _flush_loop(self) -> None:
        """Idle until a report arrives; then write it at once if no write went for
        STATUS_BATCH_INTERVAL_S (or it holds the first task to run or end for as long),
        else everything that arrived by STATUS_BATCH_INTERVAL_S after the last write
        (or sooner, once the batch is full) in one write."""

        async def round_() -> None:
            await self._status_batches.next()
            await self._flush()

        await self._forever("status", round_)

    async def _expire_loop(self) -> None:
        """One timer, on the earliest deadline; a registration (or a shorter period)
        that brings the earliest deadline forward re-arms it."""

        async def round_() -> None:
            self._earlier_deadline.clear()
            now = self._clock.monotonic()
            due: dict[str, float] = {}
            while self._deadline_heap and self._deadline_heap[0][0] <= now:
                deadline, node_id = heapq.heappop(self._deadline_heap)
                if self._deadlines.get(node_id) == deadline:  # else a later beat moved it
                    due[node_id] = deadline
            if due:  # a wave of nodes lost at once is marked down in one write
                await self._expire(due)
            if not self._deadline_heap:
                await self._earlier_deadline.wait()
                return
            wait_s = self._deadline_heap[0][0] - now
            try:
                await self._clock.wait_for(self._earlier_deadline.wait(), wait_s)
            except TimeoutError:
                pass

        await self._forever("heartbeats", round_)

    async def _expire(self, due: dict[str, float]) -> None:
        """Mark the nodes whose deadlines (`due`) passed down, all in one write."""
        for node_id in due:
            log.warning("node missed heartbeats", node=node_id)
            del self._deadlines[node_id]
            if self._sessions.pop(node_id, None) is not None:
                self._tell_drained(self._drain.session_ended(node_id))
        try:
            await self._mark_down(list(due))
        except BaseException:
            # not marked down: the nodes are still due, the next round tries again
            for node_id, deadline in due.items():
                self._deadlines.setdefault(node_id, deadline)
                heapq.heappush(self._deadline_heap, (deadline, node_id))
            raise

    async def _forget_loop(self) -> None:
        async def round_() -> None:
            await self._clock.sleep(UNREGISTERED_SWEEP_S)
            await self.forget_unregistered(self._clock.time_ns())

        await self._forever("unregistered", round_)

    async def forget_unregistered(self, now: int) -> None:
        """Remove the nodes that joined before `now` less the TTL and never registered."""
        cutoff = now - int(UNREGISTERED_NODE_TTL_S * 1e9)

        def write(tx: Tx) -> None:
            for node in tx.nodes():
                if node.status.state == NODE_JOINED and parse_time(node.created_at) < cutoff:
                    log.info("forgetting a node that joined but never registered", node=node.id)
                    remove_node(tx, node.id, now)

        await self._store.update(write)

    # the session API (called by agents) --------------------------------------------------------
    async def register(
        self,
        node_id: str,
        description: NodeDescription,
        addr: str,
        logs: LogSource,
        manager_addr: str | None = None,
    ) -> float:
        """`manager_addr`: the cluster port of a manager's node (several managers:
        recorded in its ManagerStatus, where agents learn it from)."""

        def write(tx: Tx) -> None:
            node = tx.get_node(node_id)
            if node is None:
                raise NotFound(f"node {node_id} not found")
            status = NodeStatus(state="ready", addr=addr)
            manager_status = node.manager_status
            if manager_addr and node.spec.role == "manager":
                manager_status = ManagerStatus(
                    leader=bool(manager_status and manager_status.leader),
                    reachability="reachable",
                    addr=manager_addr,
                )
            tx.update(
                msgspec.structs.replace(
                    node,
                    description=_keep_tls(node, description),
                    status=status,
                    manager_status=manager_status,
                )
            )

        await self._store.update(write)
        if self._sessions.pop(node_id, None) is not None:
            self._tell_drained(self._drain.session_ended(node_id))
        self._sessions[node_id] = _Session(node_id, logs)
        self._drain.session_started(node_id)
        log.info("node registered", node=node_id, addr=addr)
        return self._next_beat(node_id)

    async def heartbeat(self, node_id: str) -> float:
        if node_id not in self._sessions:
            raise NotFound(f"node {node_id} has no session")
        return self._next_beat(node_id)

    def _next_beat(self, node_id: str) -> float:
        """The period to give the node now (jittered), arming its deadline from it."""
        self._metrics.heartbeats.inc()
        period = self.heartbeat_period()
        given = period + random.uniform(-HEARTBEAT_EPSILON_S, HEARTBEAT_EPSILON_S) * min(
            1.0, period / 5
        )
        deadline = self._clock.monotonic() + given * HEARTBEAT_GRACE
        self._deadlines[node_id] = deadline
        if not self._deadline_heap or deadline < self._deadline_heap[0][0]:
            self._earlier_deadline.set()
        heapq.heappush(self._deadline_heap, (deadline, node_id))
        return given

    async def assignments(self, node_id: str) -> AsyncIterator[Assignment]:
        s = self._sessions.get(node_id)
        if s is None:
            raise NotFound(f"node {node_id} has no session")
        full = self._full_set(self._store.view(), node_id, s)
        # anything queued before now is contained in the complete set
        while not s.queue.empty():
            s.queue.get_nowait()
        yield full
        while self._sessions.get(node_id) is s:
            a = await s.queue.get()
            if a is None:
                return
            yield a

    async def update_task_status(
        self, node_id: str, updates: list[TaskStatusUpdate], applied: int = 0
    ) -> None:
        if applied and node_id in self._sessions:
            self._tell_drained(self._drain.acked(node_id, applied))
        urgent = False
        for u in updates:
            self._pending_status[(node_id, u.task_id)] = u.status
            urgent = urgent or u.status.task_state >= TaskState.RUNNING
        if self._pending_status:
            self._status_batches.add(urgent)
        if len(self._pending_status) >= STATUS_BATCH_MAX_ITEMS:
            self._status_batches.now()

    def reject_report(self, node_id: str, error: str) -> None:
        """A report that broke the protocol (it did not decode): dropped, alone."""
        self.rejected_reports += 1
        log.warning("agent report rejected", node=node_id, error=error)

    def close_session(self, node_id: str, logs: LogSource | None = None) -> None:
        """The agent's connection ended. The node stays as it is until its heartbeats
        expire; only the session that registered `logs` is closed (not a newer one)."""
        s = self._sessions.get(node_id)
        if s is not None and (logs is None or s.logs is logs):
            del self._sessions[node_id]
            self._tell_drained(self._drain.session_ended(node_id))

    def log_source(self, node_id: str) -> LogSource | None:
        s = self._sessions.get(node_id)
        return s.logs if s else None

    # writes ---------------------------------------------------------------------------------
    async def _flush(self) -> None:
        if not self._pending_status:
            return
        batch, self._pending_status = self._pending_status, {}
        written = 0

        def write(tx: Tx, item: tuple[tuple[str, str], TaskStatus]) -> None:
            nonlocal written
            written += _write_status(tx, item)

        try:
            await self._store.batch(batch.items(), write)
        except Exception:
            # Not all written (a commit the store took back: disk full): the reports go
            # back in the queue for the next round, behind newer ones about the same task.
            for key, status in batch.items():
                self._pending_status.setdefault(key, status)
            self._status_batches.add()
            raise
        self.status_writes += written

    async def _mark_down(self, node_ids: list[str]) -> None:
        def write(tx: Tx) -> None:
            for node_id in node_ids:
                self._set_node_state(tx, node_id, "down", MSG_HEARTBEAT_FAILURE)

        await self._store.update(write)

    @staticmethod
    def _set_node_state(tx: Tx, node_id: str, state: str, message: str | None) -> None:
        node = tx.get_node(node_id)
        if node is None or node.status.state == state:
            return
        status = msgspec.structs.replace(node.status, state=state, message=message)
        tx.update(msgspec.structs.replace(node, status=status))

    def statistics(self) -> dict[str, int]:
        return {
            "sessions": len(self._sessions),
            "pending_status": len(self._pending_status),
            "status_writes": self.status_writes,
            "rejected_reports": self.rejected_reports,
            "draining_tasks": len(self._drain),
            "loop_failures": sum(st.failures for st in self._stats.values()),
            **{f"network_{k}": v for k, v in self._networks.statistics().items()},
            **{
                f"{loop}_{k}": v
                for loop, st in self._stats.items()
                for k, v in st.as_dict().items()
            },
        }


def _write_status(tx: Tx, item: tuple[tuple[str, str], TaskStatus]) -> bool:
    """Write one report if it moves the task forward; True when it was written."""
    (node_id, task_id), status = item
    t = tx.get_task(task_id)
    if t is None or t.node_id != node_id:
        return False  # gone, or another node's task: a node reports only its own
    new_state = TaskState.from_wire(status.state)
    if new_state == t.state and status != t.status and new_state == TaskState.RUNNING:
        pass  # a refreshed running status (e.g. adopted after a restart)
    elif not can_transition(t.state, new_state, Owner.AGENT):
        return False
    tx.update(msgspec.structs.replace(t, status=status))
    return True


def _payload(view: ReadTx, key: str) -> Dependency | None:
    kind, _, id_ = key.partition(":")
    obj = view.get(kind, id_)
    if obj is None:
        return None
    data = view.secret_data(id_) if kind == "secret" else obj.spec.data
    templ = obj.spec.templating
    return Dependency(key=key, data=data or b"", template=bool(templ and templ.name))


def _keep_tls(node: Node, description: NodeDescription) -> NodeDescription:
    """The agent does not know the cluster's TLS info; keep what the manager set."""
    return msgspec.structs.replace(description, tls_info=node.description.tls_info)
