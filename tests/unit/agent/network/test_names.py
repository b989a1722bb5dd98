"""The DNS name table against NetworkUpdates, applied through the real NetworkState."""

from __future__ import annotations

from shoal.agent.network.names import NameTable, key
from shoal.agent.network.state import NetworkState
from shoal.types.network import Network, NetworkPeer, NetworkSpec, NetworkUpdate, ServiceEndpoint

APP = "net-app"
OTHER = "net-other"


def peer(
    task: str, addr: str, running: bool = True, net: str = APP, svc: str = "web"
) -> NetworkPeer:
    return NetworkPeer(
        network_id=net,
        task_id=task,
        node_id="node-1",
        node_addr="10.124.7.1",
        addr=addr,
        service_id=f"sid-{svc}",
        service_name=svc,
        task_name=f"{svc}.{task[-1]}.{task}",
        running=running,
    )


def endpoint(
    svc: str = "web", vip: str | None = "10.0.1.2", aliases: list[str] | None = None, net: str = APP
) -> ServiceEndpoint:
    return ServiceEndpoint(
        network_id=net, service_id=f"sid-{svc}", service_name=svc, vip=vip, aliases=aliases or []
    )


def setup(*updates: NetworkUpdate) -> tuple[NetworkState, NameTable]:
    state = NetworkState()
    table = NameTable(state)
    for u in updates:
        state.apply(u)
    return state, table


def full_web(n: int = 3, vip: str | None = "10.0.1.2") -> NetworkUpdate:
    return NetworkUpdate(
        full=True,
        networks=[Network(id=APP)],
        peers=[peer(f"t{i}", f"10.0.1.{10 + i}") for i in range(n)],
        endpoints=[endpoint(vip=vip)],
    )


def addrs(table: NameTable, name: str, nets: tuple[str, ...] = (APP,)) -> set[str] | None:
    found = table.lookup(key(name), nets)
    return None if found is None else set(found)


def test_service_vip_tasks_and_task_names() -> None:
    _, table = setup(full_web())
    assert addrs(table, "web") == {"10.0.1.2"}
    assert addrs(table, "tasks.web") == {"10.0.1.10", "10.0.1.11", "10.0.1.12"}
    assert addrs(table, "web.1.t1") == {"10.0.1.11"}
    assert addrs(table, "nothere") is None


def test_names_are_case_insensitive_with_or_without_trailing_dot() -> None:
    _, table = setup(full_web())
    assert addrs(table, "WEB.") == {"10.0.1.2"}
    assert addrs(table, "Tasks.Web.") == {"10.0.1.10", "10.0.1.11", "10.0.1.12"}


def test_scale_up_and_down_incrementally() -> None:
    state, table = setup(full_web())
    state.apply(NetworkUpdate(peers=[peer("t3", "10.0.1.13"), peer("t4", "10.0.1.14")]))
    assert len(addrs(table, "tasks.web") or ()) == 5
    state.apply(NetworkUpdate(removed_peers=[f"{APP}/t0", f"{APP}/t4"]))
    assert addrs(table, "tasks.web") == {"10.0.1.11", "10.0.1.12", "10.0.1.13"}
    assert addrs(table, "web.0.t0") is None
    assert addrs(table, "web") == {"10.0.1.2"}


def test_task_no_longer_running_leaves_the_answers() -> None:
    state, table = setup(full_web())
    state.apply(NetworkUpdate(peers=[peer("t1", "10.0.1.11", running=False)]))
    assert addrs(table, "tasks.web") == {"10.0.1.10", "10.0.1.12"}
    assert addrs(table, "web.1.t1") is None
    state.apply(NetworkUpdate(peers=[peer("t1", "10.0.1.11", running=True)]))
    assert addrs(table, "web.1.t1") == {"10.0.1.11"}


