"""The store: in-memory tables with indexes, write transactions, and watches.

Everything runs on the daemon's event loop, so a transaction is a plain synchronous
function: nothing else runs while it executes, and reads never touch disk.

`await store.update(fn)` applies `fn` to the tables at once (its reads see every
transaction applied before it), then waits until the backend has made it durable, and
only then publishes its events to watchers and returns. Transactions that arrive while
a commit is in flight are committed together in the next one (group commit, at most
MAX_GROUP_RECORDS records), in order, so throughput does not fall to one fsync per
write. A transaction function is pure: it reads and writes the Tx only; what it causes
happens after commit, driven by the events (or by the value it returns).

Every applied transaction takes the next `Version.Index`; each object it writes gets
that index, so `?version=N` checks are global optimistic concurrency, as Docker's.

Reads (`view()`) see every applied transaction; the API first waits for what was
applied before a client's read to be durable (`settled()`), so a client is not shown a
write a crash could take back. A read names what it shows (`settled(topics)`: kinds,
and RUNNING_TOPIC for the running-task counts `docker service ls` shows) and waits only
for the writes to those: a read of services does not wait behind the commits of a huge
service's task writes. Watchers see committed transactions in order; a watcher created before a read sees
every change after it (SwarmKit's "watch before view"), and possibly some the read
already showed. A watcher that falls WATCH_QUEUE transactions behind is closed with a
reason (SwarmKit closes slow watchers too) and its loop resyncs from a fresh view.

A commit that finds the disk full (the backend raises DiskFull, having written nothing)
takes back every transaction not yet durable, newest first: the tables are again what
is durable, each writer is told "no space left on device", every watcher is closed (its
loop resyncs), and later writes try again. A commit an etcd backend fenced off
(LostLeadership: this manager was deposed, or its replica is behind what the leader
wrote) is taken back the same way, its writers told that error. A commit a shared
backend leaves in doubt (CommitInDoubt: etcd lost quorum while it was in flight, and
the leadership it was made under is gone) is taken back too, its writers told that no
manager leads; the store then refuses writes and reloads (`reload()`: the tables
replaced by what the backend holds, every watcher closed so its loop resyncs), since
only the backend knows whether the commit is there. A feed of foreign commits that
cannot go on (an etcd watch behind the compaction: ReloadNeeded) reloads the same way.
Any other failed commit stops the store: nothing more is acknowledged until the
manager restarts.

A backend shared with other writers (etcd) feeds their commits in: `run()` applies them
to the tables and publishes them like the store's own.

Services and tasks are Docker's structs, holding Docker's fields only; what shoal alone
keeps about them (shoal/types/meta.py) lives beside each one: `tx.create(obj, meta)`,
`tx.update(obj)` keeps it (or `tx.update(obj, meta)` replaces it), `tx.service_meta(id)`
and `tx.task_meta(id)` read it, events carry it, and one record holds both.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.errors import Internal, LostLeadership, NoLeader, OutOfSequence, ShoalError
from shoal.log import get_logger
from shoal.manager.store.backend import (
    Backend,
    Commit,
    CommitInDoubt,
    DiskFull,
    Record,
    ReloadNeeded,
    SharedBackend,
)
from shoal.manager.store.snapshot import ReadSnapshot, Replica
from shoal.metrics import Metrics
from shoal.types.base import Version, format_time
from shoal.types.meta import (
    NO_CLUSTER_META,
    NO_SERVICE_META,
    NO_TASK_META,
    ClusterMeta,
    ServiceMeta,
    TaskMeta,
)
from shoal.types.network import Network
from shoal.types.node import Node
from shoal.types.secret import NO_SECRET_META, Config, Secret, SecretMeta
from shoal.types.service import Service
from shoal.types.swarm import Cluster
from shoal.types.task import Task, TaskState

KINDS: dict[str, type[Any]] = {
    "cluster": Cluster,
    "node": Node,
    "service": Service,
    "task": Task,
    "secret": Secret,
    "config": Config,
    "network": Network,
}
_KIND_OF: dict[type[Any], str] = {t: k for k, t in KINDS.items()}
# The kinds that have shoal's own metadata beside them, and its value when none is given.
META_DEFAULTS: dict[str, Any] = {
    "cluster": NO_CLUSTER_META,
    "service": NO_SERVICE_META,
    "task": NO_TASK_META,
    "secret": NO_SECRET_META,
}
# What a record's data decodes as: the object, or [object, meta] for kinds with meta.
# A cluster written before it had metadata decodes as the object alone.
_RECORD_TYPES: dict[str, Any] = {
    "cluster": Cluster | tuple[Cluster, ClusterMeta],
    "node": Node,
    "service": tuple[Service, ServiceMeta],
    "task": tuple[Task, TaskMeta],
    "secret": tuple[Secret, SecretMeta],
    "config": Config,
    "network": Network,
}

# Largest number of objects one batch() transaction writes, and of items it goes
# through (size bound of a batch).
MAX_CHANGES_PER_BATCH = 250
# Largest number of records one group commit hands the backend (its size bound; its
# time bound is the commit in flight: nothing waits longer than that).
MAX_GROUP_RECORDS = 10_000
# What a read may name in settled() besides the kinds: a change of which tasks run
# (a task into or out of RUNNING, or a running one moved or removed), i.e. of what
# ReadTx.running_by_node counts.
RUNNING_TOPIC = "task.running"
# Committed transactions a watcher may have queued before it is closed as too slow.
WATCH_QUEUE = 10_000
# Between two tries of reading a shared backend to reload from (it does not answer).
RELOAD_RETRY_S = (0.5, 1.0, 2.0)
# What a client is told of a write taken back because the manager's disk was full
# (dockerd answers a failed raft write with gRPC's Unknown and the OS's words).
MSG_DISK_FULL = "rpc error: code = Unknown desc = no space left on device"

log = get_logger("shoal.manager.store")
_RUNNING = TaskState.RUNNING.wire

T = TypeVar("T")
Obj = TypeVar("Obj", Cluster, Node, Service, Task, Secret, Config, Network)


class Event(msgspec.Struct, frozen=True, gc=False):
    """One change: action is "create", "update" or "remove"; `obj` is the new value
    (the last value for "remove"), `old` the value before; `meta` is shoal's metadata
    beside `obj` (services and tasks; None for other kinds).

    Not tracked by the garbage collector (it refers to the store's objects, none of
    which refers back): while tasks converge, events wait in a dozen watchers' queues
    long enough to reach the oldest generation, and every full collection walked them,
    the event loop stopped (up to 260 ms at 100k tasks; docs/sim.md)."""

    action: str
    kind: str
    obj: Any
    old: Any | None = None
    meta: Any = None


class WatcherClosed(Exception):
    """The watcher fell too far behind and was closed; its loop resyncs from a view."""


class Watcher:
    """A subscription to committed changes; yields one list of events per transaction."""

    def __init__(self, store: Store, kinds: frozenset[str] | None) -> None:
        self._store = store
        self.kinds = kinds
        self.queue: asyncio.Queue[list[Event]] = asyncio.Queue()
        self.closed_reason: str | None = None

    def close(self) -> None:
        self._store._watchers.discard(self)

    def _offer(self, events: list[Event]) -> None:
        if self.closed_reason is not None:
            return
        if self.queue.qsize() >= WATCH_QUEUE:
            self._close(f"fell {WATCH_QUEUE} transactions behind")
            log.warning("closing a slow watcher", reason=self.closed_reason)
            return
        self.queue.put_nowait(events)

    def _close(self, reason: str) -> None:
        """Close with a reason: its reader raises WatcherClosed once the queue is read."""
        if self.closed_reason is not None:
            return
        self.closed_reason = reason
        self.close()
        self.queue.put_nowait([])  # wakes its reader, which then sees the reason

    def __aiter__(self) -> Watcher:
        return self

    async def __anext__(self) -> list[Event]:
        if not self.queue.empty():
            # A loop with a backlog would otherwise take round after round without the
            # event loop turning once (a queue's get() returns at once when it holds
            # something): one turn between two rounds, whatever each round does.
            await asyncio.sleep(0)
        if self.closed_reason is not None and self.queue.empty():
            # (closed, and the reader already took the wake-up with the rest of the
            # queue: get_nowait_all, as the loops call it; nothing more will come)
            raise WatcherClosed(self.closed_reason)
        events = await self.queue.get()
        if self.closed_reason is not None and self.queue.empty():
            raise WatcherClosed(self.closed_reason)
        return events

    def get_nowait_all(self, limit: int | None = None) -> list[Event]:
        """The events already queued, flattened (for debouncing loops): all of them, or
        whole transactions until at least `limit` events are taken (the rest stay
        queued for the next round)."""
        out: list[Event] = []
        while not self.queue.empty() and (limit is None or len(out) < limit):
            out.extend(self.queue.get_nowait())
        return out


class _Tables:
    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {k: {} for k in KINDS}
        self.meta: dict[str, dict[str, Any]] = {k: {} for k in META_DEFAULTS}
        self.tasks_by_service: dict[str, set[str]] = defaultdict(set)
        self.tasks_by_node: dict[str, set[str]] = defaultdict(set)
        # Running tasks by service, then by node: `docker service ls` counts them on
        # every call, which must not cost a walk over a huge service's tasks.
        self.running: dict[str, Counter[str]] = defaultdict(Counter)
        # Tasks by service, then by state (wire name): what the metrics show at each
        # scrape, which must not cost a walk over 100ks of tasks either.
        self.states: dict[str, dict[str, int]] = {}

        # The same counts as of what is durable (fed by the published events, not by
        # the applied writes): what `docker service ls` shows without waiting for the
        # commit in flight (ReadTx.durable_running).
        self.durable_running: dict[str, Counter[str]] = defaultdict(Counter)
        # Their sums over the nodes, by service (what the API's snapshot starts from).
        self.durable_total: Counter[str] = Counter()

    def _count_running(self, task: Any, delta: int) -> None:
        _count_running(self.running, task, delta)

    def count_durable(self, events: list[Event]) -> None:
        """Follow the durable running counts through these committed events."""
        counts, totals = self.durable_running, self.durable_total
        for ev in events:
            if ev.kind != "task":
                continue
            old = ev.old
            if ev.action != "create" and old is not None and old.status.state == _RUNNING:
                _count_running(counts, old, -1)
                sid = old.service_id
                if totals[sid] <= 1:
                    del totals[sid]
                else:
                    totals[sid] -= 1
            if ev.action != "remove" and ev.obj.status.state == _RUNNING:
                _count_running(counts, ev.obj, 1)
                totals[ev.obj.service_id] += 1

    def _count_state(self, task: Any, delta: int) -> None:
        # (plain dicts: every task write passes here, and a Counter's missing key
        # costs a Python-level call)
        sid, state = task.service_id, task.status.state
        counts = self.states.get(sid)
        if counts is None:
            counts = self.states[sid] = {}
        n = counts.get(state, 0) + delta
        if n > 0:
            counts[state] = n
        else:
            counts.pop(state, None)
            if not counts:
                del self.states[sid]

    def put(self, kind: str, obj: Any, meta: Any | None = None) -> None:
        table = self.objects[kind]
        old = table.get(obj.id)
        table[obj.id] = obj
        if meta is not None:
            self.meta[kind][obj.id] = meta
        if kind == "task":
            if old is not None:
                self._count_running(old, -1)
                self._count_state(old, -1)
            self._count_running(obj, 1)
            self._count_state(obj, 1)
            if old is not None and old.node_id != obj.node_id and old.node_id:
                self.tasks_by_node[old.node_id].discard(obj.id)
            self.tasks_by_service[obj.service_id].add(obj.id)
            if obj.node_id:
                self.tasks_by_node[obj.node_id].add(obj.id)

    def drop(self, kind: str, id_: str) -> Any | None:
        old = self.objects[kind].pop(id_, None)
        if kind in self.meta:
            self.meta[kind].pop(id_, None)
        if kind == "task" and old is not None:
            self._count_running(old, -1)
            self._count_state(old, -1)
            self.tasks_by_service[old.service_id].discard(id_)
            if not self.tasks_by_service[old.service_id]:
                del self.tasks_by_service[old.service_id]
            if old.node_id:
                self.tasks_by_node[old.node_id].discard(id_)
        return old


def _count_running(running: dict[str, Counter[str]], task: Any, delta: int) -> None:
    if task.status.state == _RUNNING:
        counts = running[task.service_id]
        node = task.node_id or ""
        counts[node] += delta
        if counts[node] <= 0:
            del counts[node]
            if not counts:
                del running[task.service_id]


class ReadTx:
    """A read view of the tables: consistent until the next await."""

    def __init__(self, store: Store, index: int) -> None:
        self._t = store._tables
        self.index = index

    # reads -------------------------------------------------------------------------
    def get(self, kind: str, id_: str) -> Any | None:
        return self._t.objects[kind].get(id_)

    def get_service(self, id_: str) -> Service | None:
        return self._t.objects["service"].get(id_)

    def get_task(self, id_: str) -> Task | None:
        return self._t.objects["task"].get(id_)

    def get_node(self, id_: str) -> Node | None:
        return self._t.objects["node"].get(id_)

    def meta(self, kind: str, id_: str) -> Any | None:
        """shoal's metadata beside an object (None for kinds without any)."""
        table = self._t.meta.get(kind)
        return None if table is None else table.get(id_, META_DEFAULTS[kind])

    def service_meta(self, id_: str) -> ServiceMeta:
        return self._t.meta["service"].get(id_, NO_SERVICE_META)

    def task_meta(self, id_: str) -> TaskMeta:
        return self._t.meta["task"].get(id_, NO_TASK_META)

    def secret_data(self, id_: str) -> bytes:
        """A secret's payload (empty when there is no such secret)."""
        meta: SecretMeta = self._t.meta["secret"].get(id_, NO_SECRET_META)
        return meta.data

    def secrets(self) -> list[Secret]:
        return list(self._t.objects["secret"].values())

    def configs(self) -> list[Config]:
        return list(self._t.objects["config"].values())

    def networks(self) -> list[Network]:
        return list(self._t.objects["network"].values())

    def get_network(self, id_: str) -> Network | None:
        return self._t.objects["network"].get(id_)

    def cluster(self) -> Cluster | None:
        return next(iter(self._t.objects["cluster"].values()), None)

    def cluster_meta(self) -> ClusterMeta:
        """shoal's metadata beside the cluster (its CA's private state)."""
        cluster = self.cluster()
        if cluster is None:
            return NO_CLUSTER_META
        return self._t.meta["cluster"].get(cluster.id, NO_CLUSTER_META)

    def all(self, kind: str) -> Iterable[Any]:
        return list(self._t.objects[kind].values())

    def services(self) -> list[Service]:
        return list(self._t.objects["service"].values())

    def nodes(self) -> list[Node]:
        return list(self._t.objects["node"].values())

    def tasks(self) -> list[Task]:
        return list(self._t.objects["task"].values())

    def tasks_of_service(self, service_id: str) -> list[Task]:
        table = self._t.objects["task"]
        return [table[i] for i in self._t.tasks_by_service.get(service_id, ())]

    def task_ids_of_service(self, service_id: str) -> list[str]:
        """The IDs of the service's tasks (an index: no walk over the tasks)."""
        return list(self._t.tasks_by_service.get(service_id, ()))

    def running_by_node(self, service_id: str) -> dict[str, int]:
        """{node ID: how many of the service's tasks run there} (an index: no walk)."""
        return dict(self._t.running.get(service_id, ()))

    def durable_running(self, service_id: str, excluding: Iterable[str] = ()) -> int:
        """How many of the service's tasks run, as of what is durable (committed and
        published: a crash cannot take it back), leaving out those on the nodes
        `excluding` (an index: no walk over the tasks, nor over the service's nodes).
        A read of these counts waits for no commit in flight."""
        counts = self._t.durable_running.get(service_id)
        if not counts:
            return 0
        return self._t.durable_total[service_id] - sum(counts.get(n, 0) for n in excluding)

    def tasks_on_node(self, node_id: str) -> list[Task]:
        table = self._t.objects["task"]
        return [table[i] for i in self._t.tasks_by_node.get(node_id, ())]

    def task_states(self) -> dict[str, dict[str, int]]:
        """{service ID: {state (wire name): how many of its tasks are in it}}, over
        every task the store holds (an index: no walk over the tasks)."""
        return {sid: dict(counts) for sid, counts in self._t.states.items()}

    def any_task_meta(self, service_id: str) -> TaskMeta:
        """The meta of one of the service's tasks (its name outlives the service)."""
        for task_id in self._t.tasks_by_service.get(service_id, ()):
            return self.task_meta(task_id)
        return NO_TASK_META


