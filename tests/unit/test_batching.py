"""Leading-edge batching (shoal/batching.py) on the FakeClock: the first batch after a
quiet spell goes at once, a burst still coalesces, and an urgent item goes ahead of
the interval once per interval."""

from __future__ import annotations

import asyncio

import pytest

from shoal.batching import Batcher, LeadingEdge
from shoal.clock import FakeClock

INTERVAL_S = 0.1


def test_a_leading_edge_lets_the_first_batch_go_at_once_and_spaces_the_next() -> None:
    async def main() -> None:
        clock = FakeClock()
        edge = LeadingEdge(clock, INTERVAL_S)
        assert edge.delay() == 0  # nothing sent yet
        edge.sent()
        assert edge.delay() == pytest.approx(INTERVAL_S)
        await clock.advance(0.03)
        assert edge.delay() == pytest.approx(0.07)
        await clock.advance(0.5)  # a quiet spell: the next goes at once again
        assert edge.delay() == 0

    asyncio.run(main())


class Consumer:
    """A loop that takes what was added each time the batcher lets it."""

    def __init__(self, batcher: Batcher, clock: FakeClock) -> None:
        self.batcher = batcher
        self.clock = clock
        self.items: list[str] = []
        self.batches: list[tuple[float, list[str]]] = []
        self.start = clock.monotonic()

    def add(self, item: str, urgent: bool = False) -> None:
        self.items.append(item)
        self.batcher.add(urgent)

    async def run(self) -> None:
        while True:
            await self.batcher.next()
            batch, self.items = self.items, []
            self.batches.append((round(self.clock.monotonic() - self.start, 6), batch))


def run_with_consumer(body) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        clock = FakeClock()
        consumer = Consumer(Batcher(clock, INTERVAL_S), clock)
        task = asyncio.create_task(consumer.run())
        try:
            await body(clock, consumer)
        finally:
            task.cancel()

    asyncio.run(main())


def test_the_first_item_after_quiet_goes_at_once_and_a_burst_behind_it_coalesces() -> None:
    async def body(clock: FakeClock, c: Consumer) -> None:
        c.add("a")
        await clock.settle()
        assert c.batches == [(0, ["a"])]  # no wait on an idle system
        for i in range(5):  # a burst right behind it: one batch, an interval after "a"
            await clock.advance(0.01)
            c.add(f"b{i}")
        await clock.advance(0.04)
        assert len(c.batches) == 1
        await clock.advance(0.02)
        assert c.batches[1] == (INTERVAL_S, ["b0", "b1", "b2", "b3", "b4"])
        await clock.advance(1)  # quiet again: the next goes at once
        c.add("c")
        await clock.settle()
        assert c.batches[2] == (1.11, ["c"])

    run_with_consumer(body)


def test_an_urgent_item_goes_ahead_of_the_interval_once_per_interval() -> None:
    async def body(clock: FakeClock, c: Consumer) -> None:
        c.add("preparing")
        await clock.settle()
        await clock.advance(0.02)
        c.add("running-1", urgent=True)  # the first task runs: reported at once
        await clock.settle()
        assert c.batches == [(0, ["preparing"]), (0.02, ["running-1"])]
        await clock.advance(0.01)
        c.add("running-2", urgent=True)  # the next waits for the interval
        c.add("starting-3")
        await clock.settle()
        assert len(c.batches) == 2
        await clock.advance(0.1)
        assert c.batches[2] == (0.12, ["running-2", "starting-3"])
        assert c.batcher.edge.immediate == 2 and c.batcher.edge.delayed == 1

    run_with_consumer(body)


def test_a_full_batch_goes_at_once() -> None:
    async def body(clock: FakeClock, c: Consumer) -> None:
        c.add("a")
        await clock.settle()
        c.add("b")
        c.batcher.now()
        await clock.settle()
        assert c.batches == [(0, ["a"]), (0, ["b"])]

    run_with_consumer(body)
