"""The visualizer's feed: the cluster as the visualizer page draws it, live from the store.

The page (shoal/api/visualizer.py serves it) draws nodes as columns and tasks as cards.
What it needs of each object is a small view, built here from the Docker object and
never from anything else shoal keeps (meta): a node's ID, hostname, role, state,
availability and leadership; a service's ID, name, mode and replicas; a task's ID,
service (ID and name), slot, node and states. Nothing else goes on the wire.

- **Snapshot, then changes.** `subscribe()` returns the views of everything shown now
  (one `store.view()`) and a subscription that yields the changes committed from then
  on, as they come out of the store's watch stream. A change is an `upsert` (the object's
  whole view) or a `remove` (its ID). A task is shown while it is meant to run (desired
  state running or ready, or complete for a job's task not yet finished): a task that
  stops being shown is sent as a `remove`, so the page keeps no history.
- **Versions.** The snapshot can be ahead of the watch stream (a transaction applied
  but not yet durable is in the view; its events come once it is). Every view carries
  the object's `Version.Index`, and the page keeps the newer of two views of an object.
- **Bounded.** Each change is encoded once, as one server-sent event, for every
  subscriber. A subscriber holds at most MAX_SUBSCRIBER_QUEUE of them: one that falls
  that far behind (a slow browser) is closed and its queue dropped; its page reconnects
  and starts again from a snapshot. Publishing never waits on a subscriber. At most
  MAX_SUBSCRIBERS are open at once. A watcher closed for falling behind the store
  closes every subscriber (they reconnect to a fresh snapshot); the feed goes on.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import msgspec

from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.errors import ResourceExhausted
from shoal.log import get_logger
from shoal.manager import fanout
from shoal.manager.store import Event, ReadTx, Store
from shoal.types.node import Node
from shoal.types.service import Service
from shoal.types.task import Task, TaskState

# Changes one subscriber may have queued before it is closed as too slow.
MAX_SUBSCRIBER_QUEUE = 10_000
# Pages that may follow the feed at once (each holds a connection and a queue).
MAX_SUBSCRIBERS = 64
# The kinds the page draws.
WATCHED_KINDS = ("node", "service", "task")
# Desired states of the tasks the page shows (a job's task: while not finished).
_SHOWN_DESIRED = frozenset({TaskState.READY, TaskState.RUNNING})
MSG_TOO_MANY = f"too many visualizer clients (at most {MAX_SUBSCRIBERS})"

log = get_logger("shoal.manager.visualizer")

_encoder = msgspec.json.Encoder()

Kind = Literal["node", "service", "task"]


# --- views ---------------------------------------------------------------------------------


class NodeView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    version: int
    hostname: str
    role: str
    state: str
    availability: str
    leader: bool


class ServiceView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    version: int
    name: str
    mode: str
    replicas: int | None


class TaskView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    version: int
    service_id: str
    service: str
    slot: int | None
    node_id: str | None
    state: str
    desired_state: str


class Change(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One change the page applies: `upsert` (with the view) or `remove`."""

    kind: Kind
    action: Literal["upsert", "remove"]
    id: str
    view: NodeView | ServiceView | TaskView | None = None


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    index: int
    nodes: list[NodeView]
    services: list[ServiceView]
    tasks: list[TaskView]


def node_view(node: Node) -> NodeView:
    ms = node.manager_status
    return NodeView(
        id=node.id,
        version=node.version.index,
        hostname=node.description.hostname or node.spec.name or node.id[:12],
        role=node.spec.role,
        state=node.status.state,
        availability=node.spec.availability,
        leader=bool(ms is not None and ms.leader),
    )


def service_view(service: Service) -> ServiceView:
    mode = service.spec.mode
    replicas: int | None = None
    if mode is not None and mode.replicated is not None:
        replicas = mode.replicated.replicas if mode.replicated.replicas is not None else 1
    return ServiceView(
        id=service.id,
        version=service.version.index,
        name=service.spec.name or service.id[:12],
        mode=mode.kind if mode is not None else "replicated",
        replicas=replicas,
    )


def task_view(task: Task, service_name: str) -> TaskView:
    return TaskView(
        id=task.id,
        version=task.version.index,
        service_id=task.service_id,
        service=service_name,
        slot=task.slot,
        node_id=task.node_id,
        state=task.status.state,
        desired_state=task.desired_state,
    )


