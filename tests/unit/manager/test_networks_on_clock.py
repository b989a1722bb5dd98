"""Overlay networks on the manager side, on a fake clock with the real manager and
agents (sim.py): what the allocator gives networks, services and tasks, and what each
node is told (`Assignment.network`), seen through a tap on each agent's assignment
stream into the agent's own NetworkState table.

The incremental view each node holds is checked against a view built from scratch
from the store (NetworkView.build), after every step."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from shoal.agent.agent import Agent
from shoal.agent.network.state import NetworkState
from shoal.clock import FakeClock
from shoal.manager.controlapi import networks as netctl
from shoal.manager.controlapi.services import create_service, remove_service, update_service
from shoal.manager.dispatcher.networks import NetworkView
from shoal.manager.manager import Manager
from shoal.manager.store import MemoryBackend, Store
from shoal.types.agent import Assignment
from shoal.types.network import PortMapping
from shoal.types.service import (
    ContainerSpec,
    EndpointPortConfig,
    EndpointSpec,
    NetworkAttachmentConfig,
    ReplicatedService,
    ServiceMode,
    ServiceSpec,
    TaskSpec,
)
from shoal.types.task import Task, TaskState

from .sim import FakeExecutor, Sim

SETTLE_S = 1.0


class Tap:
    """The dispatcher as one agent sees it, with every NetworkUpdate it sent recorded
    into a NetworkState (the agent's own table)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.states: dict[str, NetworkState] = {}
        self.updates: dict[str, list[Any]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def assignments(self, node_id: str) -> AsyncIterator[Assignment]:
        state = self.states.setdefault(node_id, NetworkState())
        async for a in self._inner.assignments(node_id):
            if a.network is not None:
                self.updates.setdefault(node_id, []).append(a.network)
                state.apply(a.network)
            yield a


class NetSim(Sim):
    def start_agent(self, node_id: str) -> Agent:
        if not hasattr(self, "tap"):
            self.tap = Tap(self.manager.dispatcher)
        executor = FakeExecutor(self.clock, node_id)
        agent = Agent(node_id, f"192.168.0.{node_id[-1]}", executor, self.tap, clock=self.clock)
        agent.start()
        self.agents[node_id] = agent
        return agent

    def state(self, node_id: str) -> NetworkState:
        return self.tap.states.get(node_id, NetworkState())

    def check_views(self) -> None:
        """Each node's table equals what a view built from scratch tells it."""
        fresh = NetworkView.build(self.store.view())
        for node_id in self.node_ids:
            want = NetworkState()
            want.apply(fresh.full(node_id))
            got = self.state(node_id)
            assert got.networks.keys() == want.networks.keys(), node_id
            assert got.peers == want.peers, node_id
            assert got.endpoints == want.endpoints, node_id


async def make_network(store: Store, name: str, subnet: str | None = None) -> str:
    ipam = netctl.IPAMRequest(config=[netctl.IPAMConfigRequest(subnet=subnet)] if subnet else None)
    req = netctl.NetworkCreateRequest(name=name, driver="overlay", ipam=ipam)
    return (await netctl.create(store, req)).id


def spec(
    name: str, replicas: int, networks: list[str], mode: str = "vip", env: list[str] | None = None
) -> ServiceSpec:
    return ServiceSpec(
        name=name,
        mode=ServiceMode(replicated=ReplicatedService(replicas=replicas)),
        task_template=TaskSpec(
            container_spec=ContainerSpec(image="busybox", command=["run"], env=env),
            networks=[
                NetworkAttachmentConfig(target=n, aliases=[f"{name}-alias"]) for n in networks
            ],
        ),
        endpoint_spec=EndpointSpec(mode=mode),
    )


async def scale(store: Store, service_id: str, replicas: int) -> None:
    s = store.view().get_service(service_id)
    assert s is not None
    new = msgspec.structs.replace(
        s.spec, mode=ServiceMode(replicated=ReplicatedService(replicas=replicas))
    )
    await update_service(store, service_id, s.version.index, new)


def addresses(tasks: list[Task], network_id: str) -> list[str]:
    out = []
    for t in tasks:
        for att in t.networks_attachments or ():
            if att.network.id == network_id:
                out += att.addresses or []
    return out


def live(sim: Sim, service_id: str) -> list[Task]:
    return [t for t in sim.tasks(service_id) if t.state <= TaskState.RUNNING]


def test_allocation_and_what_nodes_are_told() -> None:
    async def main() -> None:
        async with NetSim(3) as sim:
            net = await make_network(sim.store, "app")
            n = sim.store.view().get_network(net)
            assert n is not None and n.subnet == "10.0.0.0/24" and n.gateway == "10.0.0.1"
            assert n.vxlan_id == 4096
            other = await make_network(sim.store, "other")
            await sim.advance(0)
            o = sim.store.view().get_network(other)
            assert o is not None and o.subnet == "10.0.1.0/24" and o.vxlan_id == 4097

            svc = await create_service(sim.store, spec("web", 3, ["app"]))
            await sim.advance(SETTLE_S)
            s = sim.service(svc.id)
            assert s.spec.task_template and s.spec.task_template.networks
            assert s.spec.task_template.networks[0].target == net  # the name became the ID
            (vip,) = s.endpoint.virtual_ips or []
            assert vip.network_id == net and vip.addr == "10.0.0.2/24"
            running = sim.running(svc.id)
            assert len(running) == 3
            addrs = addresses(running, net)
            assert len(set(addrs)) == 3 and vip.addr not in addrs
            assert all(
                ipaddress.ip_interface(a).network == ipaddress.ip_network("10.0.0.0/24")
                for a in addrs
            )
            for t in running:
                (att,) = t.networks_attachments or []
                assert att.aliases is None and att.network.subnet == "10.0.0.0/24"

            # every node with a task holds the network, every peer, the endpoint
            on = {t.node_id for t in running}
            for node_id in sim.node_ids:
                st = sim.state(node_id)
                if node_id not in on:
                    assert not st.networks and not st.peers
                    continue
                assert set(st.networks) == {net}
                peers = st.peers_of(net)
                assert {p.task_id for p in peers} == {t.id for t in running}
                assert all(p.running for p in peers)
                for p in peers:
                    assert p.node_addr == f"192.168.0.{p.node_id[-1]}"
                    assert p.task_name.startswith("web.") and p.task_name.endswith(p.task_id)
                (ep,) = st.endpoints_of(net)
                assert ep.vip == "10.0.0.2" and ep.aliases == ["web-alias"]
            sim.check_views()

            # scale down: the peers go everywhere, a node left without tasks drops it
            await scale(sim.store, svc.id, 1)
            await sim.advance(SETTLE_S)
            (kept,) = sim.running(svc.id)
            sim.check_views()
            for node_id in sim.node_ids:
                st = sim.state(node_id)
                if node_id == kept.node_id:
                    assert [p.task_id for p in st.peers_of(net)] == [kept.id]
                else:
                    assert not st.networks and not st.peers and not st.endpoints

            # a dnsrr service: no VIP; its endpoint has none; it shares the network
            rr = await create_service(sim.store, spec("rr", 2, [net], mode="dnsrr"))
            await sim.advance(SETTLE_S)
            assert not sim.service(rr.id).endpoint.virtual_ips
            sim.check_views()
            for t in sim.running(rr.id):
                st = sim.state(t.node_id or "")
                eps = {e.service_name: e for e in st.endpoints_of(net)}
                assert eps["rr"].vip is None and eps["web"].vip == "10.0.0.2"
            all_addrs = addresses(live(sim, svc.id) + live(sim, rr.id), net)
            assert len(set(all_addrs)) == len(all_addrs) == 3

            # removal: endpoints leave, addresses come back, the network can go
            await remove_service(sim.store, svc.id)
            await remove_service(sim.store, rr.id)
            await sim.advance(SETTLE_S)
            sim.check_views()
            assert all(not sim.state(n).networks for n in sim.node_ids)
            assert sim.manager.allocator._book.count(net) == 1  # the gateway
            await netctl.remove(sim.store, net)

    asyncio.run(main())


def test_a_failed_task_leaves_running_promptly() -> None:
    """Tasks that exit are shown not running on every node of their network as soon as
    the store says so: at every 0.1 s step of the fake clock, no node's table shows
    running a task the store does not (the agent's report, the dispatcher's status
    batch and the route to the nodes all happen within the step)."""

    async def main() -> None:
        async with NetSim(2) as sim:
            net = await make_network(sim.store, "app")
            svc = await create_service(sim.store, spec("flaky", 2, [net], env=["EXIT=5:1"]))
            await sim.advance(2)
            first = {t.id for t in sim.running(svc.id)}
            assert len(first) == 2
            seen_exit = False
            for _ in range(60):  # they exit (code 1) 5 s after they started
                await sim.advance(0.1)
                states = {t.id: t for t in sim.tasks(svc.id)}
                for node_id in sim.node_ids:
                    for p in sim.state(node_id).peers_of(net):
                        t = states.get(p.task_id)
                        running = t is not None and t.state == TaskState.RUNNING
                        assert p.running == (
                            running and t is not None and t.desired == TaskState.RUNNING
                        )
                seen_exit = seen_exit or any(
                    states[i].state > TaskState.RUNNING for i in first if i in states
                )
            assert seen_exit
            sim.check_views()

    asyncio.run(main())


def test_changing_networks_moves_vips_and_rolls_tasks() -> None:
    async def main() -> None:
        async with NetSim(2) as sim:
            a = await make_network(sim.store, "a")
            b = await make_network(sim.store, "b")
            svc = await create_service(sim.store, spec("mover", 1, [a]))
            await sim.advance(SETTLE_S)
            (old,) = sim.running(svc.id)
            s = sim.service(svc.id)
            assert s.spec.task_template is not None
            tt = msgspec.structs.replace(
                s.spec.task_template, networks=[NetworkAttachmentConfig(target="b")]
            )
            await update_service(
                sim.store,
                svc.id,
                s.version.index,
                msgspec.structs.replace(s.spec, task_template=tt),
            )
            await sim.advance(SETTLE_S * 3)
            s = sim.service(svc.id)
            assert [v.network_id for v in s.endpoint.virtual_ips or []] == [b]
            (new,) = sim.running(svc.id)
            assert new.id != old.id
            assert [x.network.id for x in new.networks_attachments or []] == [b]
            assert sim.manager.allocator._book.count(a) == 1  # only the gateway left
            sim.check_views()

    asyncio.run(main())


def test_full_subnet_waits_then_proceeds() -> None:
    async def main() -> None:
        async with NetSim(1) as sim:
            net = await make_network(sim.store, "tiny", subnet="10.9.0.0/29")
            svc = await create_service(sim.store, spec("crowd", 6, [net]))
            await sim.advance(SETTLE_S)
            waiting = [t for t in sim.tasks(svc.id) if t.state == TaskState.NEW]
            assert len(sim.running(svc.id)) == 4 and len(waiting) == 2
            assert all(
                "no IP address available on network tiny" in t.status.message for t in waiting
            )
            await scale(sim.store, svc.id, 4)
            await sim.advance(SETTLE_S)
            live_tasks = live(sim, svc.id)
            assert len(live_tasks) == 4 and all(t.state == TaskState.RUNNING for t in live_tasks)
            # a task dies: its address is freed and the next one gets one
            await scale(sim.store, svc.id, 5)
            await sim.advance(SETTLE_S)
            assert len(sim.running(svc.id)) == 4
            await scale(sim.store, svc.id, 3)
            await sim.advance(SETTLE_S)
            await scale(sim.store, svc.id, 4)
            await sim.advance(SETTLE_S)
            assert len(sim.running(svc.id)) == 4
            addrs = addresses(live(sim, svc.id), net)
            assert len(set(addrs)) == len(addrs)

    asyncio.run(main())


def test_book_rebuilt_from_the_store_after_a_restart() -> None:
    async def main() -> None:
        backend = MemoryBackend()
        clock = FakeClock()
        store = Store(backend, clock)
        manager = Manager(store, clock)
        manager.start()
        net = await make_network(store, "keep")
        svc = await create_service(store, spec("keep", 3, [net]))
        await clock.advance(SETTLE_S)
        before = addresses([t for t in store.view().tasks() if t.state <= TaskState.RUNNING], net)
        assert len(set(before)) == 3
        await manager.stop()

        store = Store(backend, clock)
        manager = Manager(store, clock)
        manager.start()
        await scale(store, svc.id, 8)
        await clock.advance(SETTLE_S)
        tasks = [t for t in store.view().tasks() if t.state <= TaskState.RUNNING]
        after = addresses(tasks, net)
        s = store.view().get_service(svc.id)
        assert s is not None
        vips = [v.addr for v in s.endpoint.virtual_ips or []]
        assert len(after) == 8 and len(set(after) | set(vips)) == 9
        assert set(before) <= set(after)
        await manager.stop()

    asyncio.run(main())


def test_a_node_view_crosses_the_cluster_port_encoding() -> None:
    """What a remote agent gets: the full view through the session protocol's frames."""
    from shoal.types import session as msg

    async def main() -> None:
        async with NetSim(2) as sim:
            net = await make_network(sim.store, "app")
            await create_service(sim.store, spec("web", 2, [net]))
            await sim.advance(SETTLE_S)
            view = NetworkView.build(sim.store.view())
            for node_id in sim.node_ids:
                full = view.full(node_id)
                frame = msg.encode(
                    msg.AssignmentMsg(assignment=Assignment(full=True, network=full))
                )
                got = msg.decode(frame)
                assert isinstance(got, msg.AssignmentMsg)
                assert got.assignment.network == full
                assert full.networks and full.peers and full.endpoints
                assert full.data_path_port == 4789

    asyncio.run(main())


def test_deprecated_top_level_networks_and_global_task_names() -> None:
    from shoal.types.service import GlobalService

    async def main() -> None:
        async with NetSim(2) as sim:
            net = await make_network(sim.store, "old-style")
            old = ServiceSpec(
                name="legacy",
                mode=ServiceMode(global_=GlobalService()),
                task_template=TaskSpec(
                    container_spec=ContainerSpec(image="busybox", command=["run"])
                ),
                networks=[NetworkAttachmentConfig(target="old-style")],  # by name
            )
            svc = await create_service(sim.store, old)
            await sim.advance(SETTLE_S)
            s = sim.service(svc.id)
            assert s.spec.networks is None and s.spec.task_template is not None
            assert [c.target for c in s.spec.task_template.networks or []] == [net]
            running = sim.running(svc.id)
            assert len(running) == 2
            for t in running:
                names = {q.task_name for q in sim.state(t.node_id or "").peers_of(net)}
                assert f"legacy.{t.node_id}.{t.id}" in names
            sim.check_views()

    asyncio.run(main())


def test_a_vip_waits_for_a_freed_address() -> None:
    async def main() -> None:
        async with NetSim(1) as sim:
            net = await make_network(sim.store, "tiny", subnet="10.9.0.0/29")  # 5 hosts
            filler = await create_service(sim.store, spec("filler", 5, [net], mode="dnsrr"))
            await sim.advance(SETTLE_S)
            assert len(sim.running(filler.id)) == 5
            late = await create_service(sim.store, spec("late", 0, [net]))
            await sim.advance(SETTLE_S)
            assert not sim.service(late.id).endpoint.virtual_ips  # no address left
            assert sim.manager.allocator.statistics()["waiting_services"] == 1
            await scale(sim.store, filler.id, 4)
            await sim.advance(SETTLE_S)
            (vip,) = sim.service(late.id).endpoint.virtual_ips or []
            assert vip.network_id == net and vip.addr is not None
            assert vip.addr not in addresses(live(sim, filler.id), net)
            assert sim.manager.allocator.statistics()["waiting_services"] == 0

    asyncio.run(main())


def test_every_ready_node_is_told_ingress_and_the_published_ports() -> None:
    """The routing mesh answers on every node: each ready node holds the ingress
    network (tasks there or not), its peers, and each publishing service's endpoint
    with its ports; a node that goes down has it removed, and gets it back when ready."""

    async def main() -> None:
        async with NetSim(3) as sim:
            req = netctl.NetworkCreateRequest(name="ingress", driver="overlay", ingress=True)
            ingress = (await netctl.create(sim.store, req)).id
            await sim.advance(SETTLE_S)
            for n in sim.node_ids:
                assert ingress in sim.state(n).networks, n
            ports = [
                EndpointPortConfig(target_port=80, published_port=8080),
                EndpointPortConfig(target_port=81, published_port=8081, publish_mode="host"),
            ]
            web = spec("web", 1, [])
            web = msgspec.structs.replace(web, endpoint_spec=EndpointSpec(ports=ports))
            web_id = (await create_service(sim.store, web)).id
            hosted = spec("hosted", 1, [])
            hosted = msgspec.structs.replace(hosted, endpoint_spec=EndpointSpec(ports=[ports[1]]))
            hosted_id = (await create_service(sim.store, hosted)).id
            await sim.advance(SETTLE_S)
            sim.check_views()
            (task,) = sim.running(web_id)
            vip = next(
                v.addr
                for v in sim.service(web_id).endpoint.virtual_ips or ()
                if v.network_id == ingress
            )
            assert vip is not None
            for n in sim.node_ids:  # two nodes run nothing of web, yet know all of it
                state = sim.state(n)
                assert [p.task_id for p in state.peers_of(ingress)] == [task.id]
                eps = {e.service_id: e for e in state.endpoints_of(ingress)}
                assert eps[web_id].vip == vip.split("/")[0]
                assert eps[web_id].ports == [
                    PortMapping(protocol="tcp", target=80, published=8080, mode="ingress"),
                    PortMapping(protocol="tcp", target=81, published=8081, mode="host"),
                ]
                assert eps[hosted_id].vip is None
                assert [p.mode for p in eps[hosted_id].ports] == ["host"]
            # the node of a host-mode task finds its ports beside the task
            (h,) = sim.running(hosted_id)
            assert sim.store.view().task_meta(h.id).host_ports == (
                PortMapping(protocol="tcp", target=81, published=8081, mode="host"),
            )
            # a node that goes down is told to drop ingress; back, it gets it whole
            idle = next(n for n in sim.node_ids if n not in (task.node_id, h.node_id))
            await sim.kill_agent(idle)
            await sim.advance(30)
            node = sim.store.view().get_node(idle)
            assert node is not None and node.status.state == "down"
            sim.start_agent(idle)
            await sim.advance(SETTLE_S)
            sim.check_views()
            assert ingress in sim.state(idle).networks
            # the ports go: the endpoints lose them
            await remove_service(sim.store, hosted_id)
            await sim.advance(SETTLE_S)
            sim.check_views()
            for n in sim.node_ids:
                assert hosted_id not in {e.service_id for e in sim.state(n).endpoints_of(ingress)}

    asyncio.run(main())
