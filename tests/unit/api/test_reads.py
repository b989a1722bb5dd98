"""What a read route waits for (shoal.api.server.reads): the service list waits for
the writes to what it shows only, so it answers while a huge service's task writes are
being committed; a route that shows no store state waits for nothing."""

from __future__ import annotations

import asyncio

import msgspec

from shoal.api import nodes, services, system
from shoal.api.server import _READS_ATTR, SETTLES_ITSELF
from shoal.manager.store import MemoryBackend, Store
from shoal.types.service import GlobalService, ServiceMode
from shoal.types.task import TaskState

from ..manager.test_store_contract import service, task


def test_routes_name_what_they_show() -> None:
    assert getattr(system.ping, _READS_ATTR) == ()
    assert getattr(services.inspect, _READS_ATTR) == ("service",)
    assert getattr(services.list_services, _READS_ATTR) == (SETTLES_ITSELF,)
    # the node list and `docker info` (which `docker node ls` calls) wait for node and
    # cluster writes only, not behind the task writes of a converging service
    assert getattr(nodes.list_nodes, _READS_ATTR) == ("node",)
    assert getattr(nodes.inspect, _READS_ATTR) == ("node",)
    assert getattr(system.info, _READS_ATTR) == ("node", "cluster")


def test_the_service_list_waits_for_tasks_only_when_a_mode_counts_them() -> None:
    async def main() -> None:
        backend = MemoryBackend()
        store = Store(backend)
        svc = service("web")
        await store.update(lambda tx: tx.create(svc))
        assert services._shown(store.view(), False) == {"service"}
        assert services._shown(store.view(), True) == {"service", "node"}
        # a task write in flight does not hold the list back, not even one that starts
        # a task: the list counts what is durable, so it shows the task once committed
        backend.hold()
        write = asyncio.create_task(
            store.update(lambda tx: tx.create(task("t1", svc, 1, TaskState.RUNNING)))
        )
        await asyncio.sleep(0)
        await asyncio.wait_for(store.settled(services._shown(store.view(), True)), 5)
        assert services.service_status(store.view(), svc, set()).running_tasks == 0
        backend.release()
        await write
        assert services.service_status(store.view(), svc, set()).running_tasks == 1
        assert services.service_status(store.view(), svc, {"n1"}).running_tasks == 0
        glob = msgspec.structs.replace(
            service("all"),
            spec=msgspec.structs.replace(
                service("all").spec, mode=ServiceMode(global_=GlobalService())
            ),
        )
        await store.update(lambda tx: tx.create(glob))
        assert "task" in services._shown(store.view(), True)

    asyncio.run(main())
