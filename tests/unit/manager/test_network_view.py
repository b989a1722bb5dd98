"""The dispatcher's incremental network view against one built from scratch: seeded
random changes of tasks (placed, moved, running, stopped, dead, removed), services (VIP,
dnsrr, aliases, removed) and node addresses, committed through a real store, their
events applied in batches of random sizes (several transactions in one batch, as the
route loop takes them); after every batch each node's table, kept from nothing but the
updates it was sent, equals what a fresh view tells it."""

from __future__ import annotations

import asyncio
import random

import msgspec
import pytest

from shoal.agent.network.state import NetworkState
from shoal.manager.dispatcher.networks import NetworkView
from shoal.manager.store import MemoryBackend, Store, Tx
from shoal.types.network import (
    Driver,
    IPAMConfig,
    IPAMOptions,
    Network,
    NetworkAttachment,
    NetworkSpec,
    PortMapping,
)
from shoal.types.node import Node, NodeSpec, NodeStatus
from shoal.types.service import (
    Endpoint,
    EndpointPortConfig,
    EndpointSpec,
    NetworkAttachmentConfig,
    Service,
    ServiceSpec,
    TaskSpec,
    VirtualIP,
)
from shoal.types.task import Task, TaskState, TaskStatus

NODES = ["n1", "n2", "n3", "n4"]
NETS = ["netA", "netB", "netC", "ingress"]
INGRESS = "ingress"
SERVICES = ["s1", "s2", "s3"]
STEPS = 300
STATES = [TaskState.ASSIGNED, TaskState.STARTING, TaskState.RUNNING, TaskState.COMPLETE]


def network(i: int, name: str) -> Network:
    return Network(
        id=name,
        spec=NetworkSpec(name=name, ingress=True if name == INGRESS else None),
        driver_state=Driver(
            name="overlay",
            options={"com.docker.network.driver.overlay.vxlanid_list": str(4096 + i)},
        ),
        ipam_options=IPAMOptions(
            configs=[IPAMConfig(subnet=f"10.0.{i}.0/24", gateway=f"10.0.{i}.1")]
        ),
    )


def ports(rng: random.Random, sid: str, dnsrr: bool) -> list[EndpointPortConfig]:
    """Published ports as the allocator leaves them: ingress ones numbered, host ones
    numbered or not (dnsrr: host mode only)."""
    base = 8000 + 10 * SERVICES.index(sid)
    out = []
    for i in range(rng.choice([0, 0, 1, 2])):
        mode = "host" if dnsrr or rng.random() < 0.4 else "ingress"
        published = base + i if mode == "ingress" or rng.random() < 0.7 else None
        out.append(
            EndpointPortConfig(
                protocol=rng.choice(["tcp", "udp"]),
                target_port=80 + i,
                published_port=published,
                publish_mode=mode,
            )
        )
    return out


def service(rng: random.Random, sid: str) -> Service:
    nets = rng.sample([n for n in NETS if n != INGRESS], rng.randint(0, 2))
    dnsrr = rng.random() < 0.3
    published = ports(rng, sid, dnsrr)
    if any(p.publish_mode == "ingress" for p in published):
        nets = [INGRESS, *nets]
    spec = ServiceSpec(
        name=sid,
        task_template=TaskSpec(
            networks=[
                NetworkAttachmentConfig(target=n, aliases=[f"{sid}-{rng.randint(0, 3)}"])
                for n in nets
            ]
        ),
        endpoint_spec=EndpointSpec(mode="dnsrr" if dnsrr else "vip", ports=published or None),
    )
    vips = (
        None
        if dnsrr
        else [
            VirtualIP(network_id=n, addr=f"10.0.{NETS.index(n)}.{200 + SERVICES.index(sid)}/24")
            for n in nets
        ]
    )
    return Service(
        id=sid, spec=spec, endpoint=Endpoint(ports=published or None, virtual_ips=vips or None)
    )


def task(rng: random.Random, tid: str, host: int) -> Task:
    nets = rng.sample(NETS, rng.randint(1, 2))
    state = rng.choice(STATES)
    return Task(
        id=tid,
        service_id=rng.choice(SERVICES),
        slot=rng.choice([1, 2, 0]),
        node_id=rng.choice(NODES),
        status=TaskStatus(timestamp="", state=state.wire, message=""),
        desired_state=rng.choice([TaskState.RUNNING, TaskState.SHUTDOWN]).wire,
        networks_attachments=[
            NetworkAttachment(
                network=network(NETS.index(n), n), addresses=[f"10.0.{NETS.index(n)}.{host}/24"]
            )
            for n in nets
        ],
    )


