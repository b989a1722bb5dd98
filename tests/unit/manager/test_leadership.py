"""The leadership seam (shoal/manager/leadership.py) on a FakeClock, with a real Manager
on an in-memory store: a follower's store refuses local writes and runs none of the
leader's loops; elected, it leads (writes accepted, loops run and converge a service);
deposed, its loops stop and its writes are refused again; elected again, fresh loops
run. `wait_leader` waits through the clock for a leader other than a stale key of its
own, and gives up at its timeout.

The election and the etcd backend are stand-ins answering the seam's few calls (their
behaviour against a real etcd: tests/integration/test_etcd_*.py, and the three
managers of tests/integration/cluster/test_ha_managers.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from shoal.clock import FakeClock
from shoal.errors import LostLeadership
from shoal.etcdclient import Fence
from shoal.manager.dispatcher import dispatcher as dispatcher_mod
from shoal.manager.dispatcher.dispatcher import HEARTBEAT_GRACE, UNKNOWN_NODE_GRACE_S
from shoal.manager.leadership import Candidate, Leadership
from shoal.manager.manager import Manager
from shoal.manager.roster import mark_leader
from shoal.manager.store import MemoryBackend, Record, Store, Tx
from shoal.manager.store.memory import encode_record
from shoal.types.meta import ServiceMeta
from shoal.types.node import ManagerStatus, Node, NodeSpec, NodeStatus

from .sim import Sim
from .test_store_contract import service

ME = Candidate("me", "10.0.0.1:2377")
OTHER = Candidate("other", "10.0.0.2:2377")


class ElectionStandIn:
    """Elects this candidate when the test says so (`win`); `leaders` feeds observe()."""

    def __init__(self) -> None:
        self.candidate = ME.encode()
        self.lost = asyncio.Event()
        self.wins: asyncio.Queue[Fence] = asyncio.Queue()
        self.leaders: asyncio.Queue[str | None] = asyncio.Queue()
        self.campaigns = 0
        self.reachable = True

    async def campaign(self) -> Fence:
        self.campaigns += 1
        fence = await self.wins.get()
        self.lost = asyncio.Event()
        return fence

    async def observe(self) -> AsyncIterator[str | None]:
        while True:
            yield await self.leaders.get()


class BackendStandIn:
    def __init__(self) -> None:
        self.fence: Fence | None = None

    async def caught_up(self) -> None:
        return None

    def set_fence(self, fence: Fence | None) -> None:
        self.fence = fence


async def _write(store: Store, sid: str, replicas: int = 2) -> None:
    def create(tx: Tx) -> None:
        tx.create(service(sid, replicas))

    await store.update(create)


def test_follow_lead_lose_lead_again() -> None:
    async def main() -> None:
        clock = FakeClock()
        store = Store(MemoryBackend(), clock)
        manager = Manager(store, clock)
        election, backend = ElectionStandIn(), BackendStandIn()
        leadership = Leadership(
            election,  # type: ignore[arg-type]
            backend,  # type: ignore[arg-type]
            store,
            lambda: _lead(manager),
            manager.follow,
            clock,
        )
        manager.start(lead=False)
        leadership.start()
        await clock.settle()
        # a follower: nothing of the leader's runs, local writes are refused at once
        assert not manager.leading and not leadership.leading
        with pytest.raises(LostLeadership):
            await _write(store, "refused")
        assert store.view().get_service("refused") is None

        election.wins.put_nowait(Fence(b"k", 7))
        await clock.settle()
        assert leadership.leading and manager.leading and backend.fence == Fence(b"k", 7)
        await _write(store, "web")
        await clock.advance(1)
        assert len(store.view().tasks_of_service("web")) == 2  # the orchestrator runs

        election.lost.set()  # deposed: its lease is gone
        await clock.settle()
        assert not leadership.leading and not manager.leading and backend.fence is None
        with pytest.raises(LostLeadership):
            await _write(store, "refused")
        assert election.campaigns == 2  # campaigning again

        election.wins.put_nowait(Fence(b"k", 9))
        await clock.settle()
        assert manager.leading
        await _write(store, "api", 3)
        await clock.advance(1)
        assert len(store.view().tasks_of_service("api")) == 3  # fresh loops run

        await leadership.stop()
        assert not manager.leading
        await manager.stop()

    asyncio.run(main())


async def _lead(manager: Manager) -> None:
    manager.lead()


def test_wait_leader_through_the_clock() -> None:
    async def main() -> None:
        clock = FakeClock()
        store = Store(MemoryBackend(), clock)
        election, backend = ElectionStandIn(), BackendStandIn()
        leadership = Leadership(
            election,  # type: ignore[arg-type]
            backend,  # type: ignore[arg-type]
            store,
            _nothing,
            _nothing,
            clock,
        )
        leadership.start()
        # the key still names this manager (killed and restarted before its lease
        # expired, its cluster port then another): not a leader to forward to
        election.leaders.put_nowait(Candidate(ME.node_id, "10.0.0.1:40001").encode())
        await clock.settle()
        waiting = asyncio.create_task(leadership.wait_leader(5.0))
        await clock.advance(4.9)
        assert not waiting.done()
        await clock.advance(0.2)
        assert waiting.done() and waiting.result() is None

        waiting = asyncio.create_task(leadership.wait_leader(5.0))
        await clock.advance(1)
        election.leaders.put_nowait(OTHER.encode())
        await clock.settle()
        assert waiting.done() and waiting.result() == OTHER
        await leadership.stop()

    asyncio.run(main())


async def _nothing() -> None:
    return None


def test_candidate_round_trip() -> None:
    assert Candidate.decode(ME.encode()) == ME
    assert Candidate.decode(None) is None
    assert Candidate.decode("bare-name") == Candidate("bare-name", "")


class DeposedBackend(MemoryBackend):
    """A deposed leader's backend: its commits wait (`hold`) and are then fenced off."""

    async def commit(self, index: int, records: list[Record]) -> None:
        await self._released.wait()
        raise LostLeadership("fencing token superseded (test)")


