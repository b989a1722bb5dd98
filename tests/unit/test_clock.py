"""The FakeClock tests drive every loop with: time moves only when told, timers fire in
order, and what a fired timer wakes runs before `advance` returns."""

from __future__ import annotations

import asyncio

import pytest

from shoal.clock import SYSTEM_CLOCK, FakeClock


def test_sleepers_wake_in_time_order_and_only_when_due() -> None:
    async def main() -> None:
        clock = FakeClock()
        woke: list[tuple[str, float]] = []
        start = clock.monotonic()

        async def sleeper(name: str, s: float) -> None:
            await clock.sleep(s)
            woke.append((name, clock.monotonic() - start))

        tasks = [asyncio.create_task(sleeper(n, s)) for n, s in (("c", 3), ("a", 1), ("b", 2))]
        await clock.advance(0.5)
        assert woke == []
        await clock.advance(2)
        assert woke == [("a", 1), ("b", 2)]
        await clock.advance(10)
        assert woke == [("a", 1), ("b", 2), ("c", 3)]
        assert clock.monotonic() - start == 12.5
        await asyncio.gather(*tasks)

    asyncio.run(main())


def test_a_timer_armed_by_a_fired_timer_fires_in_the_same_advance() -> None:
    async def main() -> None:
        clock = FakeClock()
        ticks: list[float] = []

        async def ticker() -> None:
            while True:
                await clock.sleep(1)
                ticks.append(clock.monotonic())

        task = asyncio.create_task(ticker())
        await clock.advance(3.5)
        assert len(ticks) == 3
        task.cancel()

    asyncio.run(main())


def test_call_later_cancel_and_wall_time() -> None:
    async def main() -> None:
        clock = FakeClock(wall_ns=10**18)
        fired: list[str] = []
        clock.call_later(1, lambda: fired.append("kept"))
        handle = clock.call_later(1, lambda: fired.append("cancelled"))
        handle.cancel()
        await clock.advance(1)
        assert fired == ["kept"]
        assert clock.time_ns() == 10**18 + 10**9
        assert clock.time_ns() == 10**18 + 10**9 + 1  # never the same twice
        assert clock.pending_timers() == 0

    asyncio.run(main())


def test_wait_for_times_out_on_the_fake_clock_and_keeps_the_result_otherwise() -> None:
    async def main() -> None:
        clock = FakeClock()
        event = asyncio.Event()
        waiter = asyncio.create_task(clock.wait_for(event.wait(), 5))
        await clock.advance(4.9)
        assert not waiter.done()
        await clock.advance(0.2)
        with pytest.raises(TimeoutError):
            await waiter
        queue: asyncio.Queue[int] = asyncio.Queue()
        getter = asyncio.create_task(clock.wait_for(queue.get(), 5))
        await clock.advance(1)
        queue.put_nowait(7)
        await clock.advance(0)
        assert getter.result() == 7
        assert clock.pending_timers() == 0

    asyncio.run(main())


def test_the_system_clock_times_out_without_losing_a_cancellation() -> None:
    async def main() -> None:
        with pytest.raises(TimeoutError):
            await SYSTEM_CLOCK.wait_for(asyncio.Event().wait(), 0)
        task = asyncio.create_task(SYSTEM_CLOCK.wait_for(asyncio.Event().wait(), 60))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
