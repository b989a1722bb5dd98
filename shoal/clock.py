"""The one clock every loop reads and waits on.

Components never call `time.monotonic()`, `time.time_ns()` or `asyncio.sleep()`
themselves: they take a `Clock` (the system's by default), so that tests drive time with
a `FakeClock` and never sleep for real (STYLE.md point 5). Monotonic time measures
durations and deadlines; wall time (`time_ns`) is only for timestamps written to the
store and compared with other timestamps there.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

# FakeClock.settle() gives up after this many event-loop turns without going idle: a
# loop that never waits on anything is a bug the test should see, not a hang.
SETTLE_MAX_TURNS = 100_000
# Where a FakeClock's monotonic time starts (any value: only differences matter).
FAKE_MONOTONIC_START = 1000.0


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds from an arbitrary origin, never going back: for durations."""
        ...

    def time_ns(self) -> int:
        """Wall-clock nanoseconds since the epoch: for timestamps."""
        ...

    async def sleep(self, seconds: float) -> None: ...

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> TimerHandle:
        """Run `callback` (on the event loop) once `delay_s` has passed."""
        ...

    async def wait_for(self, aw: Awaitable[T], timeout_s: float) -> T:
        """`aw`'s result, or TimeoutError once `timeout_s` has passed (`aw` is then
        cancelled, as with asyncio.wait_for)."""
        ...


class SystemClock:
    """The real clock: time.monotonic / time.time_ns and asyncio's timers."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time_ns(self) -> int:
        return time.time_ns()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> TimerHandle:
        return asyncio.get_running_loop().call_later(max(0.0, delay_s), callback)

    async def wait_for(self, aw: Awaitable[T], timeout_s: float) -> T:
        # asyncio.timeout, not asyncio.wait_for: on 3.11 the latter can lose a
        # cancellation that races the inner awaitable's completion, and a loop being
        # stopped then never ends.
        async with asyncio.timeout(max(0.0, timeout_s)):
            return await aw


SYSTEM_CLOCK: Clock = SystemClock()


class _FakeTimer:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """Time that moves only when a test says so.

    `await advance(s)` moves time forward to each due timer in turn (earliest first,
    then in the order they were set), fires it and lets the event loop run until every
    task woken by it waits again (`settle()`), so a sleeper woken at t=2 can arm a timer
    for t=3 that the same advance still fires. Wall time starts at the real wall time
    when the clock is made, unless given."""

    def __init__(self, wall_ns: int | None = None) -> None:
        self._now = FAKE_MONOTONIC_START
        self._wall0 = time.time_ns() if wall_ns is None else wall_ns
        self._last_wall = self._wall0 - 1
        self._timers: list[tuple[float, int, _FakeTimer]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self._now

    def time_ns(self) -> int:
        """Wall time; each call a nanosecond later than the one before, as a real
        clock would be, so objects stamped between two timers still sort by creation."""
        wall = self._wall0 + round((self._now - FAKE_MONOTONIC_START) * 1e9)
        self._last_wall = max(wall, self._last_wall + 1)
        return self._last_wall

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> TimerHandle:
        timer = _FakeTimer(self._now + max(0.0, delay_s), callback)
        heapq.heappush(self._timers, (timer.when, next(self._seq), timer))
        return timer

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        timer = self.call_later(seconds, functools.partial(_resolve, fut))
        try:
            await fut
        finally:
            timer.cancel()

    async def wait_for(self, aw: Awaitable[T], timeout_s: float) -> T:
        inner: asyncio.Future[T] = asyncio.ensure_future(aw)
        expired: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        timer = self.call_later(timeout_s, functools.partial(_resolve, expired))
        try:
            both: set[asyncio.Future[Any]] = {inner, expired}
            await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            inner.cancel()
            raise
        finally:
            timer.cancel()
            expired.cancel()
        if inner.done():
            return inner.result()
        inner.cancel()
        await asyncio.gather(inner, return_exceptions=True)
        raise TimeoutError

    # driving time (tests) ------------------------------------------------------------------
    def pending_timers(self) -> int:
        return sum(1 for _, _, t in self._timers if not t.cancelled)

    def next_deadline(self) -> float | None:
        """When the earliest armed timer fires (monotonic), if any."""
        self._drop_cancelled()
        return self._timers[0][0] if self._timers else None

    def _drop_cancelled(self) -> None:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)

    async def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`, firing every timer that falls due, in order."""
        target = self._now + max(0.0, seconds)
        await settle()
        while True:
            self._drop_cancelled()
            if not self._timers or self._timers[0][0] > target:
                break
            when, _, timer = heapq.heappop(self._timers)
            self._now = max(self._now, when)
            timer.callback()
            await settle()
        self._now = target
        await settle()

    async def settle(self) -> None:
        await settle()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def settle() -> None:
    """Let the event loop run until nothing is ready to run: every task waits on a
    timer, an event or I/O. (Peeks at the loop's ready queue; a loop without one gets a
    fixed number of turns.)"""
    loop = asyncio.get_running_loop()
    ready = getattr(loop, "_ready", None)
    for _ in range(SETTLE_MAX_TURNS if ready is not None else 100):
        await asyncio.sleep(0)
        if ready is not None and not ready:
            return
    if ready is not None:
        raise RuntimeError("the event loop never went idle: something busy-loops")