def test_a_foreign_commit_meeting_writes_in_flight_waits_for_them() -> None:
    """A deposed leader that does not know yet has a write in flight when the new
    leader's commit arrives: its write is refused and taken back first, then the new
    leader's commit is applied, and the feed goes on with the next one."""

    async def main() -> None:
        backend = DeposedBackend()
        store = Store(backend)
        feed = asyncio.create_task(store.run())
        await asyncio.sleep(0)
        backend.hold()
        mine = asyncio.create_task(_write(store, "mine"))
        await asyncio.sleep(0)
        assert store.view().get_service("mine") is not None  # applied, in flight
        backend.inject([encode_record("service", service("theirs"), ServiceMeta(spec_version=1))])
        await asyncio.sleep(0)
        assert store.view().get_service("theirs") is None  # waits behind the write
        backend.release()
        with pytest.raises(LostLeadership):
            await mine
        await asyncio.sleep(0)
        view = store.view()
        assert view.get_service("mine") is None and view.get_service("theirs") is not None
        backend.inject([encode_record("service", service("next"), ServiceMeta(spec_version=1))])
        for _ in range(5):
            await asyncio.sleep(0)
        assert store.view().get_service("next") is not None and not feed.done()
        feed.cancel()

    asyncio.run(main())


def test_a_replica_reaches_an_index_through_the_clock() -> None:
    """`Store.reached`: a follower waits for the commit a forwarded write made (read-
    your-writes), and gives up at its timeout."""

    async def main() -> None:
        clock = FakeClock()
        backend = MemoryBackend()
        store = Store(backend, clock)
        feed = asyncio.create_task(store.run())
        await clock.settle()
        waiting = asyncio.create_task(store.reached(1, 5.0))
        await clock.advance(4)
        assert not waiting.done()
        backend.inject([encode_record("service", service("web"), ServiceMeta(spec_version=1))])
        await clock.settle()
        assert waiting.done() and waiting.result() is True
        assert await store.reached(1, 0.0)
        late = asyncio.create_task(store.reached(2, 5.0))
        await clock.advance(5.1)
        assert late.done() and late.result() is False
        feed.cancel()

    asyncio.run(main())


def test_a_new_leader_records_itself_as_the_leader() -> None:
    async def main() -> None:
        store = Store(MemoryBackend())

        def managers(tx: Tx) -> None:
            for node_id, leader in (("a", True), ("b", False), ("c", False)):
                tx.create(
                    Node(
                        id=node_id,
                        spec=NodeSpec(role="manager", availability="active"),
                        status=NodeStatus(state="ready"),
                        manager_status=ManagerStatus(leader=leader, reachability="reachable"),
                    )
                )
            tx.create(
                Node(
                    id="w",
                    spec=NodeSpec(role="worker", availability="active"),
                    status=NodeStatus(state="ready"),
                )
            )

        await store.update(managers)
        await store.update(lambda tx: mark_leader(tx, "b"))
        view = store.view()
        shown = {n.id: n.manager_status.leader if n.manager_status else None for n in view.nodes()}
        assert shown == {"a": False, "b": True, "c": False, "w": None}
        index = store.index
        await store.update(lambda tx: mark_leader(tx, "b"))
        assert store.index == index  # nothing to change: nothing written

    asyncio.run(main())


def test_a_new_leader_keeps_live_nodes_and_their_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Leadership moves (the manager follows, no leader for 7 s, then it leads again,
    as a new leader would): agents whose session tries back off (their next try comes
    almost 6 s after the new leader started: longer than three 1 s heartbeat periods)
    come back within the new leader's grace and keep their tasks; a node that died
    meanwhile is marked down once the grace is over (and only then)."""
    period_s = 1.0
    monkeypatch.setattr(dispatcher_mod, "DEFAULT_HEARTBEAT_PERIOD_NS", int(period_s * 1e9))

    async def test(sim: Sim) -> None:
        sid = await sim.create(replicas=3)
        await sim.advance(1)
        before = {t.id for t in sim.running(sid)}
        assert len(before) == 3
        dead = sorted(sim.node_ids)[0]
        await sim.manager.follow()
        sim.store.refuse_writes = lambda: LostLeadership("no leader (test)")
        await sim.kill_agent(dead)
        await sim.advance(7)  # the election: agents' tries fail and back off
        sim.store.refuse_writes = None
        nodes = sim.store.watch("node")
        sim.manager.lead()
        grace = max(HEARTBEAT_GRACE * period_s, UNKNOWN_NODE_GRACE_S)
        await sim.advance(grace - 0.5)
        went_down = {e.obj.id for e in nodes.get_nowait_all() if e.obj.status.state == "down"}
        assert not went_down, went_down  # not even for a while
        states = {n.id: n.status.state for n in sim.store.view().nodes()}
        assert set(states.values()) == {"ready"}, states
        assert {t.id for t in sim.running(sid)} == before  # nothing restarted
        await sim.advance(1)
        node = sim.store.view().get_node(dead)
        assert node is not None and node.status.state == "down"
        nodes.close()

    async def main() -> None:
        async with Sim(3) as sim:
            await test(sim)

    asyncio.run(main())
