"""The manager's event log: committed store changes as Docker event messages.

dockerd in swarm mode watches SwarmKit's store and turns each committed change of a
node, service, network, secret or config into an event (daemon/events.go,
`ProcessClusterNotification`); `GET /events` then serves them. The EventLog does the
same from the store's watch stream, so an event exists only for what was committed
(watchers see a transaction once it is durable):

- **Translation** (`translate`) follows dockerd 20.10 field by field: Type, Action
  (create|update|remove), Actor.ID, Actor.Attributes with `name` and, for updates, what
  changed (`replicas.old/new`, `image.old/new`, `updatestate.old/new` for services;
  `availability`, `role`, `state`, `leader`, `reachability` for nodes), scope "swarm",
  and the time of the change (the object's CreatedAt / UpdatedAt; now for a remove).
- **History**: the last MAX_HISTORY_EVENTS events, none older than MAX_HISTORY_AGE_S,
  so `--since` in the past answers after a burst (dockerd keeps 256).
- **Subscribers** each get a queue of at most MAX_SUBSCRIBER_QUEUE events. Publishing
  never waits: a subscriber that falls that far behind (a slow `docker events` client)
  is closed, with a reason, and its stream ends; nothing else is held up.

Filters (`EventFilter`) are dockerd's (daemon/events/filter.go), applied before an
event is queued, so a subscriber is never closed for events it did not ask for. One
difference, deliberate: `label=` also matches the labels of the object the event is
about (dockerd matches only Actor.Attributes, which for swarm objects hold no labels,
so the filter never matched them).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.log import get_logger
from shoal.manager import fanout
from shoal.manager.store import Event, Store
from shoal.types.base import parse_time
from shoal.types.event import SCOPE_SWARM, SWARM_EVENT_TYPES, EventActor, EventMessage

# How many events the history keeps for `--since` (dockerd keeps 256).
MAX_HISTORY_EVENTS = 10_000
# How old the oldest event the history keeps may be.
MAX_HISTORY_AGE_S = 15 * 60.0
# Events one subscriber may have queued before it is closed as too slow.
MAX_SUBSCRIBER_QUEUE = 1024
# The store kinds that have events, in dockerd's names (tasks and the cluster have none).
WATCHED_KINDS = SWARM_EVENT_TYPES

log = get_logger("shoal.manager.events")

_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    """An event message, its JSON line (encoded once for every subscriber), and the
    labels of its object (for `label=` filters; never sent)."""

    message: EventMessage
    line: bytes
    labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, message: EventMessage, labels: dict[str, str] | None = None) -> LoggedEvent:
        return cls(message, _encoder.encode(message) + b"\n", dict(labels or {}))


# --- translation -------------------------------------------------------------------------


def translate(ev: Event, now_ns: int) -> LoggedEvent | None:
    """The Docker event for one committed change, or None for kinds without events.
    `now_ns`: the time of a remove (the store keeps none for it, as SwarmKit's)."""
    if ev.kind not in WATCHED_KINDS:
        return None
    obj = ev.obj
    spec = obj.spec
    attributes: dict[str, str] = {"name": spec.name or ""}
    if ev.kind == "node" and not spec.name:
        attributes["name"] = obj.description.hostname
    if ev.action == "update" and ev.old is not None:
        if ev.kind == "service":
            attributes.update(_service_changes(obj, ev.old))
        elif ev.kind == "node":
            attributes.update(_node_changes(obj, ev.old))
    if ev.action == "create":
        when = _time_ns(obj.created_at, now_ns)
    elif ev.action == "update":
        when = _time_ns(obj.updated_at, now_ns)
    else:
        when = now_ns
    message = EventMessage(
        type=ev.kind,
        action=ev.action,
        actor=EventActor(id=obj.id, attributes=dict(sorted(attributes.items()))),
        scope=SCOPE_SWARM,
        time=when // 1_000_000_000,
        time_nano=when,
    )
    return LoggedEvent.of(message, spec.labels)


def _time_ns(stamp: str, default: int) -> int:
    try:
        return parse_time(stamp) if stamp else default
    except ValueError:
        return default


def _service_changes(new: Any, old: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    new_image = _image(new.spec)
    old_image = _image(old.spec)
    if new_image != old_image:
        out["image.old"] = old_image
        out["image.new"] = new_image
    new_replicas = _replicas(new.spec)
    old_replicas = _replicas(old.spec)
    if new_replicas is not None and old_replicas is not None and new_replicas != old_replicas:
        out["replicas.old"] = str(old_replicas)
        out["replicas.new"] = str(new_replicas)
    # dockerd: a new UpdateStatus gives only the new state; a changed one both.
    new_state = new.update_status.state if new.update_status is not None else None
    if new.update_status is not None:
        if old.update_status is None:
            out["updatestate.new"] = new_state or ""
        elif new_state != old.update_status.state:
            out["updatestate.old"] = old.update_status.state or ""
            out["updatestate.new"] = new_state or ""
    return out


def _image(spec: Any) -> str:
    template = spec.task_template
    cs = template.container_spec if template is not None else None
    return (cs.image or "") if cs is not None else ""


def _replicas(spec: Any) -> int | None:
    mode = spec.mode
    if mode is None or mode.replicated is None:
        return None
    return mode.replicated.replicas if mode.replicated.replicas is not None else 1


def _node_changes(new: Any, old: Any) -> dict[str, str]:
    out: dict[str, str] = {}

    def changed(name: str, before: Any, after: Any) -> None:
        if before != after:
            out[f"{name}.old"] = str(before).lower()
            out[f"{name}.new"] = str(after).lower()

    changed("availability", old.spec.availability, new.spec.availability)
    changed("role", old.spec.role, new.spec.role)
    changed("state", old.status.state, new.status.state)
    if new.manager_status is not None and old.manager_status is not None:
        changed("leader", old.manager_status.leader, new.manager_status.leader)
        changed("reachability", old.manager_status.reachability, new.manager_status.reachability)
    return out


# --- filters --------------------------------------------------------------------------------

# The keys `GET /events` accepts in `filters` (dockerd's).
FILTER_KEYS = (
    "config",
    "container",
    "daemon",
    "event",
    "image",
    "label",
    "network",
    "node",
    "plugin",
    "scope",
    "secret",
    "service",
    "type",
    "volume",
)
# Keys that match an actor's ID or name by prefix. As in dockerd, whatever the event's
# type: `service=web` also passes a node or container whose name starts with "web".
_NAME_KEYS: tuple[str, ...] = ("config", "container", "daemon", "network", "node")
_NAME_KEYS += ("plugin", "secret", "service", "volume")


class EventFilter:
    """dockerd's event filter: every key given must match (values of one key: any)."""

    def __init__(self, filters: dict[str, list[str]] | None = None) -> None:
        self._f = {k: list(v) for k, v in (filters or {}).items() if v}

    def __bool__(self) -> bool:
        return bool(self._f)

    def values(self, key: str) -> list[str]:
        return self._f.get(key, [])

    def _exact(self, key: str, value: str) -> bool:
        wanted = self._f.get(key)
        return wanted is None or value in wanted

    def _fuzzy(self, key: str, value: str) -> bool:
        wanted = self._f.get(key)
        return wanted is None or any(value.startswith(w) for w in wanted)

    def include(self, ev: LoggedEvent) -> bool:
        m = ev.message
        attrs = m.actor.attributes
        name = attrs.get("name", "")
        if not (
            self._exact("event", m.action)
            and self._exact("type", m.type)
            and self._exact("scope", m.scope)
        ):
            return False
        for key in _NAME_KEYS:
            if key in self._f and not (self._fuzzy(key, m.actor.id) or self._fuzzy(key, name)):
                return False
        if "image" in self._f and not (
            self._exact("image", m.actor.id) or self._exact("image", attrs.get("image", ""))
        ):
            return False
        return _match_kv(self._f.get("label"), {**ev.labels, **attrs})


def _match_kv(wanted: list[str] | None, sources: dict[str, str]) -> bool:
    """dockerd's MatchKVList: `k` needs the key, `k=v` the value too; all must hold."""
    for w in wanted or []:
        key, sep, value = w.partition("=")
        if key not in sources or (sep and sources[key] != value):
            return False
    return True


# --- subscriptions -----------------------------------------------------------------------------


class Subscription(fanout.Subscription[LoggedEvent]):
    """One `GET /events` stream's share of the log: iterate for batches of the events
    its filter passes; the iteration ends when the subscription is closed (too slow,
    unsubscribed, the log stopped), `closed_reason` saying why."""

    def __init__(self, subscribers: fanout.Subscribers[LoggedEvent], filter_: EventFilter) -> None:
        super().__init__(subscribers)
        self.filter = filter_

    def include(self, item: LoggedEvent) -> bool:
        return self.filter.include(item)


class EventLog(fanout.Follower[LoggedEvent]):
    """Turns the store's committed changes into Docker events, keeps a bounded
    history of them, and fans them out to subscribers without ever waiting on one."""

    def __init__(self, store: Store, clock: Clock = SYSTEM_CLOCK) -> None:
        super().__init__(
            store, WATCHED_KINDS, fanout.Subscribers(MAX_SUBSCRIBER_QUEUE, "events"), "event log"
        )
        self._clock = clock
        self._history: deque[LoggedEvent] = deque(maxlen=MAX_HISTORY_EVENTS)
        self.published = 0

    def handle(self, events: list[Event]) -> None:
        self.record(events)

    def fell_behind(self, reason: str) -> None:
        # Changes were missed: there is no event for them (dockerd's pubsub drops
        # too), but the log goes on.
        log.warning("event log fell behind the store; events were lost", reason=reason)

    def record(self, events: Iterable[Event]) -> None:
        """Translate one committed transaction's changes, log and publish them."""
        now = self._clock.time_ns()
        for ev in events:
            logged = translate(ev, now)
            if logged is not None:
                self.publish(logged)

    def publish(self, ev: LoggedEvent) -> None:
        self._history.append(ev)
        self._prune(self._clock.time_ns())
        self.published += 1
        self._subscribers.publish([ev])

    def _prune(self, now_ns: int) -> None:
        cutoff = now_ns - int(MAX_HISTORY_AGE_S * 1e9)
        while self._history and self._history[0].message.time_nano < cutoff:
            self._history.popleft()

    def subscribe(
        self, filter_: EventFilter, since_ns: int | None = None, until_ns: int | None = None
    ) -> tuple[list[LoggedEvent], Subscription]:
        """The logged events in [since, until] that pass the filter (none when neither
        bound is given, as dockerd), and a subscription to the events from now on.
        Both at once: no event falls between them or comes twice."""
        self._prune(self._clock.time_ns())
        past: list[LoggedEvent] = []
        if since_ns is not None or until_ns is not None:
            since = since_ns or 0
            for ev in reversed(self._history):
                t = ev.message.time_nano
                if t < since:
                    break
                if until_ns is not None and t > until_ns:
                    continue
                if filter_.include(ev):
                    past.append(ev)
            past.reverse()
        sub = Subscription(self._subscribers, filter_)
        self._subscribers.add(sub)
        return past, sub

    def history(self) -> list[LoggedEvent]:
        return list(self._history)

    def statistics(self) -> dict[str, int]:
        return {
            "published": self.published,
            "history": len(self._history),
            "subscribers": len(self._subscribers),
            "slow_closed": self._subscribers.slow_closed,
            "resyncs": self.resyncs,
        }
