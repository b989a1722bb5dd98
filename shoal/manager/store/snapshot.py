"""What the API reads beside the event loop: an immutable snapshot of the durable state.

`docker service ls` and `docker node ls` are answered by the API's front door
(shoal/api/frontdoor.py) on a thread of its own, so that a read does not wait for a
turn of the event loop behind the converging loops (docs/sim.md). That thread never
touches the store's tables, which the loop mutates: it reads the `ReadSnapshot` the
store publishes after each commit, a value nobody mutates (tuples of frozen structs, a
dict built anew), swapped in by one reference assignment.

The snapshot is a replica of what is durable, fed by the committed events as they are
published (never by the applied writes), so it shows nothing a crash could take back.
It is published before the writers of a commit are acknowledged, so it shows every
write acknowledged before a read (what `Store.settled` gives the other reads).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from shoal.types.node import Node
from shoal.types.service import Service
from shoal.types.swarm import Cluster

if TYPE_CHECKING:
    from shoal.manager.store.memory import Event

# The kinds the replica follows (the running counts come from the task events).
REPLICATED_KINDS = frozenset({"service", "node", "cluster"})


@dataclass(frozen=True, slots=True)
class ReadSnapshot:
    """The durable state as of commit `index`, for the reads served beside the loop."""

    index: int
    services: tuple[Service, ...] = ()  # by (CreatedAt, ID), as the lists show them
    nodes: tuple[Node, ...] = ()  # by (CreatedAt, ID)
    # {service ID: its running tasks not on a down node} (as `ReadTx.durable_running`)
    running: Mapping[str, int] = field(default_factory=dict)
    cluster: Cluster | None = None

    def running_tasks(self, service_id: str) -> int:
        return self.running.get(service_id, 0)


EMPTY_SNAPSHOT = ReadSnapshot(0)

T = TypeVar("T", Service, Node)


class Sorted(Generic[T]):
    """Objects by ID, also kept in the lists' order, (CreatedAt, ID), as they change: a
    change costs a bisection and a list insertion, not a sort of them all."""

    def __init__(self, objs: Iterable[T] = ()) -> None:
        self.by_id: dict[str, T] = {o.id: o for o in objs}
        self._keys = sorted((o.created_at, o.id) for o in self.by_id.values())
        self._objs: list[T] = [self.by_id[k[1]] for k in self._keys]

    def put(self, obj: T) -> None:
        self.remove(obj.id)
        key = (obj.created_at, obj.id)
        i = bisect_left(self._keys, key)
        self._keys.insert(i, key)
        self._objs.insert(i, obj)
        self.by_id[obj.id] = obj

    def remove(self, obj_id: str) -> None:
        old = self.by_id.pop(obj_id, None)
        if old is not None:
            i = bisect_left(self._keys, (old.created_at, old.id))
            del self._keys[i], self._objs[i]

    def ordered(self) -> tuple[T, ...]:
        return tuple(self._objs)


class Replica:
    """The durable services and nodes, followed through the published events on the
    event loop's thread, and the snapshot made of them (`snapshot`, read by any
    thread). `running_by_node` is the store's durable running index (service ID ->
    node ID -> count) and `running_total` its sum over the nodes (service ID ->
    count), both read here only on the loop's thread."""

    def __init__(
        self,
        running_by_node: Mapping[str, Mapping[str, int]],
        running_total: Mapping[str, int],
    ) -> None:
        self._running_by_node = running_by_node
        self._running_total = running_total
        self._services: Sorted[Service] = Sorted()
        self._nodes: Sorted[Node] = Sorted()
        self._clusters: dict[str, Cluster] = {}
        self._dirty_services = self._dirty_nodes = self._dirty_running = True
        self._services_sorted: tuple[Service, ...] = ()
        self._nodes_sorted: tuple[Node, ...] = ()
        self.snapshot: ReadSnapshot = EMPTY_SNAPSHOT

    def load(
        self,
        services: Iterable[Service],
        nodes: Iterable[Node],
        clusters: Iterable[Cluster],
        index: int,
    ) -> None:
        self._services = Sorted(services)
        self._nodes = Sorted(nodes)
        self._clusters = {c.id: c for c in clusters}
        self._dirty_services = self._dirty_nodes = self._dirty_running = True
        self.publish(index)

    def follow(self, events: list[Event]) -> None:
        """Take in one committed transaction's events."""
        for ev in events:
            kind = ev.kind
            if kind == "task":
                self._dirty_running = True
                continue
            if kind == "cluster":
                self._dirty_services = True  # (a new snapshot; the cluster is one object)
                if ev.action == "remove":
                    self._clusters.pop(ev.obj.id, None)
                else:
                    self._clusters[ev.obj.id] = ev.obj
                continue
            if kind == "service":
                table: Sorted[Any] = self._services
                self._dirty_services = True
            elif kind == "node":
                table = self._nodes
                self._dirty_nodes = True
            else:
                continue
            if ev.action == "remove":
                table.remove(ev.obj.id)
            else:
                table.put(ev.obj)

    def publish(self, index: int) -> None:
        """Make a new snapshot of what changed since the last one (the loop's thread)."""
        changed = self._dirty_services or self._dirty_nodes or self._dirty_running
        if self._dirty_services:
            self._services_sorted = self._services.ordered()
        if self._dirty_nodes:
            self._nodes_sorted = self._nodes.ordered()
        running = self.snapshot.running
        if self._dirty_running or self._dirty_nodes:
            running = self._running()
        self._dirty_services = self._dirty_nodes = self._dirty_running = False
        if changed or index != self.snapshot.index:
            cluster = next(iter(self._clusters.values()), None)
            self.snapshot = ReadSnapshot(
                index, self._services_sorted, self._nodes_sorted, running, cluster
            )

    def _running(self) -> dict[str, int]:
        down = [n.id for n in self._nodes.by_id.values() if n.status.state == "down"]
        out = dict(self._running_total)
        if down:
            for sid, counts in self._running_by_node.items():
                out[sid] = out.get(sid, 0) - sum(counts.get(d, 0) for d in down)
        return out
