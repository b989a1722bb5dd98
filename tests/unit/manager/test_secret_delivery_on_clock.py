"""Secrets reach only the nodes whose tasks need them, and leave with the last such
task (the dispatcher's reference counting seen from the agents' side, on a fake clock).
"""

from __future__ import annotations

import asyncio

from shoal.manager.controlapi.secrets import create_secret
from shoal.manager.controlapi.services import create_service, remove_service
from shoal.types.secret import SecretSpec
from shoal.types.service import (
    ContainerSpec,
    Placement,
    ReplicatedService,
    SecretReference,
    ServiceMode,
    ServiceSpec,
    TaskSpec,
)

from .sim import Sim

SETTLE_S = 1.0
PAYLOAD = b"s3cr3t"


def test_only_the_task_node_receives_the_secret_and_drops_it() -> None:
    async def main() -> None:
        async with Sim(3) as sim:
            secret = await create_secret(sim.store, SecretSpec(name="s", data=PAYLOAD))
            ref = SecretReference(
                secret_id=secret.id,
                secret_name="s",
                file={"Name": "s", "UID": "0", "GID": "0", "Mode": 0o444},
            )
            spec = ServiceSpec(
                name="holder",
                mode=ServiceMode(replicated=ReplicatedService(replicas=1)),
                task_template=TaskSpec(
                    container_spec=ContainerSpec(image="busybox", command=["run"], secrets=[ref]),
                    placement=Placement(constraints=["node.id==node2"]),
                ),
            )
            service = await create_service(sim.store, spec)
            await sim.advance(SETTLE_S)
            assert [t.node_id for t in sim.running(service.id)] == ["node2"]
            counts = {n: a.dependency_counts() for n, a in sim.agents.items()}
            assert counts["node2"]["secrets_held"] == 1
            assert counts["node2"]["secrets_received"] == 1
            for other in ("node1", "node3"):
                assert counts[other]["secrets_received"] == 0
                assert sim.agents[other].executor.dependencies == {}
            (dep,) = sim.agents["node2"].executor.dependencies.values()
            assert dep.data == PAYLOAD

            await remove_service(sim.store, service.id)
            await sim.advance(SETTLE_S)
            assert sim.agents["node2"].executor.dependencies == {}
            assert sim.agents["node2"].dependency_counts()["secrets_held"] == 0

    asyncio.run(main())