def test_dnsrr_resolves_the_service_to_its_running_tasks() -> None:
    state, table = setup(full_web(vip=None))
    assert addrs(table, "web") == {"10.0.1.10", "10.0.1.11", "10.0.1.12"}
    state.apply(NetworkUpdate(peers=[peer("t2", "10.0.1.12", running=False)]))
    assert addrs(table, "web") == {"10.0.1.10", "10.0.1.11"}
    state.apply(NetworkUpdate(removed_peers=[f"{APP}/t0", f"{APP}/t1"]))
    # Scaled to nothing: the name still exists (answered at once, empty), not forwarded.
    assert addrs(table, "web") == set()
    assert addrs(table, "tasks.web") == set()


def test_aliases_answer_as_the_service() -> None:
    state, table = setup(full_web())
    state.apply(NetworkUpdate(endpoints=[endpoint(aliases=["frontend", "Site"])]))
    assert addrs(table, "frontend") == {"10.0.1.2"}
    assert addrs(table, "site") == {"10.0.1.2"}
    assert len(addrs(table, "tasks.frontend") or ()) == 3
    # Alias dropped by a service update.
    state.apply(NetworkUpdate(endpoints=[endpoint(aliases=["site"])]))
    assert addrs(table, "frontend") is None
    assert addrs(table, "tasks.frontend") is None
    assert addrs(table, "site") == {"10.0.1.2"}


def test_endpoint_removed_leaves_task_names_until_tasks_go() -> None:
    state, table = setup(full_web())
    state.apply(NetworkUpdate(removed_endpoints=[f"{APP}/sid-web"]))
    assert addrs(table, "web") is None
    assert len(addrs(table, "tasks.web") or ()) == 3
    state.apply(NetworkUpdate(removed_peers=[f"{APP}/t{i}" for i in range(3)]))
    assert addrs(table, "tasks.web") is None
    assert table.statistics()["names"] == 0


def test_network_removed_drops_its_names() -> None:
    state, table = setup(full_web())
    state.apply(
        NetworkUpdate(
            networks=[Network(id=OTHER)],
            peers=[peer("o1", "10.0.2.5", net=OTHER, svc="db")],
            endpoints=[endpoint("db", vip="10.0.2.2", net=OTHER)],
        )
    )
    assert addrs(table, "db", (OTHER,)) == {"10.0.2.2"}
    state.apply(NetworkUpdate(removed_networks=[APP]))
    assert addrs(table, "web") is None
    assert addrs(table, "db", (OTHER,)) == {"10.0.2.2"}
    # The network comes back: its names come with what is sent again.
    state.apply(full_web())
    assert addrs(table, "web") == {"10.0.1.2"}
    assert addrs(table, "db", (OTHER,)) is None


def test_scoping_per_asker_networks() -> None:
    state, table = setup(full_web())
    state.apply(
        NetworkUpdate(
            networks=[Network(id=OTHER)],
            peers=[peer("o1", "10.0.2.5", net=OTHER, svc="db")],
            endpoints=[
                endpoint("db", vip="10.0.2.2", net=OTHER),
                endpoint(vip="10.0.2.3", net=OTHER),
            ],
        )
    )
    assert addrs(table, "db", (APP,)) is None
    assert addrs(table, "db", (OTHER,)) == {"10.0.2.2"}
    # A service on both networks: the asker's first network that knows it answers.
    assert addrs(table, "web", (OTHER, APP)) == {"10.0.2.3"}
    assert addrs(table, "web", (APP, OTHER)) == {"10.0.1.2"}
    assert addrs(table, "web", ()) is None


def test_peers_sent_before_their_network_count_once_it_arrives() -> None:
    state, table = setup(NetworkUpdate(full=True))
    state.apply(NetworkUpdate(peers=[peer("t0", "10.0.1.10")], endpoints=[endpoint()]))
    assert addrs(table, "web") is None
    state.apply(NetworkUpdate(networks=[Network(id=APP)]))
    assert addrs(table, "web") == {"10.0.1.2"}
    assert addrs(table, "tasks.web") == {"10.0.1.10"}


