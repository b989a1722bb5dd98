"""What a Prometheus scrape of a manager costs with a huge store, and what it would cost
without the store's task-state index.

    .venv/bin/python bench/metrics_scrape.py [--tasks N] [--services N] [--scrapes N]

It fills an in-memory store (the real Store on a MemoryBackend) with N tasks spread
over the services, in every state, then times:

1. a scrape: the daemon's whole `/metrics` body (`Metrics.exposition()` with the
   manager's collector), the event loop stopped for its duration;
2. the walk over every task a collector without the index would make to count tasks
   by service and state (just the counting, not the exposition).

It prints both in milliseconds and their ratio. Nothing is written to disk.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter

from shoal.manager.metrics import ManagerCollector
from shoal.manager.store import MemoryBackend, Store, Tx
from shoal.metrics import Metrics
from shoal.types.meta import TaskMeta
from shoal.types.service import ReplicatedService, Service, ServiceMode, ServiceSpec
from shoal.types.task import Task, TaskState, TaskStatus

DEFAULT_TASKS = 200_000
DEFAULT_SERVICES = 50
DEFAULT_SCRAPES = 20
STATES = list(TaskState)


class _Manager:
    def __init__(self, store: Store) -> None:
        self.store = store

    def statistics(self) -> dict[str, dict[str, int]]:
        return {"dispatcher": {"sessions": 0}, "scheduler": {"pending": 0}}


async def fill(store: Store, tasks: int, services: int) -> None:
    def make_services(tx: Tx) -> None:
        for s in range(services):
            spec = ServiceSpec(
                name=f"svc{s}", mode=ServiceMode(replicated=ReplicatedService(replicas=1))
            )
            tx.create(Service(id=f"s{s}", spec=spec))

    await store.update(make_services)

    def make_task(tx: Tx, i: int) -> None:
        state = STATES[i % len(STATES)]
        tx.create(
            Task(
                id=f"t{i}",
                service_id=f"s{i % services}",
                status=TaskStatus(timestamp="", state=state.wire, message=""),
                desired_state=TaskState.RUNNING.wire,
            ),
            TaskMeta(service_name=f"svc{i % services}"),
        )

    await store.batch(range(tasks), make_task)


def walk(store: Store) -> dict[str, Counter[str]]:
    counts: dict[str, Counter[str]] = {}
    for t in store.view().tasks():
        counts.setdefault(t.service_id, Counter())[t.status.state] += 1
    return counts


def best_ms(fn: object, times: int) -> float:
    best = float("inf")
    for _ in range(times):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        best = min(best, time.perf_counter() - start)
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=DEFAULT_TASKS)
    parser.add_argument("--services", type=int, default=DEFAULT_SERVICES)
    parser.add_argument("--scrapes", type=int, default=DEFAULT_SCRAPES)
    args = parser.parse_args()

    store = Store(MemoryBackend())
    print(f"filling a store with {args.tasks} tasks...", file=sys.stderr)
    asyncio.run(fill(store, args.tasks, args.services))
    metrics = Metrics(process=True)
    metrics.register(ManagerCollector(lambda: _Manager(store)))
    size = len(metrics.exposition())
    scrape = best_ms(metrics.exposition, args.scrapes)
    walked = best_ms(lambda: walk(store), max(1, args.scrapes // 4))
    print(
        f"metrics scrape: {args.tasks} tasks in {args.services} services: "
        f"{scrape:.2f} ms per scrape ({size} bytes); a walk over the tasks alone "
        f"{walked:.1f} ms: ratio {walked / scrape:.0f}x"
    )


if __name__ == "__main__":
    main()
