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

from ..cluster_harness import NetnsLab
from .lbkit import Server, ask, tally
from .test_plumbing import in_ns, listing, network

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


def docker_like_filter(ns: str) -> None:
    """What dockerd does to a host's filter table (deps-evaluation §7a): FORWARD drops
    unless DOCKER-USER accepts. In the lab node's own namespace, gone with it."""
    for rule in (
        ["-N", "DOCKER-USER"],
        ["-A", "DOCKER-USER", "-j", "RETURN"],
        ["-I", "FORWARD", "-j", "DOCKER-USER"],
        ["-P", "FORWARD", "DROP"],
    ):
        done = in_ns(f"/run/netns/{ns}", "iptables", "-w", *rule)
        assert done.returncode == 0, done.stderr


def sysctl_in(ns: str, key: str) -> str:
    return in_ns(f"/run/netns/{ns}", "cat", "/proc/sys/" + key.replace(".", "/")).stdout.strip()


@pytest.mark.parametrize("docker_rules", [False, True], ids=["plain", "docker-forward-drop"])
def test_mesh_port_answers_on_every_node_and_loopback_and_reaches_backends_on_both(
    lab3: tuple[NetnsLab, list[tuple[str, str]]], tmp_path: Path, docker_rules: bool
) -> None:
    _lab, [(ns_a, addr_a), (ns_b, addr_b), (ns_c, _addr_c)] = lab3
    nodes = (ns_a, ns_b)
    if docker_rules:
        for ns in nodes:
            docker_like_filter(ns)
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


@pytest.mark.parametrize("docker_rules", [False, True], ids=["plain", "docker-forward-drop"])
def test_host_mode_port_answers_only_on_the_tasks_node(
    lab3: tuple[NetnsLab, list[tuple[str, str]]], tmp_path: Path, docker_rules: bool
) -> None:
    _lab, [(ns_a, addr_a), (ns_b, addr_b), (ns_c, _addr_c)] = lab3
    nodes = (ns_a, ns_b)
    if docker_rules:
        for ns in nodes:
            docker_like_filter(ns)
    before = {ns: listing(ns) for ns in nodes}
    forwarding = {ns: sysctl_in(ns, "net.ipv4.ip_forward") for ns in nodes}
    net = f"10.213.{secrets.randbelow(250)}"
    n1 = network(f"{net}.0/24")
    ports = [PortMapping(target=80, published=18081, mode="host")]
    outside = f"/run/netns/{ns_c}"

    async def run() -> None:
        plumbings = []
        for name, (ns, addr) in (("a", (ns_a, addr_a)), ("b", (ns_b, addr_b))):
            p = Plumbing(
                tmp_path / name / "data", tmp_path / name / "run", addr, f"/run/netns/{ns}"
            )
            state = NetworkState()
            p.watch(state)
            state.apply(NetworkUpdate(full=True, networks=[n1]))
            plumbings.append(p)
        pa, _pb = plumbings
        server = None
        try:
            att = NetworkAttachment(network=n1, addresses=[f"{net}.5/24"])
            path = await pa.attach("hp1", [att], host_ports=ports)
            server = Server(path, "hp1")
            assert ask(outside, addr_a, 18081, 2) == ["hp1", "hp1"]
            assert ask(f"/run/netns/{ns_a}", "127.0.0.1", 18081, 1) == ["hp1"]
            assert ask(f"/run/netns/{ns_a}", addr_a, 18081, 1) == ["hp1"]
            assert ask(outside, addr_b, 18081, 1) == ["refused"]
            assert ask(f"/run/netns/{ns_b}", "127.0.0.1", 18081, 1) == ["refused"]
            # a second task with a host port of its own: both answer, each on its port
            att2 = NetworkAttachment(network=n1, addresses=[f"{net}.6/24"])
            more = [PortMapping(target=80, published=18082, mode="host")]
            server2 = Server(await pa.attach("hp2", [att2], host_ports=more), "hp2")
            try:
                assert ask(outside, addr_a, 18082, 1) == ["hp2"]
                assert ask(outside, addr_a, 18081, 1) == ["hp1"]
                await pa.detach("hp1")
                assert ask(outside, addr_a, 18081, 1) == ["refused"]
                assert ask(outside, addr_a, 18082, 1) == ["hp2"]
            finally:
                server2.stop()
            await pa.detach("hp2")
            assert pa.record.hostports is None and pa.record.forwarding is None
        finally:
            if server is not None:
                server.stop()
            for p in plumbings:
                await p.close()

    asyncio.run(run())
    assert {ns: listing(ns) for ns in nodes} == before
    assert {ns: sysctl_in(ns, "net.ipv4.ip_forward") for ns in nodes} == forwarding