class Tx(ReadTx):
    """A read-write transaction. Writes apply at once to the tables and are undone if
    the function raises; on success the store persists and publishes them."""

    def __init__(self, store: Store, index: int) -> None:
        super().__init__(store, index)
        self.time = format_time(store.clock.time_ns())
        self._events: list[Event] = []
        self._undo: list[tuple[str, str, Any | None, Any | None]] = []
        self._topics: set[str] = set()  # what it wrote (settled() topics)

    # writes ------------------------------------------------------------------------
    def _stamp(self, obj: Obj, created: bool) -> Obj:
        changes: dict[str, Any] = {"version": Version(index=self.index), "updated_at": self.time}
        if created:
            changes["created_at"] = self.time
        return msgspec.structs.replace(obj, **changes)

    def create(self, obj: Obj, meta: Any | None = None) -> Obj:
        """Write a new object, with shoal's metadata beside it (services and tasks;
        the kind's empty metadata when None)."""
        kind = _KIND_OF[type(obj)]
        if obj.id in self._t.objects[kind]:
            raise KeyError(f"{kind} {obj.id} already exists")
        if kind in META_DEFAULTS and meta is None:
            meta = META_DEFAULTS[kind]
        stamped = self._stamp(obj, created=True)
        self._wrote(kind, None, stamped)
        self._undo.append((kind, obj.id, None, None))
        self._t.put(kind, stamped, meta)
        self._events.append(Event("create", kind, stamped, meta=meta))
        return stamped

    def update(self, obj: Obj, meta: Any | None = None) -> Obj:
        """Write a new value of an existing object. `obj.version` must be the stored
        one (read-modify-write); otherwise OutOfSequence, as Docker answers. Its
        metadata stays as it was unless `meta` replaces it."""
        kind = _KIND_OF[type(obj)]
        old = self._t.objects[kind].get(obj.id)
        if old is None:
            raise KeyError(f"{kind} {obj.id} does not exist")
        if old.version.index != obj.version.index:
            raise OutOfSequence()
        metas = self._t.meta.get(kind)  # (inlined: the scheduler updates 100k tasks a pass)
        old_meta = None if metas is None else metas.get(obj.id, META_DEFAULTS[kind])
        stamped = self._stamp(obj, created=False)
        self._wrote(kind, old, stamped)
        self._undo.append((kind, obj.id, old, old_meta))
        self._t.put(kind, stamped, meta)
        self._events.append(Event("update", kind, stamped, old, old_meta if meta is None else meta))
        return stamped

    def delete(self, kind: str, id_: str) -> None:
        old = self._t.objects[kind].get(id_)
        if old is None:
            return
        old_meta = self.meta(kind, id_)
        self._wrote(kind, old, None)
        self._undo.append((kind, id_, old, old_meta))
        self._t.drop(kind, id_)
        self._events.append(Event("remove", kind, old, old, old_meta))

    def _wrote(self, kind: str, old: Any | None, new: Any | None) -> None:
        self._topics.add(kind)
        if kind == "task" and (
            (old is not None and old.status.state == _RUNNING)
            or (new is not None and new.status.state == _RUNNING)
        ):
            self._topics.add(RUNNING_TOPIC)

    def _rollback(self) -> None:
        _undo(self._t, self._undo)


