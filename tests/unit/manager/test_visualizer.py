"""The visualizer's feed: store events as the page's changes (only the views go on the
wire), the snapshot, and subscribers that are bounded and never hold the feed up."""

from __future__ import annotations

import asyncio
import json

import msgspec
import pytest

from shoal.clock import FakeClock
from shoal.errors import ResourceExhausted
from shoal.manager.store import Event, MemoryBackend, Store, Tx
from shoal.manager.visualizer import (
    MAX_SUBSCRIBER_QUEUE,
    MAX_SUBSCRIBERS,
    Change,
    NodeView,
    Subscription,
    TaskView,
    VisualizerFeed,
    encode_change,
    payload,
)
from shoal.types.base import Version
from shoal.types.meta import TaskMeta
from shoal.types.node import ManagerStatus, NodeDescription
from shoal.types.service import GlobalService, ReplicatedService, ServiceMode
from shoal.types.task import Task, TaskState, TaskStatus

from .test_store import make_node, make_service, make_task

TASK_KEYS = {"id", "version", "service_id", "service", "slot", "node_id", "state"}
TASK_KEYS |= {"desired_state"}
NODE_KEYS = {"id", "version", "hostname", "role", "state", "availability", "leader"}
SERVICE_KEYS = {"id", "version", "name", "mode", "replicas"}


def task(state: TaskState = TaskState.RUNNING, desired: TaskState = TaskState.RUNNING) -> Task:
    t = make_task("t1", "s1", node_id="n1")
    return msgspec.structs.replace(
        t,
        slot=2,
        status=TaskStatus(timestamp="", state=state.wire, message=""),
        desired_state=desired.wire,
    )


META = TaskMeta(service_name="web", registry_auth="c2VjcmV0", spec_version=7)


def wire(change: Change | None) -> dict[str, object]:
    """The change as the page receives it: one server-sent event, its data JSON."""
    assert change is not None
    raw = encode_change(change)
    head, data, end = raw.split(b"\n", 2)
    assert head == b"event: " + change.kind.encode() and end == b"\n"
    assert data.startswith(b"data: ")
    return json.loads(data[len(b"data: ") :])  # type: ignore[no-any-return]


# --- payload -----------------------------------------------------------------------------------


def test_a_running_task_is_its_view_and_nothing_shoal_keeps() -> None:
    got = wire(payload(Event("create", "task", task(), None, META)))
    assert got == {
        "kind": "task",
        "action": "upsert",
        "id": "t1",
        "view": {
            "id": "t1",
            "version": 0,
            "service_id": "s1",
            "service": "web",
            "slot": 2,
            "node_id": "n1",
            "state": "running",
            "desired_state": "running",
        },
    }
    assert "c2VjcmV0" not in json.dumps(got)  # the registry credentials stay home


def test_a_task_leaving_the_page_is_a_remove_and_one_never_on_it_is_nothing() -> None:
    running = task()
    stopping = task(desired=TaskState.SHUTDOWN)
    stopped = task(state=TaskState.SHUTDOWN, desired=TaskState.SHUTDOWN)
    assert wire(payload(Event("update", "task", stopping, running, META))) == {
        "kind": "task",
        "action": "remove",
        "id": "t1",
    }
    # already off the page: nothing to say (its history is not drawn)
    assert payload(Event("update", "task", stopped, stopping, META)) is None
    assert payload(Event("remove", "task", stopped, stopped, META)) is None
    # a shown task the reaper deletes
    assert wire(payload(Event("remove", "task", running, running, META)))["action"] == "remove"


def test_a_task_starting_up_or_failed_but_wanted_is_shown_with_its_state() -> None:
    pending = msgspec.structs.replace(task(TaskState.PENDING), node_id=None)
    view = wire(payload(Event("create", "task", pending, None, META)))["view"]
    assert view["node_id"] is None and view["state"] == "pending"  # type: ignore[index]
    failed = task(TaskState.FAILED)
    assert wire(payload(Event("update", "task", failed, task(), META)))["action"] == "upsert"


