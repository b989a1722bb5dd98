"""Load balancing in the kernel with real nftables, without the manager: two "nodes"
(lab namespaces), each with its own Plumbing driven by NetworkUpdates built by hand
(as test_plumbing.py does), tasks in namespaces of their own."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from shoal.agent.network import vip
from shoal.agent.network.plumbing import Plumbing
from shoal.agent.network.state import NetworkState
from shoal.types.network import (
    NetworkAttachment,
    NetworkPeer,
    NetworkUpdate,
    PortMapping,
    ServiceEndpoint,
)
from tests.integration.cluster_harness import NetnsLab
from tests.integration.network.lbkit import Server, ask, tally
from tests.integration.network.test_plumbing import in_ns, listing, network

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@pytest.fixture
def lab() -> Iterator[tuple[NetnsLab, list[tuple[str, str]]]]:
    lab = NetnsLab()
    try:
        yield lab, [lab.add_host(), lab.add_host()]
    finally:
        assert lab.teardown() == []


async def settle(plumbings: list[Plumbing]) -> None:
    """Wait for each plumbing's sync of the updates applied so far."""
    await asyncio.sleep(0)
    for p in plumbings:
        while p._sync_task is not None and not p._sync_task.done():
            await p._sync_task


def apply(plumbings: list[Plumbing], update: NetworkUpdate) -> None:
    for p in plumbings:
        assert p.state is not None
        p.state.apply(update)


def test_vip_spreads_over_backends_on_both_nodes_follows_changes_and_refuses_when_empty(
    lab: tuple[NetnsLab, list[tuple[str, str]]], tmp_path: Path
) -> None:
    _lab, [(ns_a, addr_a), (ns_b, addr_b)] = lab
    before = {ns: listing(ns) for ns in (ns_a, ns_b)}
    host_before = listing(None)["nft"]
    net = f"10.212.{secrets.randbelow(250)}"
    n1 = network(f"{net}.0/24")
    the_vip = f"{net}.100"
    svc = "svc-web"
    node = {"A": addr_a, "B": addr_b}
    # web.1 and web.3 on A, web.2 and web.4 on B; the client (another service) on A.
    backends = {f"web{i}": ("A" if i % 2 else "B", f"{net}.{10 + i}") for i in range(1, 5)}

    def peer(task: str, where: str, addr: str, service: str, running: bool = True) -> NetworkPeer:
        return NetworkPeer(
            network_id=n1.id, task_id=task, node_id=where, node_addr=node[where], addr=addr,
            service_id=service, service_name=service, running=running,
        )  # fmt: skip

    peers = [peer(t, w, a, svc) for t, (w, a) in backends.items()]
    peers.append(peer("client", "A", f"{net}.50", "svc-client"))
    endpoint = ServiceEndpoint(network_id=n1.id, service_id=svc, service_name="web", vip=the_vip)
    full = NetworkUpdate(full=True, networks=[n1], peers=peers, endpoints=[endpoint])

    async def run() -> None:
        plumbings = []
        for name, (ns, addr) in (("a", (ns_a, addr_a)), ("b", (ns_b, addr_b))):
            p = Plumbing(
                tmp_path / name / "data", tmp_path / name / "run", addr, f"/run/netns/{ns}"
            )
            state = NetworkState()
            p.watch(state)
            state.apply(full)
            plumbings.append(p)
        pa, pb = plumbings
        by_node = {"A": pa, "B": pb}
        servers: list[Server] = []
        try:
            paths = {}
            for task, (where, addr) in backends.items():
                att = NetworkAttachment(network=n1, addresses=[f"{addr}/24"])
                paths[task] = await by_node[where].attach(task, [att])
                servers.append(Server(paths[task], task))
            att = NetworkAttachment(network=n1, addresses=[f"{net}.50/24"])
            client = await pa.attach("client", [att])
            await settle(plumbings)
            table = in_ns(client, "nft", "list", "table", vip.FAMILY, vip.TABLE).stdout
            assert f"ip daddr {the_vip} dnat to numgen inc mod 4 map" in table
            # round robin over the four, two on each node
            assert tally(client, the_vip, 80, 20) == {t: 5 for t in backends}
            # a backend stops running: it gets nothing new once the sync is through
            apply(plumbings, NetworkUpdate(peers=[peer("web2", "B", f"{net}.12", svc, False)]))
            await settle(plumbings)
            assert tally(client, the_vip, 80, 12) == {"web1": 4, "web3": 4, "web4": 4}
            # a backend removed altogether, and one comes back
            apply(plumbings, NetworkUpdate(
                removed_peers=[f"{n1.id}/web3"],
                peers=[peer("web2", "B", f"{net}.12", svc)],
            ))  # fmt: skip
            await settle(plumbings)
            assert tally(client, the_vip, 80, 9) == {"web1": 3, "web2": 3, "web4": 3}
            # the VIP with no backend: refused at once, not blackholed
            apply(plumbings, NetworkUpdate(peers=[
                peer(t, w, a, svc, False) for t, (w, a) in backends.items()
            ]))  # fmt: skip
            await settle(plumbings)
            assert ask(client, the_vip, 80, 2) == ["refused", "refused"]
            # backends reach their own service's VIP too (a backend may pick itself)
            apply(plumbings, NetworkUpdate(peers=[peer("web4", "B", f"{net}.14", svc)]))
            await settle(plumbings)
            assert tally(paths["web1"], the_vip, 80, 3) == {"web4": 3}
            assert pa.vips.failures == 0 and pb.vips.failures == 0
        finally:
            for s in servers:
                s.stop()
            for p in plumbings:
                await p.close()

    asyncio.run(run())
    assert {ns: listing(ns) for ns in (ns_a, ns_b)} == before
    assert listing(None)["nft"] == host_before


