"""The store: in-memory tables with indexes, write transactions, and watches.

Everything runs on the daemon's event loop, so a transaction is a plain synchronous
function: nothing else runs while it executes, reads never touch disk, and a watcher
created before a read sees every change after it (SwarmKit's "watch before view").

Every committed transaction takes the next `Version.Index`; each object it writes gets
that index, so `?version=N` checks are global optimistic concurrency, as Docker's.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from shoal.errors import OutOfSequence
from shoal.manager.store.backend import Backend, Record
from shoal.types.base import Version, format_time, now_ns
from shoal.types.node import Node
from shoal.types.service import Service
from shoal.types.swarm import Cluster
from shoal.types.task import Task

KINDS: dict[str, type[Any]] = {
    "cluster": Cluster,
    "node": Node,
    "service": Service,
    "task": Task,
}
_KIND_OF: dict[type[Any], str] = {t: k for k, t in KINDS.items()}

# Largest number of objects one batch() transaction writes (size bound of a batch).
MAX_CHANGES_PER_BATCH = 2000

T = TypeVar("T")
Obj = TypeVar("Obj", Cluster, Node, Service, Task)


@dataclass(frozen=True, slots=True)
class Event:
    """One change: action is "create", "update" or "remove"; `obj` is the new value
    (the last value for "remove"), `old` the value before."""

    action: str
    kind: str
    obj: Any
    old: Any | None = None


class Watcher:
    """A subscription to committed changes; yields one list of events per transaction."""

    def __init__(self, store: Store, kinds: frozenset[str] | None) -> None:
        self._store = store
        self.kinds = kinds
        self.queue: asyncio.Queue[list[Event]] = asyncio.Queue()

    def close(self) -> None:
        self._store._watchers.discard(self)

    def __aiter__(self) -> Watcher:
        return self

    async def __anext__(self) -> list[Event]:
        return await self.queue.get()

    def get_nowait_all(self) -> list[Event]:
        """Every event already queued, flattened (for debouncing loops)."""
        out: list[Event] = []
        while not self.queue.empty():
            out.extend(self.queue.get_nowait())
        return out


class _Tables:
    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {k: {} for k in KINDS}
        self.tasks_by_service: dict[str, set[str]] = defaultdict(set)
        self.tasks_by_node: dict[str, set[str]] = defaultdict(set)

    def put(self, kind: str, obj: Any) -> None:
        table = self.objects[kind]
        old = table.get(obj.id)
        table[obj.id] = obj
        if kind == "task":
            if old is not None and old.node_id != obj.node_id and old.node_id:
                self.tasks_by_node[old.node_id].discard(obj.id)
            self.tasks_by_service[obj.service_id].add(obj.id)
            if obj.node_id:
                self.tasks_by_node[obj.node_id].add(obj.id)

    def drop(self, kind: str, id_: str) -> Any | None:
        old = self.objects[kind].pop(id_, None)
        if kind == "task" and old is not None:
            self.tasks_by_service[old.service_id].discard(id_)
            if not self.tasks_by_service[old.service_id]:
                del self.tasks_by_service[old.service_id]
            if old.node_id:
                self.tasks_by_node[old.node_id].discard(id_)
        return old


class Tx:
    """A read-write transaction. Writes apply at once to the tables and are undone if
    the function raises; on success the store persists and publishes them."""

    def __init__(self, store: Store, index: int) -> None:
        self._store = store
        self._t = store._tables
        self.index = index
        self.time = format_time(now_ns())
        self._events: list[Event] = []
        self._undo: list[tuple[str, str, Any | None]] = []

    # reads -------------------------------------------------------------------------
    def get(self, kind: str, id_: str) -> Any | None:
        return self._t.objects[kind].get(id_)

    def get_service(self, id_: str) -> Service | None:
        return self._t.objects["service"].get(id_)

    def get_task(self, id_: str) -> Task | None:
        return self._t.objects["task"].get(id_)

    def get_node(self, id_: str) -> Node | None:
        return self._t.objects["node"].get(id_)

    def cluster(self) -> Cluster | None:
        return next(iter(self._t.objects["cluster"].values()), None)

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

    def tasks_on_node(self, node_id: str) -> list[Task]:
        table = self._t.objects["task"]
        return [table[i] for i in self._t.tasks_by_node.get(node_id, ())]

    # writes ------------------------------------------------------------------------
    def _stamp(self, obj: Obj, created: bool) -> Obj:
        changes: dict[str, Any] = {"version": Version(index=self.index), "updated_at": self.time}
        if created:
            changes["created_at"] = self.time
        return msgspec.structs.replace(obj, **changes)

    def create(self, obj: Obj) -> Obj:
        kind = _KIND_OF[type(obj)]
        if obj.id in self._t.objects[kind]:
            raise KeyError(f"{kind} {obj.id} already exists")
        stamped = self._stamp(obj, created=True)
        self._undo.append((kind, obj.id, None))
        self._t.put(kind, stamped)
        self._events.append(Event("create", kind, stamped))
        return stamped

    def update(self, obj: Obj) -> Obj:
        """Write a new value of an existing object. `obj.version` must be the stored
        one (read-modify-write); otherwise OutOfSequence, as Docker answers."""
        kind = _KIND_OF[type(obj)]
        old = self._t.objects[kind].get(obj.id)
        if old is None:
            raise KeyError(f"{kind} {obj.id} does not exist")
        if old.version.index != obj.version.index:
            raise OutOfSequence()
        stamped = self._stamp(obj, created=False)
        self._undo.append((kind, obj.id, old))
        self._t.put(kind, stamped)
        self._events.append(Event("update", kind, stamped, old))
        return stamped

    def delete(self, kind: str, id_: str) -> None:
        old = self._t.objects[kind].get(id_)
        if old is None:
            return
        self._undo.append((kind, id_, old))
        self._t.drop(kind, id_)
        self._events.append(Event("remove", kind, old, old))

    def _rollback(self) -> None:
        for kind, id_, old in reversed(self._undo):
            self._t.drop(kind, id_)
            if old is not None:
                self._t.put(kind, old)


class Store:
    """The cluster state of one manager. Nothing else writes state."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._tables = _Tables()
        self._watchers: set[Watcher] = set()
        self.index = 0
        self._in_tx = False
        self.commits = 0
        self._load()

    def _load(self) -> None:
        index, records = self._backend.load()
        self.index = index
        for r in records:
            if r.data is None or r.kind not in KINDS:
                continue
            obj = msgspec.json.decode(r.data, type=KINDS[r.kind])
            self._tables.put(r.kind, obj)

    def close(self) -> None:
        self._backend.close()

    # reads outside transactions ----------------------------------------------------------
    def view(self) -> Tx:
        """A read view (a Tx used only to read). Consistent until the next await."""
        return Tx(self, self.index)

    # writes ------------------------------------------------------------------------------
    def update(self, fn: Callable[[Tx], T]) -> T:
        """Run `fn` as one transaction: all its writes commit together or none do."""
        if self._in_tx:
            raise RuntimeError("nested store transaction")
        self._in_tx = True
        tx = Tx(self, self.index + 1)
        try:
            result = fn(tx)
            if tx._events:
                self._commit(tx)
        except BaseException:
            tx._rollback()
            raise
        finally:
            self._in_tx = False
        return result

    def batch(self, items: Iterable[T], fn: Callable[[Tx, T], None]) -> None:
        """Apply `fn` to many items, in transactions of at most MAX_CHANGES_PER_BATCH
        writes each: a large loop is not one huge transaction, nor one per item."""
        it: Iterator[T] = iter(items)
        done = False
        while not done:

            def chunk(tx: Tx) -> None:
                nonlocal done
                while len(tx._events) < MAX_CHANGES_PER_BATCH:
                    try:
                        item = next(it)
                    except StopIteration:
                        done = True
                        return
                    fn(tx, item)

            self.update(chunk)

    def _commit(self, tx: Tx) -> None:
        records = []
        for ev in tx._events:
            if ev.action == "remove":
                records.append(Record(ev.kind, ev.obj.id, None))
            else:
                records.append(Record(ev.kind, ev.obj.id, msgspec.json.encode(ev.obj)))
        self._backend.commit(tx.index, records)
        self.index = tx.index
        self.commits += 1
        events = tx._events
        for w in list(self._watchers):
            if w.kinds is None:
                w.queue.put_nowait(events)
            else:
                mine = [e for e in events if e.kind in w.kinds]
                if mine:
                    w.queue.put_nowait(mine)

    def watch(self, *kinds: str) -> Watcher:
        w = Watcher(self, frozenset(kinds) if kinds else None)
        self._watchers.add(w)
        return w

    def statistics(self) -> dict[str, int]:
        return {
            "index": self.index,
            "commits": self.commits,
            "watchers": len(self._watchers),
            **{f"{k}s": len(v) for k, v in self._tables.objects.items()},
        }
