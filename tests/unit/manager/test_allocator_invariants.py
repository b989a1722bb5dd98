"""The allocator under seeded random churn, with the real manager and agents on a fake
clock (sim.py): networks created (some with a small subnet), services created on random
networks in vip or dnsrr mode, scaled, moved between networks, removed; tasks failing.
After every step, once settled:

- on each network, the gateway, the services' VIPs and the live tasks' addresses are
  distinct and inside its subnet;
- a vip service has one VIP on each of its networks (unless that network is full: it
  waits for an address), a dnsrr service none;
- every task past NEW that is not dead has an address on exactly its networks;
- the allocator's address book is exactly what a rebuild from the store gives.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random

import msgspec
import pytest

from shoal.manager.allocator import networks as allocnets
from shoal.manager.allocator.ipam import AddressBook
from shoal.manager.controlapi import networks as netctl
from shoal.manager.controlapi.services import create_service, remove_service, update_service
from shoal.manager.store import ReadTx
from shoal.types.service import (
    ContainerSpec,
    EndpointSpec,
    NetworkAttachmentConfig,
    ReplicatedService,
    ServiceMode,
    ServiceSpec,
    TaskSpec,
)
from shoal.types.task import TaskState

from .sim import Sim

STEPS = 40
SETTLE_S = 2.0


def check(view: ReadTx, book: AddressBook) -> None:
    held: dict[str, list[str]] = {}
    subnets = {}
    for n in view.networks():
        assert n.subnet is not None and n.gateway is not None
        subnets[n.id] = ipaddress.ip_network(n.subnet)
        held[n.id] = [n.gateway]
    for s in view.services():
        nets = [c.target for c in netctl.service_networks(s.spec)]
        vips = s.endpoint.virtual_ips or []
        ep = s.spec.endpoint_spec
        if ep is not None and ep.mode == "dnsrr":
            assert not vips, s.spec.name
        else:
            have = {v.network_id or "" for v in vips}
            assert have <= set(nets), s.spec.name
            for missing in set(nets) - have:  # only for want of an address
                assert book.count(missing) == subnets[missing].num_addresses - 2, s.spec.name
        for v in vips:
            assert v.network_id is not None and v.addr is not None
            held[v.network_id].append(v.addr.split("/")[0])
    for t in view.tasks():
        if t.state == TaskState.NEW or allocnets.is_dead(t):
            continue
        want = sorted(c.target or "" for c in t.spec.networks or ())
        got = sorted(a.network.id for a in t.networks_attachments or ())
        assert got == want, t.id
        for a in t.networks_attachments or ():
            for addr in a.addresses or ():
                iface = ipaddress.ip_interface(addr)
                assert iface.network == subnets[a.network.id], addr
                held[a.network.id].append(str(iface.ip))
    for net, addrs in held.items():
        assert len(addrs) == len(set(addrs)), (net, sorted(addrs))
    fresh = allocnets.rebuild(view)
    mine = {k: dict(p.held) for k, p in book._pools.items()}
    theirs = {k: dict(p.held) for k, p in fresh._pools.items()}
    assert mine == theirs


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_addresses_stay_unique_and_the_book_true(seed: int) -> None:
    async def main() -> None:
        rng = random.Random(seed)
        async with Sim(3) as sim:
            nets: list[str] = []
            services: list[str] = []
            for step in range(STEPS):
                op = rng.random()
                if op < 0.15 or not nets:
                    subnet = f"10.{100 + step}.0.0/29" if rng.random() < 0.3 else None
                    req = netctl.NetworkCreateRequest(
                        name=f"net{step}",
                        driver="overlay",
                        ipam=netctl.IPAMRequest(
                            config=[netctl.IPAMConfigRequest(subnet=subnet)] if subnet else None
                        ),
                    )
                    nets.append((await netctl.create(sim.store, req)).id)
                elif op < 0.4 or not services:
                    chosen = rng.sample(nets, min(len(nets), rng.randint(1, 2)))
                    spec = ServiceSpec(
                        name=f"svc{step}",
                        mode=ServiceMode(replicated=ReplicatedService(replicas=rng.randint(1, 5))),
                        task_template=TaskSpec(
                            container_spec=ContainerSpec(
                                image="busybox",
                                command=["run"],
                                env=["EXIT=3:1"] if rng.random() < 0.2 else None,
                            ),
                            networks=[NetworkAttachmentConfig(target=n) for n in chosen],
                        ),
                        endpoint_spec=EndpointSpec(mode=rng.choice(["vip", "dnsrr"])),
                    )
                    services.append((await create_service(sim.store, spec)).id)
                elif op < 0.85:
                    sid = rng.choice(services)
                    s = sim.service(sid)
                    assert s.spec.task_template is not None
                    if rng.random() < 0.5:
                        mode = ServiceMode(replicated=ReplicatedService(replicas=rng.randint(0, 6)))
                        new = msgspec.structs.replace(s.spec, mode=mode)
                    else:
                        chosen = rng.sample(nets, min(len(nets), rng.randint(1, 2)))
                        tt = msgspec.structs.replace(
                            s.spec.task_template,
                            networks=[NetworkAttachmentConfig(target=n) for n in chosen],
                        )
                        new = msgspec.structs.replace(s.spec, task_template=tt)
                    await update_service(sim.store, sid, s.version.index, new)
                else:
                    sid = services.pop(rng.randrange(len(services)))
                    await remove_service(sim.store, sid)
                await sim.advance(SETTLE_S)
                check(sim.store.view(), sim.manager.allocator._book)

    asyncio.run(main())