def test_a_restarted_plumbing_adopts_the_mesh_and_host_ports_from_the_record(
    lab3: tuple[NetnsLab, list[tuple[str, str]]], tmp_path: Path
) -> None:
    """A daemon killed with -9 leaves its gateway, tables and links; the next one finds
    them in the record, keeps what its tasks still need, and removes all on stop."""
    _lab, [(ns_a, addr_a), (_ns_b, _addr_b), (ns_c, _addr_c)] = lab3
    before = listing(ns_a)
    forwarding = sysctl_in(ns_a, "net.ipv4.ip_forward")
    net = f"10.0.{secrets.randbelow(250)}"
    ingress = network(f"{net}.0/24")
    ingress = msgspec.structs.replace(
        ingress, spec=msgspec.structs.replace(ingress.spec, name="ingress", ingress=True)
    )
    backend = NetworkPeer(
        network_id=ingress.id, task_id="web1", node_id="A", node_addr=addr_a,
        addr=f"{net}.11", service_id="svc", service_name="web", running=True,
    )  # fmt: skip
    endpoint = ServiceEndpoint(
        network_id=ingress.id, service_id="svc", service_name="web", vip=f"{net}.2",
        ports=[PortMapping(target=80, published=18080)],
    )  # fmt: skip
    full = NetworkUpdate(full=True, networks=[ingress], peers=[backend], endpoints=[endpoint])
    host_ports = [PortMapping(target=80, published=18081, mode="host")]
    outside = f"/run/netns/{ns_c}"
    dirs = (tmp_path / "data", tmp_path / "run")

    async def run() -> None:
        first = Plumbing(*dirs, addr_a, f"/run/netns/{ns_a}")
        state = NetworkState()
        first.watch(state)
        state.apply(full)
        att = NetworkAttachment(network=ingress, addresses=[f"{net}.11/24"])
        server = Server(await first.attach("web1", [att], host_ports=host_ports), "web1")
        try:
            await settle([first])
            assert ask(outside, addr_a, 18080, 1) == ["web1"]
            # "kill -9": the first plumbing is dropped without closing anything
            second = Plumbing(*dirs, addr_a, f"/run/netns/{ns_a}")
            assert second.record.mesh == first.record.mesh
            await second.start(known_tasks={"web1"})
            assert second.record.mesh is not None and "hostport" in second.record.tasks["web1"]
            state2 = NetworkState()
            second.watch(state2)
            state2.apply(full)
            await settle([second])
            assert ask(outside, addr_a, 18080, 2) == ["web1", "web1"]
            assert ask(outside, addr_a, 18081, 1) == ["web1"]
            # The task is gone by the next restart: its link and the host table go too.
            third = Plumbing(*dirs, addr_a, f"/run/netns/{ns_a}")
            await third.start(known_tasks=set())
            assert third.record.hostports is None and not third.record.tasks
            assert ask(outside, addr_a, 18081, 1) == ["refused"]
            await third.close()
        finally:
            server.stop()

    asyncio.run(run())
    assert listing(ns_a) == before
    assert sysctl_in(ns_a, "net.ipv4.ip_forward") == forwarding