def test_a_jobs_task_is_shown_until_it_completes() -> None:
    running = task(desired=TaskState.COMPLETE)
    done = task(TaskState.COMPLETE, desired=TaskState.COMPLETE)
    assert wire(payload(Event("create", "task", running, None, META)))["action"] == "upsert"
    assert wire(payload(Event("update", "task", done, running, META)))["action"] == "remove"


def test_a_task_without_its_service_name_is_named_by_the_service_id() -> None:
    view = wire(payload(Event("create", "task", task(), None, None)))["view"]
    assert view["service"] == "s1"  # type: ignore[index]


def test_a_node_is_its_hostname_role_state_availability_and_leadership() -> None:
    node = msgspec.structs.replace(
        make_node("n1"),
        description=NodeDescription(hostname="vm1"),
        manager_status=ManagerStatus(leader=True, reachability="reachable", addr="10.0.0.1:2377"),
    )
    got = wire(payload(Event("update", "node", node, make_node("n1"))))
    assert got["view"] == {
        "id": "n1",
        "version": 0,
        "hostname": "vm1",
        "role": "worker",
        "state": "ready",
        "availability": "active",
        "leader": True,
    }
    assert wire(payload(Event("remove", "node", node, node))) == {
        "kind": "node",
        "action": "remove",
        "id": "n1",
    }


def test_a_service_is_its_name_mode_and_replicas() -> None:
    svc = make_service("s1", "web")
    assert wire(payload(Event("create", "service", svc)))["view"] == {
        "id": "s1",
        "version": 0,
        "name": "web",
        "mode": "replicated",
        "replicas": 1,
    }
    glob = msgspec.structs.replace(
        svc, spec=msgspec.structs.replace(svc.spec, mode=ServiceMode(global_=GlobalService()))
    )
    view = wire(payload(Event("update", "service", glob, svc)))["view"]
    assert (view["mode"], view["replicas"]) == ("global", None)  # type: ignore[index]


def test_kinds_the_page_does_not_draw_are_nothing() -> None:
    assert payload(Event("create", "secret", object())) is None


# --- the feed ---------------------------------------------------------------------------------


async def _seed(store: Store, replicas: int) -> None:
    def fill(tx: Tx) -> None:
        tx.create(make_node("n1"))
        svc = make_service("s1", "web")
        mode = ServiceMode(replicated=ReplicatedService(replicas=replicas))
        tx.create(msgspec.structs.replace(svc, spec=msgspec.structs.replace(svc.spec, mode=mode)))
        for i in range(replicas):
            t = msgspec.structs.replace(make_task(f"t{i}", "s1", "n1"), slot=i + 1)
            tx.create(t, TaskMeta(service_name="web", registry_auth="c2VjcmV0"))
        # history the page does not draw
        gone = make_task("old", "s1", "n1")
        tx.create(msgspec.structs.replace(gone, desired_state="shutdown"), TaskMeta())

    await store.update(fill)


def _events(raw: bytes) -> list[tuple[str, dict[str, object]]]:
    out = []
    for block in raw.split(b"\n\n"):
        if not block:
            continue
        lines = dict(line.split(b": ", 1) for line in block.split(b"\n"))
        out.append((lines[b"event"].decode(), json.loads(lines[b"data"])))
    return out


