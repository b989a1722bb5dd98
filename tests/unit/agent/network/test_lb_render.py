"""The load-balancing rules as rendered from a NetworkState (pure: no kernel)."""

from __future__ import annotations

from shoal.agent.network import mesh, vip
from shoal.agent.network.state import NetworkState
from shoal.types.network import (
    Network,
    NetworkPeer,
    NetworkSpec,
    NetworkUpdate,
    PortMapping,
    ServiceEndpoint,
)

APP = Network(id="app", spec=NetworkSpec(name="app"))
INGRESS = Network(id="ing", spec=NetworkSpec(name="ingress", ingress=True))


def peer(net: str, task: str, addr: str, node: str, svc: str = "web", running: bool = True):  # type: ignore[no-untyped-def]
    return NetworkPeer(
        network_id=net, task_id=task, node_id=node, node_addr=node, addr=addr,
        service_id=svc, running=running,
    )  # fmt: skip


def state_with(*peers: NetworkPeer, endpoints: list[ServiceEndpoint]) -> NetworkState:
    s = NetworkState()
    s.apply(
        NetworkUpdate(full=True, networks=[APP, INGRESS], peers=list(peers), endpoints=endpoints)
    )
    return s


def test_vips_of_takes_running_backends_sorted_and_leaves_ingress_out() -> None:
    s = state_with(
        peer("app", "t2", "10.0.1.7", "n2"),
        peer("app", "t1", "10.0.1.5", "n1"),
        peer("app", "t3", "10.0.1.9", "n1", running=False),
        peer("app", "c", "10.0.1.50", "n1", svc="client"),
        endpoints=[
            ServiceEndpoint(network_id="app", service_id="web", service_name="web", vip="10.0.1.2"),
            ServiceEndpoint(network_id="app", service_id="dns", service_name="d"),  # dnsrr
            ServiceEndpoint(network_id="ing", service_id="web", service_name="web", vip="10.0.0.2"),
        ],
    )  # fmt: skip
    assert vip.vips_of(s, ["app", "ing"]) == {"10.0.1.2": ["10.0.1.5", "10.0.1.7"]}
    body = vip.render(vip.vips_of(s, ["app"]))
    assert body is not None
    assert "ip daddr 10.0.1.2 dnat to numgen inc mod 2 map { 0 : 10.0.1.5, 1 : 10.0.1.7 }" in body
    assert "ip daddr { 10.0.1.2 } meta l4proto tcp reject with tcp reset" in body
    assert vip.render({}) is None


def test_a_vip_without_backends_is_only_refused() -> None:
    body = vip.render({"10.0.1.2": [], "10.0.1.3": ["10.0.1.8"]})
    assert body is not None
    assert "10.0.1.2 dnat" not in body
    assert "ip daddr 10.0.1.3 dnat to numgen inc mod 1 map { 0 : 10.0.1.8 }" in body
    assert "ip daddr { 10.0.1.2, 10.0.1.3 } reject" in body


def test_mesh_picks_local_backends_by_address_and_remote_ones_through_their_node() -> None:
    s = state_with(
        peer("ing", "t1", "10.0.0.5", "n1"),
        peer("ing", "t2", "10.0.0.6", "n2"),
        peer("ing", "t3", "10.0.0.7", "n2"),
        peer("ing", "t4", "10.0.0.8", "n1", running=False),
        endpoints=[
            ServiceEndpoint(
                network_id="ing", service_id="web", service_name="web", vip="10.0.0.2",
                ports=[PortMapping(target=80, published=8080),
                       PortMapping(target=81, published=8081, mode="host")],
            )
        ],
    )  # fmt: skip
    assert mesh.ingress_network(s) == "ing"
    ports = mesh.mesh_ports(s, "ing")
    assert ports == [mesh.Port("tcp", 8080, 80, "web")]  # host mode is not the mesh's
    gw = mesh.render_gw(s, "ing", ports, "n1")
    assert (
        'iifname "gw0" meta l4proto tcp th dport 8080 counter dnat ip to numgen inc mod 3 '
        "map { 0 : 10.0.0.5 . 80, 1 : n2 . 8080, 2 : n2 . 8080 }"
    ) in gw
    assert (
        f"ip dscp {mesh.HOP_DSCP} counter dnat ip to numgen inc mod 1 map {{ 0 : 10.0.0.5 . 80 }}"
        in gw
    )
    # on n2: its own two locally, n1's one through n1; a handed-over one only locally
    gw2 = mesh.render_gw(s, "ing", ports, "n2")
    assert "map { 0 : 10.0.0.6 . 80, 1 : 10.0.0.7 . 80, 2 : n1 . 8080 }" in gw2
    node = mesh.render_node(ports, "shmabc")
    assert (
        f"fib daddr type local meta l4proto tcp th dport 8080 counter dnat to {mesh.LINK_GW}"
        in node
    )


def test_mesh_port_with_no_local_backend_refuses_a_handed_over_connection() -> None:
    s = state_with(
        peer("ing", "t2", "10.0.0.6", "n2"),
        endpoints=[ServiceEndpoint(network_id="ing", service_id="web", service_name="web",
                                   ports=[PortMapping(target=80, published=8080)])],
    )  # fmt: skip
    gw = mesh.render_gw(s, "ing", mesh.mesh_ports(s, "ing"), "n1")
    assert f"ip dscp {mesh.HOP_DSCP} accept" in gw  # → the gateway's own address: refused
    assert "map { 0 : n2 . 8080 }" in gw