@pytest.fixture
def lab3() -> Iterator[tuple[NetnsLab, list[tuple[str, str]]]]:
    lab = NetnsLab()
    try:
        yield lab, [lab.add_host(), lab.add_host(), lab.add_host()]
    finally:
        assert lab.teardown() == []


def sysctl_in(ns: str, key: str) -> str:
    return in_ns(f"/run/netns/{ns}", "cat", "/proc/sys/" + key.replace(".", "/")).stdout.strip()


def test_mesh_port_answers_on_every_node_and_loopback_and_reaches_backends_on_both(
    lab3: tuple[NetnsLab, list[tuple[str, str]]], tmp_path: Path
) -> None:
    _lab, [(ns_a, addr_a), (ns_b, addr_b), (ns_c, _addr_c)] = lab3
    nodes = (ns_a, ns_b)
    before = {ns: listing(ns) for ns in nodes}
    forwarding = {ns: sysctl_in(ns, "net.ipv4.ip_forward") for ns in nodes}
    host_before = listing(None)["nft"]
    net = f"10.0.{secrets.randbelow(250)}"
    ingress = network(f"{net}.0/24")
    ingress = msgspec.structs.replace(
        ingress, spec=msgspec.structs.replace(ingress.spec, name="ingress", ingress=True)
    )
    svc = "svc-web"
    node = {"A": addr_a, "B": addr_b}
    backends = {"web1": ("A", f"{net}.11"), "web2": ("B", f"{net}.12"), "web3": ("A", f"{net}.13")}
    published = 18080

    def peer(task: str, running: bool = True) -> NetworkPeer:
        where, addr = backends[task]
        return NetworkPeer(
            network_id=ingress.id, task_id=task, node_id=where, node_addr=node[where],
            addr=addr, service_id=svc, service_name="web", running=running,
        )  # fmt: skip

    endpoint = ServiceEndpoint(
        network_id=ingress.id, service_id=svc, service_name="web", vip=f"{net}.2",
        ports=[PortMapping(target=80, published=published)],
    )  # fmt: skip
    full = NetworkUpdate(
        full=True, networks=[ingress], peers=[peer(t) for t in backends], endpoints=[endpoint]
    )

    async def run() -> None:
        plumbings = []
        for name, (ns, addr) in (("a", (ns_a, addr_a)), ("b", (ns_b, addr_b))):
            p = Plumbing(
                tmp_path / name / "data", tmp_path / name / "run", addr, f"/run/netns/{ns}"
            )
            state = NetworkState()
            p.watch(state)
            state.apply(full)
            plumbings.append(p)
        pa, pb = plumbings
        by_node = {"A": pa, "B": pb}
        servers: list[Server] = []
        try:
            for task, (where, addr) in backends.items():
                att = NetworkAttachment(network=ingress, addresses=[f"{addr}/24"])
                servers.append(Server(await by_node[where].attach(task, [att]), task))
            await settle(plumbings)
            assert pa.record.mesh is not None and pb.record.mesh is not None
            everyone = set(backends)
            outside = f"/run/netns/{ns_c}"
            # from outside the cluster, to each node's address: every backend answers
            for addr in (addr_a, addr_b):
                assert set(ask(outside, addr, published, 12)) == everyone
            # on each node's loopback and own address, from the node itself
            for ns, addr in ((ns_a, addr_a), (ns_b, addr_b)):
                assert set(ask(f"/run/netns/{ns}", "127.0.0.1", published, 12)) == everyone
                assert set(ask(f"/run/netns/{ns}", addr, published, 12)) == everyone
            # a backend stops running: nothing new reaches it, on either node
            apply(plumbings, NetworkUpdate(peers=[peer("web2", running=False)]))
            await settle(plumbings)
            for addr in (addr_a, addr_b):
                assert set(ask(outside, addr, published, 12)) == {"web1", "web3"}
            # only a backend on the other node: node B hands every connection to A
            apply(plumbings, NetworkUpdate(peers=[peer("web1", False), peer("web2")]))
            await settle(plumbings)
            assert set(ask(outside, addr_a, published, 6)) == {"web2", "web3"}
            apply(plumbings, NetworkUpdate(peers=[peer("web3", False)]))
            await settle(plumbings)
            assert set(ask(outside, addr_a, published, 6)) == {"web2"}
            # no backend at all: refused at once on both nodes
            apply(plumbings, NetworkUpdate(peers=[peer("web2", False)]))
            await settle(plumbings)
            for addr in (addr_a, addr_b):
                assert ask(outside, addr, published, 2) == ["refused", "refused"]
            # the service stops publishing: the gateway and the node's table go
            apply(plumbings, NetworkUpdate(endpoints=[msgspec.structs.replace(endpoint, ports=[])]))
            await settle(plumbings)
            assert pa.record.mesh is None and pb.record.mesh is None
            assert ask(outside, addr_a, published, 1) == ["refused"]
            assert pa.mesh.transactions and pb.mesh.transactions
        finally:
            for s in servers:
                s.stop()
            for p in plumbings:
                await p.close()

    asyncio.run(run())
    assert {ns: listing(ns) for ns in nodes} == before
    assert {ns: sysctl_in(ns, "net.ipv4.ip_forward") for ns in nodes} == forwarding
    assert listing(None)["nft"] == host_before