def shown(task: Task) -> bool:
    """Is the task on the page: meant to run (or a job's task not yet finished)?"""
    desired = task.desired
    if desired in _SHOWN_DESIRED:
        return True
    return desired == TaskState.COMPLETE and not task.state.terminal


def _task_service_name(ev_meta: Any, task: Task) -> str:
    # The service's name as the task was made with it (it outlives the service); the
    # store keeps it beside the task, and only the name goes on the wire.
    name = getattr(ev_meta, "service_name", "") if ev_meta is not None else ""
    return name or task.service_id[:12]


def payload(ev: Event) -> Change | None:
    """The change the page applies for one committed store change, or None when the
    page draws nothing of it (another kind; a task neither shown before nor now)."""
    if ev.kind == "node":
        if ev.action == "remove":
            return Change(kind="node", action="remove", id=ev.obj.id)
        return Change(kind="node", action="upsert", id=ev.obj.id, view=node_view(ev.obj))
    if ev.kind == "service":
        if ev.action == "remove":
            return Change(kind="service", action="remove", id=ev.obj.id)
        return Change(kind="service", action="upsert", id=ev.obj.id, view=service_view(ev.obj))
    if ev.kind == "task":
        task: Task = ev.obj
        if ev.action != "remove" and shown(task):
            view = task_view(task, _task_service_name(ev.meta, task))
            return Change(kind="task", action="upsert", id=task.id, view=view)
        if ev.old is not None and shown(ev.old):  # it was on the page (a remove's old: itself)
            return Change(kind="task", action="remove", id=task.id)
        return None
    return None


def snapshot(view: ReadTx, index: int) -> Snapshot:
    """Everything the page shows now."""
    tasks = []
    for t in view.tasks():
        if shown(t):
            tasks.append(task_view(t, _task_service_name(view.task_meta(t.id), t)))
    return Snapshot(
        index=index,
        nodes=[node_view(n) for n in view.nodes()],
        services=[service_view(s) for s in view.services()],
        tasks=tasks,
    )


def sse(event: str, data: bytes) -> bytes:
    """One server-sent event (the JSON is one line: msgspec never breaks it)."""
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


def encode_change(change: Change) -> bytes:
    return sse(change.kind, _encoder.encode(change))


def encode_snapshot(snap: Snapshot) -> bytes:
    return sse("snapshot", _encoder.encode(snap))


# --- subscriptions -----------------------------------------------------------------------------


# One page's share of the feed: `next_batch()` gives the encoded events queued, None
# once it is closed (too slow, unsubscribed, the feed stopped or resynced).
Subscription = fanout.Subscription[bytes]


class VisualizerFeed(fanout.Follower[bytes]):
    """Turns the store's committed node, service and task changes into the page's
    changes, encoded once, and fans them out without ever waiting on a subscriber."""

    def __init__(self, store: Store, clock: Clock = SYSTEM_CLOCK) -> None:
        super().__init__(
            store,
            WATCHED_KINDS,
            fanout.Subscribers(MAX_SUBSCRIBER_QUEUE, "changes"),
            "visualizer feed",
        )
        self._clock = clock
        self.published = 0

    def handle(self, events: list[Event]) -> None:
        self.publish(events)

    def fell_behind(self, reason: str) -> None:
        # Changes were missed: every page starts again from a snapshot.
        log.warning("visualizer feed fell behind the store; resyncing", reason=reason)
        self._subscribers.close_all("resync")

    def subscribe(self) -> tuple[bytes, Subscription]:
        """The encoded snapshot and a subscription to every change from now on, both
        at once (no await between them), so no change falls between the two."""
        if len(self._subscribers) >= MAX_SUBSCRIBERS:
            raise ResourceExhausted(MSG_TOO_MANY)
        snap = encode_snapshot(snapshot(self._store.view(), self._store.index))
        sub = self._subscribers.add(Subscription(self._subscribers))
        return snap, sub

    def publish(self, events: Iterable[Event]) -> None:
        """One committed transaction's changes to every subscriber (translated only
        when someone follows)."""
        if not self._subscribers:
            return
        lines = []
        for ev in events:
            change = payload(ev)
            if change is not None:
                lines.append(encode_change(change))
        if not lines:
            return
        self.published += len(lines)
        self._subscribers.publish(lines)

    def statistics(self) -> dict[str, int]:
        return {
            "subscribers": len(self._subscribers),
            "published": self.published,
            "slow_closed": self._subscribers.slow_closed,
            "resyncs": self.resyncs,
        }