def check_ingress(store: Store, tables: dict[str, NetworkState]) -> None:
    """Independently of the view: every ready node is told the ingress network, every
    live task's address on it, and every publishing service's ports there."""
    view = store.view()
    live = {
        f"{INGRESS}/{t.id}"
        for t in view.tasks()
        if TaskState.ASSIGNED <= t.state <= TaskState.RUNNING
        and any(a.network.id == INGRESS for a in t.networks_attachments or ())
    }
    published = {
        f"{INGRESS}/{s.id}": [
            PortMapping(
                protocol=p.protocol or "tcp",
                target=p.target_port or 0,
                published=p.published_port or 0,
                mode=p.publish_mode or "ingress",
            )
            for p in s.endpoint.ports
        ]
        for s in view.services()
        if s.endpoint.ports
    }
    for node in view.nodes():
        table = tables[node.id]
        if node.status.state != "ready":
            continue
        assert INGRESS in table.networks, node.id
        assert {k for k, p in table.peers.items() if p.network_id == INGRESS} == live
        ingress_eps = {k: e for k, e in table.endpoints.items() if e.network_id == INGRESS}
        assert {k: e.ports for k, e in ingress_eps.items()} == published, node.id
        for e in ingress_eps.values():  # the ingress VIP when the service has one
            s = view.get_service(e.service_id)
            assert s is not None
            vip = next((v for v in s.endpoint.virtual_ips or () if v.network_id == INGRESS), None)
            assert e.vip == (vip.addr.split("/")[0] if vip and vip.addr else None)


@pytest.mark.parametrize("seed", range(1, 11))
def test_incremental_view_equals_a_fresh_one(seed: int) -> None:
    async def main() -> None:
        rng = random.Random(seed)
        store = Store(MemoryBackend())

        def setup(tx: Tx) -> None:
            for i, name in enumerate(NETS):
                tx.create(network(i, name))
            for i, node in enumerate(NODES):
                tx.create(
                    Node(
                        id=node,
                        spec=NodeSpec(role="worker", availability="active"),
                        status=NodeStatus(state="ready", addr=f"192.168.0.{i}"),
                    )
                )

        await store.update(setup)
        view = NetworkView.build(store.view())
        tables = {n: NetworkState() for n in NODES}
        for n in NODES:
            tables[n].apply(view.full(n))
        watcher = store.watch("task", "node", "service", "network")
        next_host = 10
        for _ in range(STEPS):
            for _ in range(rng.randint(1, 4)):  # transactions in this batch
                op = rng.random()
                current = {t.id: t for t in store.view().tasks()}

                def write(tx: Tx, op: float = op, current: dict[str, Task] = current) -> None:
                    nonlocal next_host
                    if op < 0.3 or not current:
                        next_host += 1
                        tx.create(task(rng, f"t{next_host}", next_host))
                    elif op < 0.6:
                        t = current[rng.choice(sorted(current))]
                        state = rng.choice(STATES)
                        tx.update(
                            msgspec.structs.replace(
                                t, status=msgspec.structs.replace(t.status, state=state.wire)
                            )
                        )
                    elif op < 0.7:
                        t = current[rng.choice(sorted(current))]
                        tx.update(msgspec.structs.replace(t, node_id=rng.choice(NODES)))
                    elif op < 0.8:
                        tx.delete("task", rng.choice(sorted(current)))
                    elif op < 0.95:
                        sid = rng.choice(SERVICES)
                        if rng.random() < 0.2 and tx.get_service(sid) is not None:
                            tx.delete("service", sid)
                        elif tx.get_service(sid) is None:
                            tx.create(service(rng, sid))
                        else:
                            old = tx.get_service(sid)
                            assert old is not None
                            new = service(rng, sid)
                            tx.update(
                                msgspec.structs.replace(old, spec=new.spec, endpoint=new.endpoint)
                            )
                    else:
                        node = tx.get_node(rng.choice(NODES))
                        assert node is not None
                        addr = f"192.168.1.{rng.randint(0, 250)}"
                        state = node.status.state
                        if rng.random() < 0.5:
                            state = "down" if state == "ready" else "ready"
                        else:
                            addr = node.status.addr or ""
                        status = msgspec.structs.replace(node.status, addr=addr, state=state)
                        tx.update(msgspec.structs.replace(node, status=status))

                await store.update(write)
            events = watcher.get_nowait_all()
            for node, update in view.apply(events).items():
                tables[node].apply(update)
            fresh = NetworkView.build(store.view())
            for n in NODES:
                want = NetworkState()
                want.apply(fresh.full(n))
                assert tables[n].networks.keys() == want.networks.keys(), n
                assert tables[n].peers == want.peers, n
                assert tables[n].endpoints == want.endpoints, n
            check_ingress(store, tables)
        watcher.close()
        store.close()

    asyncio.run(main())