def test_full_update_replaces_everything() -> None:
    state, table = setup(full_web(), NetworkUpdate(endpoints=[endpoint(aliases=["old"])]))
    state.apply(full_web(n=1))
    assert addrs(table, "old") is None
    assert addrs(table, "tasks.web") == {"10.0.1.10"}


def test_name_claimed_by_two_services() -> None:
    state, table = setup(full_web())
    state.apply(NetworkUpdate(endpoints=[endpoint("api", vip="10.0.1.3", aliases=["web"])]))
    assert addrs(table, "web") == {"10.0.1.3"}
    # web's own update (an alias added) does not take the name back...
    state.apply(NetworkUpdate(endpoints=[endpoint(aliases=["x"])]))
    assert addrs(table, "web") == {"10.0.1.3"}
    # ...but once api lets go, web answers again.
    state.apply(NetworkUpdate(removed_endpoints=[f"{APP}/sid-api"]))
    assert addrs(table, "web") == {"10.0.1.2"}
    state.apply(NetworkUpdate(removed_endpoints=[f"{APP}/sid-web"]))
    assert addrs(table, "web") is None


def test_reverse_names_of_running_tasks() -> None:
    state, table = setup(
        NetworkUpdate(
            full=True,
            networks=[Network(id=APP, spec=NetworkSpec(name="appnet"))],
            peers=[peer("t0", "10.0.1.10"), peer("t1", "10.0.1.11", running=False)],
            endpoints=[endpoint()],
        )
    )
    assert table.lookup_ptr("10.1.0.10.in-addr.arpa", (APP,)) == "web.0.t0.appnet"
    assert table.lookup_ptr("11.1.0.10.in-addr.arpa", (APP,)) is None
    assert table.lookup_ptr("10.1.0.10.in-addr.arpa", (OTHER,)) is None
    state.apply(NetworkUpdate(removed_peers=[f"{APP}/t0"]))
    assert table.lookup_ptr("10.1.0.10.in-addr.arpa", (APP,)) is None


def test_names_qualified_by_their_network() -> None:
    state, table = setup(
        NetworkUpdate(
            full=True,
            networks=[
                Network(id=APP, spec=NetworkSpec(name="AppNet")),
                Network(id=OTHER, spec=NetworkSpec(name="other.net")),
            ],
            peers=[peer("t0", "10.0.1.10"), peer("o1", "10.0.2.5", net=OTHER)],
            endpoints=[endpoint(), endpoint(vip="10.0.2.2", net=OTHER)],
        )
    )
    assert addrs(table, "web.appnet", (OTHER, APP)) == {"10.0.1.2"}
    assert addrs(table, "web.other.net", (OTHER, APP)) == {"10.0.2.2"}
    assert addrs(table, "tasks.web.appnet", (APP,)) == {"10.0.1.10"}
    assert addrs(table, "web.0.t0.appnet", (APP,)) == {"10.0.1.10"}
    # Not on the asker's networks, or not a network: not ours.
    assert addrs(table, "web.other.net", (APP,)) is None
    assert addrs(table, "web.example", (APP,)) is None


def test_the_ingress_network_answers_no_names() -> None:
    ingress = Network(id="ingress-id", spec=NetworkSpec(name="ingress", ingress=True))
    _, table = setup(
        NetworkUpdate(
            full=True,
            networks=[ingress],
            peers=[peer("t0", "10.0.0.10", net="ingress-id")],
            endpoints=[endpoint(vip="10.0.0.2", net="ingress-id")],
        )
    )
    assert addrs(table, "web", ("ingress-id",)) is None
    assert addrs(table, "tasks.web", ("ingress-id",)) is None
    assert table.lookup_ptr("10.0.0.10.in-addr.arpa", ("ingress-id",)) is None
    assert table.statistics()["names"] == 0
