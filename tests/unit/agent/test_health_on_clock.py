"""Health checks' timing on a FakeClock (shoal/agent/health.py), with Docker's
semantics: first probe one interval after the start, `retries` consecutive failures to
turn unhealthy, failures in the start period not counted, a probe past its timeout
killed and counted as a failure; and the spec's defaults and forms."""

from __future__ import annotations

import asyncio

from shoal.agent.health import (
    HEALTHY,
    STARTING,
    UNHEALTHY,
    HealthMonitor,
    HealthSpec,
    health_spec,
)
from shoal.clock import FakeClock
from shoal.types.service import HealthConfig

S = 1_000_000_000


def test_spec_forms_and_defaults() -> None:
    assert health_spec(None) is None
    assert health_spec(HealthConfig(test=["NONE"])) is None
    assert health_spec(HealthConfig(test=[])) is None
    shell = health_spec(HealthConfig(test=["CMD-SHELL", "curl -f localhost"]))
    assert shell == HealthSpec(argv=["/bin/sh", "-c", "curl -f localhost"])
    assert (shell.interval_s, shell.timeout_s, shell.retries, shell.start_period_s) == (
        30.0,
        30.0,
        3,
        0.0,
    )
    cmd = health_spec(
        HealthConfig(
            test=["CMD", "true", "x"], interval=2 * S, timeout=S, retries=5, start_period=10 * S
        )
    )
    assert cmd == HealthSpec(
        argv=["true", "x"], interval_s=2.0, timeout_s=1.0, retries=5, start_period_s=10.0
    )


class Script:
    """A probe answering exit codes from a list (the last one repeats), recording when
    it ran; `hang` makes it never answer (until cancelled)."""

    def __init__(self, clock: FakeClock, codes: list[int], hang: bool = False) -> None:
        self.clock = clock
        self.codes = codes
        self.hang = hang
        self.times: list[float] = []
        self.cancelled = 0

    async def __call__(self, argv: list[str]) -> int:
        self.times.append(self.clock.monotonic())
        if self.hang:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return self.codes.pop(0) if len(self.codes) > 1 else self.codes[0]


def run(coro_fn) -> None:  # type: ignore[no-untyped-def]
    asyncio.run(coro_fn())


def test_first_probe_after_one_interval_then_healthy() -> None:
    async def main() -> None:
        clock = FakeClock()
        probe = Script(clock, [0])
        seen: list[str] = []
        m = HealthMonitor(HealthSpec(argv=["x"], interval_s=5.0), probe, clock, seen.append)
        t0 = clock.monotonic()
        m.start()
        await clock.advance(4.9)
        assert probe.times == [] and m.status == STARTING
        await clock.advance(0.1)
        assert probe.times == [t0 + 5.0]
        assert m.status == HEALTHY and seen == [HEALTHY]
        assert await m.wait_decided() == HEALTHY
        await clock.advance(10.0)
        assert probe.times == [t0 + 5.0, t0 + 10.0, t0 + 15.0]
        await m.stop()

    run(main)


def test_unhealthy_after_retries_consecutive_failures_only() -> None:
    async def main() -> None:
        clock = FakeClock()
        # fail, fail, ok (streak reset), fail, fail, fail -> unhealthy at the 6th probe
        probe = Script(clock, [1, 1, 0, 1, 1, 1])
        m = HealthMonitor(HealthSpec(argv=["x"], interval_s=1.0, retries=3), probe, clock)
        m.start()
        decided = asyncio.ensure_future(m.wait_unhealthy())
        await clock.advance(5.0)
        assert len(probe.times) == 5 and m.status == HEALTHY and m.failing_streak == 2
        assert not decided.done()
        await clock.advance(1.0)
        assert m.status == UNHEALTHY and decided.done()
        await m.stop()

    run(main)


def test_failures_in_start_period_do_not_count() -> None:
    async def main() -> None:
        clock = FakeClock()
        probe = Script(clock, [1])
        m = HealthMonitor(
            HealthSpec(argv=["x"], interval_s=1.0, retries=2, start_period_s=4.5), probe, clock
        )
        m.start()
        await clock.advance(4.0)  # probes at 1..4: inside the start period
        assert len(probe.times) == 4 and m.failing_streak == 0 and m.status == STARTING
        await clock.advance(1.0)  # at 5: counts
        assert m.failing_streak == 1 and m.status == STARTING
        await clock.advance(1.0)
        assert m.status == UNHEALTHY
        await m.stop()

    run(main)


def test_probe_past_timeout_is_cancelled_and_fails() -> None:
    async def main() -> None:
        clock = FakeClock()
        probe = Script(clock, [0], hang=True)
        m = HealthMonitor(
            HealthSpec(argv=["x"], interval_s=2.0, timeout_s=1.0, retries=1), probe, clock
        )
        m.start()
        await clock.advance(2.5)
        assert len(probe.times) == 1 and m.status == STARTING and probe.cancelled == 0
        await clock.advance(0.5)  # the timeout: killed, a failure, retries 1
        assert probe.cancelled == 1 and m.status == UNHEALTHY
        # the next probe starts one interval after that one ended
        await clock.advance(1.9)
        assert len(probe.times) == 1
        await clock.advance(0.1)
        assert len(probe.times) == 2
        await m.stop()

    run(main)