def test_a_subscriber_gets_a_snapshot_then_every_change_in_order() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        store = Store(MemoryBackend(), clock)
        feed = VisualizerFeed(store, clock)
        runner = asyncio.get_running_loop().create_task(feed.run())
        await _seed(store, 2)
        await clock.settle()
        snap, sub = feed.subscribe()
        [(name, body)] = _events(snap)
        assert name == "snapshot"
        assert [n["id"] for n in body["nodes"]] == ["n1"]  # type: ignore[index]
        assert set(body["nodes"][0]) == NODE_KEYS  # type: ignore[index]
        assert set(body["services"][0]) == SERVICE_KEYS  # type: ignore[index]
        assert sorted(t["id"] for t in body["tasks"]) == ["t0", "t1"]  # type: ignore[attr-defined]
        assert all(set(t) == TASK_KEYS for t in body["tasks"])  # type: ignore[attr-defined]
        assert b"c2VjcmV0" not in snap

        def scale_up(tx: Tx) -> None:
            for i in (2, 3):
                t = msgspec.structs.replace(make_task(f"t{i}", "s1", "n1"), slot=i + 1)
                tx.create(t, TaskMeta(service_name="web"))

        await store.update(scale_up)
        await store.update(lambda tx: tx.delete("task", "t0"))
        await clock.settle()
        batch = await sub.next_batch()
        assert batch is not None
        got = [(name, body["action"], body["id"]) for name, body in _events(b"".join(batch))]
        assert got == [
            ("task", "upsert", "t2"),
            ("task", "upsert", "t3"),
            ("task", "remove", "t0"),
        ]
        feed.stop()
        assert await sub.next_batch() is None  # its stream ends
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)

    asyncio.run(scenario())


def test_a_slow_subscriber_is_closed_and_holds_nobody_up() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        store = Store(MemoryBackend(), clock)
        feed = VisualizerFeed(store, clock)
        _, slow = feed.subscribe()
        _, fast = feed.subscribe()
        got: list[bytes] = []

        async def read_fast() -> None:
            while (batch := await fast.next_batch()) is not None:
                got.extend(batch)

        reader = asyncio.get_running_loop().create_task(read_fast())
        node = make_node("n1")
        for i in range(MAX_SUBSCRIBER_QUEUE + 10):
            # never waits, whoever is behind
            feed.publish(
                [Event("update", "node", msgspec.structs.replace(node, version=Version(index=i)))]
            )
            if i % 100 == 0:
                await clock.settle()
        await clock.settle()
        assert slow.closed_reason == f"fell {MAX_SUBSCRIBER_QUEUE} changes behind"
        assert slow.queued == 0  # its queue is dropped at once
        assert await slow.next_batch() is None
        assert len(got) == MAX_SUBSCRIBER_QUEUE + 10
        stats = feed.statistics()
        assert (stats["slow_closed"], stats["subscribers"]) == (1, 1)
        feed.stop()
        await clock.settle()
        assert reader.done() and fast.closed_reason == "the visualizer feed stopped"

    asyncio.run(scenario())


def test_subscribers_are_bounded_and_a_closed_one_frees_its_place() -> None:
    async def scenario() -> None:
        feed = VisualizerFeed(Store(MemoryBackend()))
        subs: list[Subscription] = [feed.subscribe()[1] for _ in range(MAX_SUBSCRIBERS)]
        with pytest.raises(ResourceExhausted):
            feed.subscribe()
        subs[0].close()
        feed.subscribe()
        assert feed.statistics()["subscribers"] == MAX_SUBSCRIBERS

    asyncio.run(scenario())


def test_without_subscribers_nothing_is_translated() -> None:
    feed = VisualizerFeed(Store(MemoryBackend()))
    feed.publish([Event("create", "node", make_node("n1"))])
    assert feed.statistics()["published"] == 0


def test_a_feed_behind_the_store_closes_its_subscribers_and_goes_on() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        store = Store(MemoryBackend(), clock)
        feed = VisualizerFeed(store, clock)
        _, sub = feed.subscribe()
        assert feed._watcher is not None
        feed._watcher._close("fell behind")  # as the store closes a slow watcher
        runner = asyncio.get_running_loop().create_task(feed.run())
        await clock.settle()
        assert sub.closed_reason == "resync" and feed.statistics()["resyncs"] == 1
        # the feed watches again: a new page follows new changes
        _, again = feed.subscribe()
        await store.update(lambda tx: tx.create(make_node("n2")))
        await clock.settle()
        batch = await again.next_batch()
        assert batch is not None and b'"id":"n2"' in batch[0]
        feed.stop()
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)

    asyncio.run(scenario())


def test_views_hold_only_what_the_page_draws() -> None:
    assert set(NodeView.__struct_fields__) == NODE_KEYS
    assert set(TaskView.__struct_fields__) == TASK_KEYS
