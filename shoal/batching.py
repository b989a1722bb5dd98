"""Leading-edge batching: the first item after a quiet spell goes at once, what follows
it closely goes together.

A batcher that always waits (a debounce, a report interval) puts that wait on the first
item of every burst: a task created on an idle cluster waits for each batcher on its
way to RUNNING. A `LeadingEdge` lets the first batch after `interval_s` of quiet go
without waiting; a batch that comes sooner waits until `interval_s` after the one before
it, and what arrives meanwhile joins it. A burst still coalesces (at most one batch per
interval, after the first), and an idle system answers at once. Time is the one clock's
(shoal/clock.py).
"""

from __future__ import annotations

import asyncio

from shoal.clock import Clock


class LeadingEdge:
    """When the next batch may go: `delay()` before it, `sent()` when it went."""

    def __init__(self, clock: Clock, interval_s: float) -> None:
        self.clock = clock
        self.interval_s = interval_s
        self._last: float | None = None
        self.immediate = 0  # batches that went at once (counted for the statistics)
        self.delayed = 0

    def delay(self) -> float:
        """Seconds to wait before the next batch: 0 after `interval_s` of quiet (or
        before the first batch), else what is left of `interval_s` since the last."""
        if self._last is None:
            return 0.0
        return max(0.0, self._last + self.interval_s - self.clock.monotonic())

    async def wait(self) -> None:
        """Wait `delay()` (not at all when it is 0: the batch goes at once)."""
        delay = self.delay()
        if delay > 0:
            self.delayed += 1
            await self.clock.sleep(delay)
        else:
            self.immediate += 1

    def sent(self) -> None:
        """A batch went now: the next waits until `interval_s` from now."""
        self._last = self.clock.monotonic()


class Batcher:
    """The waits of one loop that sends what accumulated (a status report, a write),
    leading-edge on two counts: the first batch after `interval_s` of quiet goes at
    once, and so does the first batch holding an urgent item (a task that came to run,
    or ended) after `interval_s` without one, even right behind another batch. What
    arrives closely behind either waits and goes together: at most two batches per
    `interval_s`. The loop calls `await next()` before taking its batch; producers call
    `add()` (or `now()`, when the batch is full and must go)."""

    def __init__(self, clock: Clock, interval_s: float) -> None:
        self.clock = clock
        self.edge = LeadingEdge(clock, interval_s)
        self.urgent_edge = LeadingEdge(clock, interval_s)
        self._ready = asyncio.Event()
        self._now = asyncio.Event()
        self._urgent = False

    def add(self, urgent: bool = False) -> None:
        """Something waits to go; `urgent` lets it go ahead of the interval (once)."""
        self._ready.set()
        if urgent:
            self._urgent = True
            if self.urgent_edge.delay() == 0:
                self._now.set()

    def now(self) -> None:
        """Let the next batch go at once (a full batch)."""
        self._ready.set()
        self._now.set()

    async def next(self) -> None:
        """Wait until something was added and the batch may go; the batch then counts
        as sent (the caller takes everything added so far)."""
        await self._ready.wait()
        delay = self.edge.delay()
        if delay > 0 and not self._now.is_set():
            self.edge.delayed += 1
            try:
                await self.clock.wait_for(self._now.wait(), delay)
            except TimeoutError:
                pass
        else:
            self.edge.immediate += 1
        self._ready.clear()
        self._now.clear()
        self.edge.sent()
        if self._urgent:
            self.urgent_edge.sent()
            self._urgent = False
