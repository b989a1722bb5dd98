"""A node has the last word on its own tasks. One it sees turn unhealthy (or die) leaves the node's backends at once:
NetworkState.set_down marks its peers not running, tells the listeners, and holds them
so while updates still in flight from the manager say running, until they are removed;
one it sees start is a backend there before the manager knows (set_up), and stays one
while it drains."""

from __future__ import annotations

from shoal.agent.network.state import NetworkState
from shoal.types.network import NetworkPeer, NetworkUpdate


def peer(task: str, running: bool = True) -> NetworkPeer:
    return NetworkPeer(
        network_id="n1",
        task_id=task,
        node_id="node1",
        node_addr="10.9.0.1",
        addr="10.0.1.5",
        service_id="s1",
        service_name="web",
        task_name=f"web.1.{task}",
        running=running,
    )


def running(state: NetworkState) -> list[str]:
    return sorted(p.task_id for p in state.peers.values() if p.running)


def test_set_down_takes_the_task_out_and_holds_it_out() -> None:
    state = NetworkState()
    seen: list[NetworkUpdate] = []
    state.subscribe(lambda _s, u: seen.append(u))
    state.apply(NetworkUpdate(full=True, peers=[peer("a"), peer("b")]))
    assert running(state) == ["a", "b"]

    state.set_down("a")
    assert running(state) == ["b"]
    assert [(p.task_id, p.running) for p in seen[-1].peers] == [("a", False)]

    # an update sent before the manager knew still says running: held down, and the
    # listeners see it held down too
    state.apply(NetworkUpdate(peers=[peer("a"), peer("b")]))
    assert running(state) == ["b"]
    assert all(not p.running for p in seen[-1].peers if p.task_id == "a")
    state.apply(NetworkUpdate(full=True, peers=[peer("a"), peer("b")]))
    assert running(state) == ["b"]

    # removed: forgotten (a task never runs again once down)
    state.apply(NetworkUpdate(removed_peers=[peer("a").key]))
    assert running(state) == ["b"]
    state.set_down("zzz")  # unknown: nothing to tell
    assert len(seen) == 5


def test_set_up_makes_its_own_task_a_backend_first_and_keeps_it_while_draining() -> None:
    state = NetworkState()
    state.apply(NetworkUpdate(full=True, peers=[peer("a", running=False), peer("b")]))
    assert running(state) == ["b"]
    state.set_up("a")  # the agent saw it start: a backend here before the manager knows
    assert running(state) == ["a", "b"]
    state.apply(NetworkUpdate(peers=[peer("a", running=False)]))  # stale, or leaving
    assert running(state) == ["a", "b"]
    state.set_down("a")  # drained: out here last
    assert running(state) == ["b"]
    state.apply(NetworkUpdate(peers=[peer("a", running=True)]))
    assert running(state) == ["b"]
