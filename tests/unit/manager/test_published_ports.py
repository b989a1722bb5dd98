"""Published ports in the manager, on the real manager and agents on a fake clock
(sim.py): the allocator's numbers from 30000–32767 (distinct, kept across updates, never
one another service holds), the control API's refusal of a port in use (SwarmKit's
words, the store unchanged), and host-mode tasks kept apart by the scheduler (the one
that fits nowhere waits with Swarm's message; the running ones report PortStatus)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import msgspec
import pytest

from shoal.errors import InvalidArgument
from shoal.manager.allocator.allocator import PUBLISHED_PORT_RANGE
from shoal.manager.controlapi.services import create_service, remove_service, update_service
from shoal.types.service import (
    ContainerSpec,
    EndpointPortConfig,
    EndpointSpec,
    ReplicatedService,
    ServiceMode,
    ServiceSpec,
    TaskSpec,
)
from shoal.types.task import TaskState

from .sim import Sim

SETTLE_S = 2.0


def spec(name: str, *ports: EndpointPortConfig, replicas: int = 1) -> ServiceSpec:
    return ServiceSpec(
        name=name,
        mode=ServiceMode(replicated=ReplicatedService(replicas=replicas)),
        task_template=TaskSpec(container_spec=ContainerSpec(image="busybox", command=["run"])),
        endpoint_spec=EndpointSpec(ports=list(ports)),
    )


def port(
    target: int, published: int | None = None, mode: str | None = None, proto: str | None = None
) -> EndpointPortConfig:
    return EndpointPortConfig(
        target_port=target, published_port=published, publish_mode=mode, protocol=proto
    )


def in_sim(nodes: int, body: Callable[[Sim], Awaitable[None]]) -> None:
    async def main() -> None:
        async with Sim(nodes) as sim:
            await body(sim)

    asyncio.run(main())


def published(sim: Sim, service_id: str) -> list[int | None]:
    return [p.published_port for p in sim.service(service_id).endpoint.ports or ()]


def test_ports_without_a_number_get_distinct_ones_from_the_range() -> None:
    async def body(sim: Sim) -> None:
        lo, hi = PUBLISHED_PORT_RANGE
        a = (await create_service(sim.store, spec("a", port(80), port(81), port(82, 8082)))).id
        # a number of the range asked for is skipped by the allocator
        b = (await create_service(sim.store, spec("b", port(80, lo + 2), port(81)))).id
        await sim.advance(SETTLE_S)
        pa, pb = published(sim, a), published(sim, b)
        assert pa == [lo, lo + 1, 8082]
        assert pb == [lo + 2, lo + 3]
        ports = sim.service(a).endpoint.ports or []
        assert [(p.protocol, p.publish_mode) for p in ports] == [("tcp", "ingress")] * 3
        # an update that keeps the ports keeps their numbers
        s = sim.service(a)
        new = msgspec.structs.replace(s.spec, labels={"x": "1"})
        await update_service(sim.store, a, s.version.index, new)
        await sim.advance(SETTLE_S)
        assert published(sim, a) == pa
        # a port added before one it keeps gets another number
        s = sim.service(b)
        new = msgspec.structs.replace(
            s.spec, endpoint_spec=EndpointSpec(ports=[port(80, lo + 2), port(82), port(81)])
        )
        await update_service(sim.store, b, s.version.index, new)
        await sim.advance(SETTLE_S)
        assert published(sim, b) == [lo + 2, lo + 4, lo + 3]
        # a host-mode port without a number stays without one (its node picks it)
        c = (await create_service(sim.store, spec("c", port(80, mode="host")))).id
        await sim.advance(SETTLE_S)
        assert published(sim, c) == [None]
        await remove_service(sim.store, a)
        await sim.advance(SETTLE_S)
        d = (await create_service(sim.store, spec("d", port(80)))).id
        await sim.advance(SETTLE_S)
        # a removed service's numbers are free again, but given serially (SwarmKit's
        # dynamic port space): the next after the last one given, not one just freed
        assert published(sim, d) == [lo + 5]
        # at the end of the range it wraps around to the first free one
        sim.manager.allocator._port_cursor["tcp"] = hi
        e = (await create_service(sim.store, spec("e", port(80)))).id
        await sim.advance(SETTLE_S)
        assert published(sim, e) == [lo]

    in_sim(1, body)


@pytest.mark.parametrize(
    ("theirs", "mine", "how"),
    [
        (port(80, 8080), port(90, 8080), "an ingress port"),
        (port(80, 8080), port(90, 8080, mode="host"), "an ingress port"),
        (port(80, 8080, mode="host"), port(90, 8080), "a host-published port"),
    ],
)
def test_a_port_in_use_is_refused_and_nothing_changes(
    theirs: EndpointPortConfig, mine: EndpointPortConfig, how: str
) -> None:
    async def body(sim: Sim) -> None:
        a = await create_service(sim.store, spec("a", theirs))
        await sim.advance(SETTLE_S)
        index = sim.store.index
        want = (
            "rpc error: code = InvalidArgument desc = port '8080' is already in use by "
            f"service 'a' ({a.id}) as {how}"
        )
        with pytest.raises(InvalidArgument) as e:
            await create_service(sim.store, spec("b", mine))
        assert str(e.value) == want
        c = await create_service(sim.store, spec("c"))
        await sim.advance(SETTLE_S)
        before = sim.service(c.id)
        index = sim.store.index
        with pytest.raises(InvalidArgument) as e:
            new = msgspec.structs.replace(before.spec, endpoint_spec=EndpointSpec(ports=[mine]))
            await update_service(sim.store, c.id, before.version.index, new)
        assert str(e.value) == want
        assert sim.store.index == index and sim.service(c.id) == before
        # another protocol is another port
        other = msgspec.structs.replace(mine, protocol="udp")
        await create_service(sim.store, spec("b", other))

    in_sim(1, body)


def test_an_auto_assigned_port_is_in_use_too() -> None:
    async def body(sim: Sim) -> None:
        a = (await create_service(sim.store, spec("a", port(80)))).id
        await sim.advance(SETTLE_S)
        (taken,) = published(sim, a)
        assert taken is not None
        with pytest.raises(InvalidArgument, match=f"port '{taken}' is already in use"):
            await create_service(sim.store, spec("b", port(80, taken)))

    in_sim(1, body)


def test_two_host_mode_services_may_share_a_port_but_not_a_node() -> None:
    async def body(sim: Sim) -> None:
        web = (await create_service(sim.store, spec("w", port(80, 8081, "host"), replicas=3))).id
        await sim.advance(SETTLE_S)
        running = sim.running(web)
        assert len(running) == 2 and {t.node_id for t in running} == set(sim.node_ids)
        (waiting,) = [t for t in sim.tasks(web) if t.state == TaskState.PENDING]
        assert waiting.status.err == "no suitable node (host-mode port already in use on 2 nodes)"
        for t in running:
            assert t.status.port_status is not None
            assert t.status.port_status.ports == [
                {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8081, "PublishMode": "host"}
            ]
        # another service on the same host port is accepted, and waits for a node
        other = (await create_service(sim.store, spec("o", port(90, 8081, "host")))).id
        await sim.advance(SETTLE_S)
        (t,) = sim.tasks(other)
        assert t.state == TaskState.PENDING
        # scale the first to one: a node is free, the other service's task runs there
        s = sim.service(web)
        mode = ServiceMode(replicated=ReplicatedService(replicas=1))
        await update_service(
            sim.store, web, s.version.index, msgspec.structs.replace(s.spec, mode=mode)
        )
        await sim.advance(SETTLE_S)
        (w,) = sim.running(web)
        (o,) = sim.running(other)
        assert w.node_id != o.node_id

    in_sim(2, body)
