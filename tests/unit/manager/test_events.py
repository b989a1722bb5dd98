"""The event log: committed changes translated as dockerd 20.10 does, the bounded
history behind `--since`, dockerd's filters, and subscribers that never hold it up."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import msgspec
import pytest

from shoal.api.events import parse_timestamp, wants_engine
from shoal.clock import FakeClock
from shoal.errors import InvalidArgument
from shoal.manager.events import (
    MAX_HISTORY_AGE_S,
    MAX_HISTORY_EVENTS,
    MAX_SUBSCRIBER_QUEUE,
    EventFilter,
    EventLog,
    LoggedEvent,
    Subscription,
    translate,
)
from shoal.manager.store import Event, MemoryBackend, Store, Tx
from shoal.types.base import format_time
from shoal.types.event import EventActor, EventMessage
from shoal.types.node import ManagerStatus, NodeDescription
from shoal.types.secret import Config, ConfigSpec, Secret, SecretSpec
from shoal.types.service import (
    ContainerSpec,
    ReplicatedService,
    ServiceMode,
    TaskSpec,
    UpdateStatus,
)

from .test_store import make_cluster, make_node, make_service, make_task

T0 = 1_795_307_173_812_389_833  # a time from the reference transcript (ns)


def service(replicas: int = 3, image: str = "busybox:1", **changes: object) -> object:
    s = make_service("0dvy6tyna1geo22o9oo5k2pfa", "ref-web")
    spec = msgspec.structs.replace(
        s.spec,
        labels={"tier": "front"},
        mode=ServiceMode(replicated=ReplicatedService(replicas=replicas)),
        task_template=TaskSpec(container_spec=ContainerSpec(image=image)),
    )
    return msgspec.structs.replace(
        s, spec=spec, created_at=format_time(T0 - 5), updated_at=format_time(T0), **changes
    )


def line(ev: LoggedEvent | None) -> dict[str, object]:
    assert ev is not None and ev.line.endswith(b"\n")
    return json.loads(ev.line)


# --- translation ---------------------------------------------------------------------------


def test_a_scale_is_the_transcripts_line_byte_for_byte() -> None:
    logged = translate(Event("update", "service", service(2), service(3)), now_ns=0)
    assert logged is not None
    assert logged.line == (
        b'{"Type":"service","Action":"update","Actor":{"ID":"0dvy6tyna1geo22o9oo5k2pfa",'
        b'"Attributes":{"name":"ref-web","replicas.new":"2","replicas.old":"3"}},'
        b'"scope":"swarm","time":1795307173,"timeNano":1795307173812389833}\n'
    )


def test_create_and_remove_carry_the_name_and_their_times() -> None:
    created = line(translate(Event("create", "service", service()), now_ns=0))
    assert created["Action"] == "create" and created["timeNano"] == T0 - 5
    assert created["Actor"] == {
        "ID": "0dvy6tyna1geo22o9oo5k2pfa",
        "Attributes": {"name": "ref-web"},
    }
    # the store keeps no time for a remove: it is the time it is logged (as dockerd)
    removed = line(translate(Event("remove", "service", service(), service()), now_ns=T0 + 9))
    assert (removed["Action"], removed["timeNano"], removed["time"]) == (
        "remove",
        T0 + 9,
        (T0 + 9) // 1_000_000_000,
    )
    assert removed["Actor"]["Attributes"] == {"name": "ref-web"}  # type: ignore[index]


def test_service_updates_name_image_and_update_state_changes() -> None:
    old = service(image="busybox:1")
    new = service(image="busybox:2", update_status=UpdateStatus(state="updating"))
    attrs = line(translate(Event("update", "service", new, old), 0))["Actor"]["Attributes"]  # type: ignore[index]
    assert attrs == {
        "image.new": "busybox:2",
        "image.old": "busybox:1",
        "name": "ref-web",
        "updatestate.new": "updating",
    }
    done = service(image="busybox:2", update_status=UpdateStatus(state="completed"))
    attrs = line(translate(Event("update", "service", done, new), 0))["Actor"]["Attributes"]  # type: ignore[index]
    assert attrs == {
        "name": "ref-web",
        "updatestate.new": "completed",
        "updatestate.old": "updating",
    }
    # an update that changes none of them still names the service, and nothing else
    same = line(translate(Event("update", "service", done, done), 0))
    assert same["Actor"]["Attributes"] == {"name": "ref-web"}  # type: ignore[index]


def test_node_updates_say_what_changed_and_a_node_is_named_by_its_hostname() -> None:
    old = msgspec.structs.replace(
        make_node("n1"),
        description=NodeDescription(hostname="vm"),
        manager_status=ManagerStatus(leader=False, reachability="reachable"),
    )
    new = msgspec.structs.replace(
        old,
        spec=msgspec.structs.replace(old.spec, availability="drain", role="manager"),
        status=msgspec.structs.replace(old.status, state="down"),
        manager_status=ManagerStatus(leader=True, reachability="unreachable"),
    )
    attrs = line(translate(Event("update", "node", new, old), 0))["Actor"]["Attributes"]  # type: ignore[index]
    assert attrs == {
        "availability.new": "drain",
        "availability.old": "active",
        "leader.new": "true",
        "leader.old": "false",
        "name": "vm",
        "reachability.new": "unreachable",
        "reachability.old": "reachable",
        "role.new": "manager",
        "role.old": "worker",
        "state.new": "down",
        "state.old": "ready",
    }


def test_secrets_and_configs_have_events_tasks_and_the_cluster_none() -> None:
    secret = Secret(id="x5d", spec=SecretSpec(name="ref-secret"))
    config = Config(id="a5h", spec=ConfigSpec(name="ref-config"))
    assert line(translate(Event("create", "secret", secret), 0))["Type"] == "secret"
    assert line(translate(Event("create", "config", config), 0))["Type"] == "config"
    assert translate(Event("create", "task", make_task("t1")), 0) is None
    assert translate(Event("create", "cluster", make_cluster()), 0) is None


# --- filters --------------------------------------------------------------------------------


def logged(
    type_: str = "service", action: str = "create", name: str = "web", **labels: str
) -> LoggedEvent:
    message = EventMessage(
        type=type_,
        action=action,
        actor=EventActor(id=f"id-{name}", attributes={"name": name}),
        scope="swarm",
        time=1,
        time_nano=1_000_000_000,
    )
    return LoggedEvent.of(message, labels)


@pytest.mark.parametrize(
    ("filters", "included"),
    [
        ({}, True),
        ({"type": ["service"]}, True),
        ({"type": ["node", "secret"]}, False),
        ({"event": ["create", "remove"]}, True),
        ({"event": ["update"]}, False),
        ({"scope": ["swarm"]}, True),
        ({"scope": ["local"]}, False),
        ({"service": ["we"]}, True),  # a prefix of the name
        ({"service": ["id-w"]}, True),  # or of the ID
        ({"service": ["api"]}, False),
        ({"container": ["web"]}, True),  # dockerd: name keys do not look at the type
        ({"container": ["db"]}, False),
        ({"label": ["tier"]}, True),  # the object's labels
        ({"label": ["tier=front"]}, True),
        ({"label": ["tier=back"]}, False),
        ({"label": ["tier", "name=web"]}, True),  # and the attributes, every one given
        ({"label": ["tier", "other"]}, False),
        ({"image": ["busybox"]}, False),
        ({"type": ["service"], "event": ["create"], "service": ["web"]}, True),
    ],
)
def test_filters_are_dockerds(filters: dict[str, list[str]], included: bool) -> None:
    assert EventFilter(filters).include(logged(tier="front")) is included


def test_the_engine_is_asked_unless_only_swarm_events_are_wanted() -> None:
    assert wants_engine(EventFilter({}))
    assert wants_engine(EventFilter({"type": ["container"]}))
    assert wants_engine(EventFilter({"type": ["network"]}))  # local networks too
    assert not wants_engine(EventFilter({"type": ["service", "node"]}))
    assert not wants_engine(EventFilter({"scope": ["swarm"]}))


def test_timestamps_are_parsed_as_dockerd_parses_them() -> None:
    assert parse_timestamp("", "since") is None
    assert parse_timestamp("1795306971.106", "since") == 1_795_306_971_106_000_000
    assert parse_timestamp("1795306971", "since") == 1_795_306_971_000_000_000
    with pytest.raises(InvalidArgument):
        parse_timestamp("10m", "since")


# --- the log ---------------------------------------------------------------------------------


def at(t_ns: int, name: str = "web") -> LoggedEvent:
    ev = logged(name=name)
    message = msgspec.structs.replace(ev.message, time=t_ns // 1_000_000_000, time_nano=t_ns)
    return LoggedEvent.of(message)


def test_since_and_until_select_a_window_of_the_history() -> None:
    clock = FakeClock(wall_ns=T0 + 100)
    log_ = EventLog(Store(MemoryBackend(), clock), clock)
    for i in range(10):
        log_.publish(at(T0 + i, name=f"s{i}"))
    past, sub = log_.subscribe(EventFilter(), since_ns=T0 + 3, until_ns=T0 + 5)
    assert [e.message.actor.attributes["name"] for e in past] == ["s3", "s4", "s5"]
    # with neither bound, no history (dockerd); with `until` alone, all of it up to then
    assert log_.subscribe(EventFilter())[0] == []
    assert len(log_.subscribe(EventFilter(), until_ns=T0 + 1)[0]) == 2
    filtered, _ = log_.subscribe(EventFilter({"service": ["s7"]}), since_ns=0)
    assert [e.message.actor.attributes["name"] for e in filtered] == ["s7"]
    sub.close()


def test_the_history_keeps_the_last_events_of_a_burst_and_none_too_old() -> None:
    clock = FakeClock(wall_ns=T0)
    log_ = EventLog(Store(MemoryBackend(), clock), clock)
    burst = MAX_HISTORY_EVENTS + 500
    for i in range(burst):
        log_.publish(at(T0 + i, name=f"s{i}"))
    history = log_.history()
    assert len(history) == MAX_HISTORY_EVENTS
    assert history[0].message.actor.attributes["name"] == f"s{burst - MAX_HISTORY_EVENTS}"
    assert history[-1].message.actor.attributes["name"] == f"s{burst - 1}"
    # `--since` within the burst's tail still answers after it
    past, _ = log_.subscribe(EventFilter(), since_ns=T0 + burst - 3)
    assert len(past) == 3
    # once older than the age bound, events leave the history
    asyncio.run(clock.advance(MAX_HISTORY_AGE_S + 1))
    log_.publish(at(clock.time_ns(), name="late"))
    assert [e.message.actor.attributes["name"] for e in log_.history()] == ["late"]
    assert log_.statistics()["history"] == 1


def test_a_slow_subscriber_is_closed_and_holds_nobody_up() -> None:
    async def scenario() -> None:
        clock = FakeClock(wall_ns=T0)
        log_ = EventLog(Store(MemoryBackend(), clock), clock)
        _, slow = log_.subscribe(EventFilter())
        _, fast = log_.subscribe(EventFilter())
        _, other = log_.subscribe(EventFilter({"type": ["node"]}))
        got: list[LoggedEvent] = []

        async def read_fast() -> None:
            async for batch in fast:
                got.extend(batch)

        reader = asyncio.get_running_loop().create_task(read_fast())
        for i in range(MAX_SUBSCRIBER_QUEUE + 10):
            log_.publish(at(T0 + i))  # never waits, whoever is behind
            if i % 100 == 0:
                await clock.settle()
        await clock.settle()
        assert slow.closed_reason == f"fell {MAX_SUBSCRIBER_QUEUE} events behind"
        assert [b async for b in slow] == []  # its stream ends at once
        assert len(got) == MAX_SUBSCRIBER_QUEUE + 10
        # a subscriber is never closed for events its filter leaves out
        assert other.closed_reason is None
        assert log_.statistics()["slow_closed"] == 1
        assert log_.statistics()["subscribers"] == 2
        log_.stop()
        await clock.settle()
        assert reader.done() and fast.closed_reason == "the event log stopped"

    asyncio.run(scenario())


def test_committed_changes_become_events_in_order() -> None:
    async def scenario() -> None:
        clock = FakeClock(wall_ns=T0)
        store = Store(MemoryBackend(), clock)
        log_ = EventLog(store, clock)
        runner = asyncio.get_running_loop().create_task(log_.run())
        _, sub = log_.subscribe(EventFilter({"type": ["service"]}))
        s = make_service("s1", "web")
        await store.update(lambda tx: tx.create(s))
        await store.update(lambda tx: tx.create(make_task("t1", "s1")))
        await store.update(lambda tx: tx.create(make_node("n1")))

        def scale(tx: Tx) -> None:
            cur = tx.get_service("s1")
            assert cur is not None
            mode = ServiceMode(replicated=ReplicatedService(replicas=4))
            tx.update(
                msgspec.structs.replace(cur, spec=msgspec.structs.replace(cur.spec, mode=mode))
            )

        await store.update(scale)
        await store.update(lambda tx: tx.delete("service", "s1"))
        await clock.settle()
        got = [b async for b in _take(sub, 3)]
        assert [(e.message.action, e.message.actor.attributes) for e in got] == [
            ("create", {"name": "web"}),
            ("update", {"name": "web", "replicas.new": "4", "replicas.old": "1"}),
            ("remove", {"name": "web"}),
        ]
        assert [e.message.type for e in log_.history()] == [
            "service",
            "node",
            "service",
            "service",
        ]
        times = [e.message.time_nano for e in log_.history()]
        assert times == sorted(times) and times[0] >= T0
        log_.stop()
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)

    asyncio.run(scenario())


async def _take(sub: Subscription, n: int) -> AsyncIterator[LoggedEvent]:
    seen = 0
    async for batch in sub:
        for e in batch:
            yield e
            seen += 1
            if seen == n:
                return
