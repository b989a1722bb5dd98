"""Manager-side networking at scale, in one process (no daemon, no agents):

1. allocation: N NEW tasks of one service on one /16 overlay network, written in the
   store's batch size, until the allocator (its real loop) has given each an address and
   moved it to PENDING; tasks per second;
2. the dispatcher's network view: built from the store with those N tasks assigned
   over 100 nodes, then the cost of one batch of events in which one task stops running
   (the update every node on the network gets), and of a batch of 1,000 such changes.

There is no published SwarmKit figure for either, so no ratio: the figures stand alone.

    .venv/bin/python bench/networks.py [--tasks N]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import msgspec

from shoal.manager.allocator.allocator import Allocator
from shoal.manager.controlapi import networks as netctl
from shoal.manager.controlapi.services import create_service
from shoal.manager.dispatcher.networks import NetworkView
from shoal.manager.orchestrator.task import new_task, set_status
from shoal.manager.store import MemoryBackend, Store, Tx
from shoal.manager.store.memory import MAX_CHANGES_PER_BATCH
from shoal.types.node import Node, NodeSpec, NodeStatus
from shoal.types.service import (
    ContainerSpec,
    NetworkAttachmentConfig,
    ReplicatedService,
    ServiceMode,
    ServiceSpec,
    TaskSpec,
)
from shoal.types.task import TaskState

NODES = 100
SUBNET = "10.128.0.0/16"
CHANGES = 1_000


async def run(tasks: int) -> None:
    store = Store(MemoryBackend())
    allocator = Allocator(store)
    loop = asyncio.create_task(allocator.run())
    req = netctl.NetworkCreateRequest(
        name="bench",
        driver="overlay",
        ipam=netctl.IPAMRequest(config=[netctl.IPAMConfigRequest(subnet=SUBNET)]),
    )
    net = await netctl.create(store, req)

    def nodes(tx: Tx) -> None:
        for i in range(NODES):
            tx.create(
                Node(
                    id=f"node{i}",
                    spec=NodeSpec(role="worker", availability="active"),
                    status=NodeStatus(state="ready", addr=f"192.168.{i // 250}.{i % 250 + 1}"),
                )
            )

    await store.update(nodes)
    spec = ServiceSpec(
        name="bench",
        mode=ServiceMode(replicated=ReplicatedService(replicas=tasks)),
        task_template=TaskSpec(
            container_spec=ContainerSpec(image="busybox", args=["sleep", "1000"]),
            networks=[NetworkAttachmentConfig(target=net.id)],
        ),
    )
    service = await create_service(store, spec)
    meta = store.view().service_meta(service.id)
    pending = store.watch("task")
    started = time.perf_counter()
    for start in range(0, tasks, MAX_CHANGES_PER_BATCH):
        stop = min(start + MAX_CHANGES_PER_BATCH, tasks)

        def chunk(tx: Tx, start: int = start, stop: int = stop) -> None:
            for slot in range(start + 1, stop + 1):
                tx.create(*new_task(service, meta, slot))

        await store.update(chunk)
    done = 0
    while done < tasks:  # the allocator's own writes, as they commit
        for ev in await pending.__anext__():
            old = ev.old
            if ev.obj.state == TaskState.PENDING and old is not None and old.state == TaskState.NEW:
                done += 1
    pending.close()
    alloc_s = time.perf_counter() - started
    allocator.stop()
    await loop
    view = store.view()
    addrs = {
        a for t in view.tasks() for att in t.networks_attachments or () for a in att.addresses or ()
    }
    if len(addrs) != tasks:
        sys.exit(f"networks: {len(addrs)} distinct addresses for {tasks} tasks")
    print(
        f"networks: allocated {tasks} tasks on one {SUBNET} network in {alloc_s:.2f} s = "
        f"{tasks / alloc_s:,.0f} tasks/s"
    )

    # the tasks placed and running over NODES nodes, as the dispatcher's view sees them
    ids = [t.id for t in view.tasks()]
    for start in range(0, len(ids), MAX_CHANGES_PER_BATCH):

        def place(tx: Tx, part: list[str] = ids[start : start + MAX_CHANGES_PER_BATCH]) -> None:
            for i, task_id in enumerate(part):
                t = tx.get_task(task_id)
                assert t is not None
                t = msgspec.structs.replace(t, node_id=f"node{i % NODES}")
                tx.update(set_status(t, TaskState.RUNNING, "started"))

        await store.update(place)
    t0 = time.perf_counter()
    netview = NetworkView.build(store.view())
    build_s = time.perf_counter() - t0
    watcher = store.watch("task")

    async def stop_some(count: int) -> float:
        def write(tx: Tx) -> None:
            for task_id in ids[:count]:
                t = tx.get_task(task_id)
                assert t is not None
                tx.update(msgspec.structs.replace(t, desired_state=TaskState.SHUTDOWN.wire))

        await store.update(write)
        events = await watcher.__anext__()
        t0 = time.perf_counter()
        updates = netview.apply(events)
        spent = time.perf_counter() - t0
        assert len(updates) == NODES, len(updates)
        return spent

    one_s = await stop_some(1)
    many_s = await stop_some(CHANGES)
    print(
        f"networks: dispatcher view of {tasks} peers on {NODES} nodes built in {build_s:.2f} s; "
        f"one task leaving RUNNING: {one_s * 1000:.2f} ms for the updates of {NODES} nodes; "
        f"{CHANGES} at once: {many_s * 1000:.1f} ms"
    )
    watcher.close()
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=10_000)
    args = parser.parse_args()
    asyncio.run(run(args.tasks))


if __name__ == "__main__":
    main()