# What a transaction's writes replaced: (kind, id, old value or None, old meta).
_Undo = list[tuple[str, str, Any | None, Any | None]]


def _undo(tables: _Tables, undo: _Undo) -> None:
    """Put the tables back as they were before these writes, last write first."""
    for kind, id_, old, old_meta in reversed(undo):
        tables.drop(kind, id_)
        if old is not None:
            tables.put(kind, old, old_meta)


@dataclass(slots=True)
class _Applied:
    """A transaction applied to the tables, waiting to be durable; `undo` takes it out
    of them again if its commit fails for want of space, and `error` is then what its
    waiters are told."""

    index: int
    events: list[Event]
    records: list[Record]
    undo: _Undo
    error: BaseException | None = None


class Store:
    """The cluster state of one manager. Nothing else writes state."""

    def __init__(
        self, backend: Backend, clock: Clock = SYSTEM_CLOCK, metrics: Metrics | None = None
    ) -> None:
        """`clock`: where the objects' CreatedAt / UpdatedAt come from (tests pass the
        FakeClock their loops run on, so stored times and timers agree), and what times
        a commit. `metrics`: the daemon's (commits counted and timed)."""
        self._backend = backend
        self.clock = clock
        self.metrics = metrics if metrics is not None else Metrics()
        self._tables = _Tables()
        # What the API's front door reads beside the event loop (snapshot.py).
        self._replica = Replica(self._tables.durable_running, self._tables.durable_total)
        self._watchers: set[Watcher] = set()
        self.index = 0  # the last applied transaction
        self.durable_index = 0  # the last one the backend made durable
        self._in_tx = False
        self._pending: list[_Applied] = []
        # The last applied, not yet durable transaction that wrote each topic.
        self._last_write: dict[str, _Applied] = {}
        self._flushing: asyncio.Future[None] | None = None  # the commit in flight
        self._failed: BaseException | None = None
        self.commits = 0  # transactions made durable
        self.group_commits = 0  # backend commits (each one or more transactions)
        self.foreign_commits = 0
        self.rolled_back = 0  # transactions taken back after a commit found the disk full
        # Set while this manager does not lead (shoal/manager/leadership.py): the error
        # every local write gets at once, before it is applied.
        self.refuse_writes: Callable[[], Exception] | None = None
        # set (and replaced) at every foreign commit applied: reached() waits on it
        self._foreign_applied = asyncio.Event()
        # Set while the tables must be read again from a shared backend (a commit in
        # doubt, a feed that cannot go on): writes are refused until run() reloaded.
        self.needs_reload = asyncio.Event()
        self._reloaded = asyncio.Event()  # set (and replaced) at every reload
        self.reloads = 0
        index, records = self._backend.load()
        self.index = self.durable_index = index
        self._tables, self._replica = _filled(index, records)

    def _fill(self, index: int, records: list[Record]) -> None:
        """Replace the tables by these (every one of them durable)."""
        # (built aside, then swapped: a thread reading `snapshot` sees the old or the new)
        self._tables, self._replica = _filled(index, records)
        # (max: indexes taken back are not handed out again)
        self.index = max(self.index, index)
        self.durable_index = index
        self._last_write = {}

    def close(self) -> None:
        self._backend.close()

    # reads outside transactions ----------------------------------------------------------
    def view(self) -> ReadTx:
        """A read-only view of every applied transaction. Consistent until the next
        await."""
        return ReadTx(self, self.index)

    async def settled(self, topics: Iterable[str] | None = None) -> None:
        """Wait until every transaction applied so far is durable: what a client reads
        after this was committed (up to what others apply meanwhile), so a crash cannot
        take back what a client was shown. With `topics` (kinds, RUNNING_TOPIC), only
        the transactions that wrote one of them: a read that shows those alone need not
        wait behind unrelated writes (an empty `topics`: nothing to wait for)."""
        if not self._pending:
            return
        if topics is None:
            last = self._pending[-1]
        else:
            waits = [a for t in topics if (a := self._last_write.get(t)) is not None]
            if not waits:
                return
            last = max(waits, key=lambda a: a.index)
        try:
            await self._wait_durable(last)
        except ShoalError:
            if last.error is None:
                raise  # the store failed for good
            # Taken back (disk full, fenced off, in doubt): the tables are what is
            # durable again; the reader sees none of it, so its read may go on.

    # writes ------------------------------------------------------------------------------
    async def update(self, fn: Callable[[Tx], T]) -> T:
        """Run `fn` as one transaction: all its writes commit together or none do.
        Returns `fn`'s value once the transaction is durable (and published)."""
        result, applied = self._apply(fn)
        if applied is not None:
            await self._wait_durable(applied)
        return result

    def _apply(self, fn: Callable[[Tx], T]) -> tuple[T, _Applied | None]:
        if self.refuse_writes is not None:
            raise self.refuse_writes()
        if self.needs_reload.is_set():
            raise NoLeader()
        if self._failed is not None:
            raise Internal(f"the store cannot commit: {self._failed!r}")
        if self._in_tx:
            raise RuntimeError("nested store transaction")
        self._in_tx = True
        tx = Tx(self, self.index + 1)
        try:
            result = fn(tx)
        except BaseException:
            tx._rollback()
            raise
        finally:
            self._in_tx = False
        if not tx._events:
            return result, None
        self.index = tx.index
        applied = _Applied(tx.index, tx._events, _records(tx._events), tx._undo)
        self._pending.append(applied)
        for topic in tx._topics:
            self._last_write[topic] = applied
        return result, applied

    async def batch(self, items: Iterable[T], fn: Callable[[Tx, T], None]) -> None:
        """Apply `fn` to many items, in transactions of at most MAX_CHANGES_PER_BATCH
        writes each: a large loop is not one huge transaction, nor one per item. The
        event loop gets a turn between two transactions (the API answers while a large
        batch is written), so others' transactions may come in between: `fn` reads
        what it changes from its Tx. Returns once all of them are durable."""
        it: Iterator[T] = iter(items)
        done = False
        mine: list[_Applied] = []

        def chunk(tx: Tx) -> None:
            nonlocal done
            # bounded in writes and in items (most may write nothing: a pass of the
            # scheduler over tasks that still fit nowhere)
            for _ in range(MAX_CHANGES_PER_BATCH):
                if len(tx._events) >= MAX_CHANGES_PER_BATCH:
                    return
                try:
                    item = next(it)
                except StopIteration:
                    done = True
                    return
                fn(tx, item)

        while not done:
            _, applied = self._apply(chunk)
            if applied is not None:
                mine.append(applied)
            # A chunk taken back (disk full) fails the batch: the rest is not written.
            lost = next((a.error for a in mine if a.error is not None), None)
            if lost is not None:
                raise lost
            if not done:
                await asyncio.sleep(0)
        for applied in mine:
            await self._wait_durable(applied)

    async def _wait_durable(self, applied: _Applied) -> None:
        """Group commit: when no commit is in flight, one starts with everything applied
        so far (up to MAX_GROUP_RECORDS records); a transaction that missed it waits for
        the next. The commit runs as its own task: a waiter that is cancelled (a client
        gone) does not cancel it. A transaction taken back because the disk was full
        raises its error (indexes are not reused: a later one may be durable)."""
        while applied.error is None and self.durable_index < applied.index:
            if self._failed is not None:
                raise Internal(f"the store cannot commit: {self._failed!r}")
            if self._flushing is None:
                self._flushing = asyncio.ensure_future(self._flush_once())
            await asyncio.shield(self._flushing)
        if applied.error is not None:
            raise applied.error

    async def _flush_once(self) -> None:
        try:
            await self._flush()
        except (DiskFull, LostLeadership) as e:
            # Nothing of the group reached the disk (or etcd, which fenced a deposed
            # leader off): take back every transaction not durable (later ones were
            # applied on top of the group's), so the tables are what is durable again,
            # and let later writes try again.
            self._take_back(e)
        except CommitInDoubt as e:
            if not isinstance(self._backend, SharedBackend):
                self._failed = e
                log.error("store commit in doubt; the manager must restart", error=repr(e))
                return
            # Whether the group is in the backend only the backend knows: take back
            # everything not durable, refuse writes, and reload (run() does).
            self.needs_reload.set()
            self._take_back(e)
        except Exception as e:
            # The tables are ahead of what is durable: nothing more may be acknowledged.
            self._failed = e
            log.error("store commit failed; the manager must restart", error=repr(e))
        finally:
            self._flushing = None

    def _take_back(self, cause: Exception) -> None:
        """Undo every applied transaction that is not durable, newest first, and fail
        their waiters with a client's error naming the disk (or the lost leadership, or
        no leader for a commit in doubt). Watchers saw none of them (events are
        published after commit), but loops may have read them in views: each watcher
        is closed, so its loop resyncs from the tables as they are now."""
        error: ShoalError
        if isinstance(cause, LostLeadership):
            error, what = cause, "lost leadership"
        elif isinstance(cause, DiskFull):
            error, what = Internal(f"{MSG_DISK_FULL}: {cause}"), "disk full"
        else:
            error, what = NoLeader(), "commit in doubt"
        taken = self._pending
        self._pending = []
        self._last_write = {}
        for applied in reversed(taken):
            _undo(self._tables, applied.undo)
            applied.error = error
            applied.undo = []
        self.rolled_back += len(taken)
        log.error(
            f"store commit failed: {what}; uncommitted transactions taken back",
            transactions=len(taken),
            first_index=taken[0].index if taken else None,
            error=str(cause),
        )
        for w in list(self._watchers):
            w._close(f"the store took back {len(taken)} uncommitted transaction(s): {what}")

    async def _flush(self) -> None:
        # The group stays at the head of _pending until it is durable: a commit that
        # fails leaves every applied transaction where _take_back (or a retry) finds it.
        count = size = 0
        while count < len(self._pending) and (
            not count or size + len(self._pending[count].records) <= MAX_GROUP_RECORDS
        ):
            size += len(self._pending[count].records)
            count += 1
        group = self._pending[:count]
        records = [r for applied in group for r in applied.records]
        started = self.clock.monotonic()
        await self._backend.commit(group[-1].index, records)
        self.metrics.store_commit_seconds.observe(self.clock.monotonic() - started)
        self.metrics.store_group_commits.inc()
        self.metrics.store_commits.inc(count)
        del self._pending[:count]
        self.durable_index = group[-1].index
        if self._last_write:
            self._last_write = {
                t: a for t, a in self._last_write.items() if a.index > self.durable_index
            }
        self.group_commits += 1
        for applied in group:
            self.commits += 1
            applied.undo = []
            self._publish(applied.events)
        self._replica.publish(self.durable_index)

    @property
    def snapshot(self) -> ReadSnapshot:
        """The durable state as of the last commit, immutable: what a thread other
        than the event loop's may read (snapshot.py)."""
        return self._replica.snapshot

    def _publish(self, events: list[Event]) -> None:
        self._tables.count_durable(events)
        self._replica.follow(events)
        for w in list(self._watchers):
            if w.kinds is None:
                w._offer(events)
            else:
                mine = [e for e in events if e.kind in w.kinds]
                if mine:
                    w._offer(mine)

    # commits made elsewhere ---------------------------------------------------------------
    async def run(self) -> None:
        """Apply the commits other writers make (a shared backend) until cancelled;
        reload from the backend whenever that is needed (`needs_reload`), then follow
        it again from there."""
        while True:
            feed = self._backend.foreign_commits(self.durable_index)
            if feed is None:
                return
            try:
                await self._follow(feed)
            except ReloadNeeded as e:
                log.warning("the store's feed cannot go on; reloading", error=str(e))
                self.needs_reload.set()
            if not self.needs_reload.is_set():
                return  # the feed ended
            await self._reload()

    async def _follow(self, feed: AsyncIterator[Commit]) -> None:
        """Apply the feed's commits until it fails or a reload is needed."""
        consume = asyncio.ensure_future(self._consume(feed))
        wanted = asyncio.ensure_future(self.needs_reload.wait())
        try:
            await asyncio.wait({consume, wanted}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            consume.cancel()
            wanted.cancel()
            await asyncio.gather(consume, wanted, return_exceptions=True)
            aclose = getattr(feed, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
        if not consume.cancelled() and (error := consume.exception()) is not None:
            raise error

    async def _consume(self, feed: AsyncIterator[Commit]) -> None:
        async for commit in feed:
            if self._pending:
                await self._drain_pending()
            if self.needs_reload.is_set():
                return
            self.apply_foreign(commit)

    async def reload(self) -> None:
        """Read the tables again from the shared backend (the truth), replacing what
        this replica holds: after a commit in doubt, or a feed behind the compaction.
        Writes are refused until it is done; run() does it (this asks, and waits)."""
        done = self._reloaded
        self.needs_reload.set()
        await done.wait()

    async def wait_reloaded(self) -> None:
        """Return once no reload is needed (a new leader's replica must be the truth)."""
        while self.needs_reload.is_set():
            await self._reloaded.wait()

    async def _reload(self) -> None:
        backend = self._backend
        if not isinstance(backend, SharedBackend):
            raise RuntimeError("only a shared backend's store reloads")
        # Writes are refused from now (needs_reload); what is in flight settles first,
        # and what is still applied but not durable is taken back.
        while self._flushing is not None:
            await asyncio.shield(self._flushing)
        if self._pending:
            self._take_back(ReloadNeeded("the store is reloading"))
        failures = 0
        while True:
            try:
                index, records = await backend.reload()
                break
            except Exception as e:
                delay = RELOAD_RETRY_S[min(failures, len(RELOAD_RETRY_S) - 1)]
                failures += 1
                log.warning("cannot read the store to reload it; trying again", error=repr(e))
                await self.clock.sleep(delay)
        before = self.durable_index
        self._fill(index, records)
        self.reloads += 1
        log.warning("store reloaded", index=index, before=before, objects=len(records))
        for w in list(self._watchers):
            w._close("the store was reloaded")
        self.needs_reload.clear()
        self._reloaded.set()
        self._reloaded = asyncio.Event()
        self._foreign_applied.set()
        self._foreign_applied = asyncio.Event()

    async def _drain_pending(self) -> None:
        """Another writer committed while this store has writes of its own in flight:
        the leadership moved (a deposed leader that does not know yet). Those writes
        cannot commit after it (the fence refuses them): they are refused and taken
        back before the other writer's commit is applied on the durable tables."""
        log.warning("a commit of another manager met writes in flight; settling them first")
        while self._pending:
            if self._failed is not None:
                raise Internal(f"the store cannot commit: {self._failed!r}")
            if self._flushing is None:
                self._flushing = asyncio.ensure_future(self._flush_once())
            await asyncio.shield(self._flushing)

    def apply_foreign(self, commit: Commit) -> None:
        """A commit another writer made durable: into the tables, then to watchers."""
        if self._pending or self._in_tx:
            raise RuntimeError("a foreign commit arrived while this store was writing")
        events: list[Event] = []
        for r in commit.records:
            if r.kind not in KINDS:
                continue
            old = self._tables.objects[r.kind].get(r.id)
            if r.data is None:
                if old is not None:
                    old_meta = self._tables.meta.get(r.kind, {}).get(r.id)
                    self._tables.drop(r.kind, r.id)
                    events.append(Event("remove", r.kind, old, old, old_meta))
                continue
            obj, meta = _decode(r)
            self._tables.put(r.kind, obj, meta)
            action = "create" if old is None else "update"
            events.append(Event(action, r.kind, obj, old, meta))
        # (max: an index taken back here, fenced off, is not handed out again)
        self.index = max(self.index, commit.index)
        self.durable_index = commit.index
        self.foreign_commits += 1
        if events:
            self._publish(events)
        self._replica.publish(self.durable_index)
        self._foreign_applied.set()
        self._foreign_applied = asyncio.Event()

    async def reached(self, index: int, timeout_s: float) -> bool:
        """Wait until this replica holds every commit up to `index` (a write another
        manager made for this one: read-your-writes); False if not within `timeout_s`."""
        deadline = self.clock.monotonic() + timeout_s
        while self.durable_index < index:
            left = deadline - self.clock.monotonic()
            if left <= 0:
                return False
            try:
                await self.clock.wait_for(self._foreign_applied.wait(), left)
            except TimeoutError:
                return False
        return True

    def watch(self, *kinds: str) -> Watcher:
        w = Watcher(self, frozenset(kinds) if kinds else None)
        self._watchers.add(w)
        return w

    def statistics(self) -> dict[str, int]:
        return {
            "index": self.index,
            "durable_index": self.durable_index,
            "commits": self.commits,
            "group_commits": self.group_commits,
            "foreign_commits": self.foreign_commits,
            "rolled_back": self.rolled_back,
            "reloads": self.reloads,
            "pending": len(self._pending),
            "watchers": len(self._watchers),
            **{f"{k}s": len(v) for k, v in self._tables.objects.items()},
        }


def _filled(index: int, records: list[Record]) -> tuple[_Tables, Replica]:
    """Tables holding these records (all durable), and the replica made of them."""
    tables = _Tables()
    for r in records:
        if r.data is None or r.kind not in KINDS:
            continue
        tables.put(r.kind, *_decode(r))
    for sid, counts in tables.running.items():
        tables.durable_running[sid] = Counter(counts)
        tables.durable_total[sid] = sum(counts.values())
    replica = Replica(tables.durable_running, tables.durable_total)
    objects = tables.objects
    replica.load(
        objects["service"].values(), objects["node"].values(), objects["cluster"].values(), index
    )
    return tables, replica


def encode_record(kind: str, obj: Any, meta: Any | None = None) -> Record:
    """An object as the backend keeps it: its JSON, or `[object, meta]` for the kinds
    that have metadata (the kind's empty metadata when `meta` is None)."""
    if kind in META_DEFAULTS:
        return Record(
            kind, obj.id, msgspec.json.encode((obj, META_DEFAULTS[kind] if meta is None else meta))
        )
    return Record(kind, obj.id, msgspec.json.encode(obj))


def _decode(r: Record) -> tuple[Any, Any | None]:
    assert r.data is not None
    value = msgspec.json.decode(r.data, type=_RECORD_TYPES[r.kind])
    if r.kind not in META_DEFAULTS:
        return value, None
    if isinstance(value, tuple):
        return value[0], value[1]
    return value, META_DEFAULTS[r.kind]


def _records(events: list[Event]) -> list[Record]:
    return [
        Record(ev.kind, ev.obj.id, None)
        if ev.action == "remove"
        else encode_record(ev.kind, ev.obj, ev.meta)
        for ev in events
    ]
