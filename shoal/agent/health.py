"""Health checks of a task the agent runs itself (the process runtime), with Docker's
semantics (daemon/health.go):

- `ContainerSpec.Healthcheck.Test`: ["NONE"] disables it (`--no-healthcheck`),
  ["CMD", argv...] runs argv, ["CMD-SHELL", cmd] runs `/bin/sh -c cmd`; an empty or
  missing test means no health check (the image's, which the process runtime has none of).
- Defaults for what is unset or zero: interval 30 s, timeout 30 s, retries 3, start
  period 0.
- The status starts as "starting". The first probe runs one interval after the start,
  then one interval after each probe ends. A probe that exits 0 makes the task
  "healthy" and resets the failing streak; one that fails (non-zero exit, or still
  running after the timeout: it is killed) adds to the streak, except during the start
  period while the status is still "starting"; `retries` consecutive failures make it
  "unhealthy".

Every wait goes through the clock: the timing is unit-tested on FakeClock. The probe
itself (how it runs in the task's namespaces) is the caller's (executor/process_task.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from shoal.clock import Clock
from shoal.log import get_logger
from shoal.types.service import HealthConfig

DEFAULT_INTERVAL_S = 30.0
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_RETRIES = 3
DEFAULT_START_PERIOD_S = 0.0

STARTING = "starting"
HEALTHY = "healthy"
UNHEALTHY = "unhealthy"

log = get_logger("shoal.agent.health")

# Runs the probe's argv; answers its exit code. Cancelled on timeout (it must then kill
# what it started).
Probe = Callable[[list[str]], Awaitable[int]]


@dataclass(frozen=True, slots=True)
class HealthSpec:
    argv: list[str]
    interval_s: float = DEFAULT_INTERVAL_S
    timeout_s: float = DEFAULT_TIMEOUT_S
    retries: int = DEFAULT_RETRIES
    start_period_s: float = DEFAULT_START_PERIOD_S


def health_spec(hc: HealthConfig | None) -> HealthSpec | None:
    """The check to run for a task's Healthcheck, or None for none."""
    if hc is None or not hc.test or hc.test[0] == "NONE":
        return None
    kind, rest = hc.test[0], list(hc.test[1:])
    if kind == "CMD":
        argv = rest
    elif kind == "CMD-SHELL":
        argv = ["/bin/sh", "-c", " ".join(rest)]
    else:
        return None
    if not argv:
        return None

    def secs(ns: int | None, default: float) -> float:
        return ns / 1e9 if ns else default

    return HealthSpec(
        argv=argv,
        interval_s=secs(hc.interval, DEFAULT_INTERVAL_S),
        timeout_s=secs(hc.timeout, DEFAULT_TIMEOUT_S),
        retries=hc.retries if hc.retries else DEFAULT_RETRIES,
        start_period_s=secs(hc.start_period, DEFAULT_START_PERIOD_S),
    )


class HealthMonitor:
    """Probes one task until stopped; `status` is Docker's Health.Status."""

    def __init__(
        self,
        spec: HealthSpec,
        probe: Probe,
        clock: Clock,
        on_change: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.spec = spec
        self._probe = probe
        self._clock = clock
        self._on_change = on_change
        self.status = STARTING
        self.failing_streak = 0
        self.probes = 0
        self._changed = asyncio.Event()
        self._started_at = clock.monotonic()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def wait_decided(self) -> str:
        """Until the task is healthy or unhealthy; answers which."""
        while self.status == STARTING:
            self._changed.clear()
            await self._changed.wait()
        return self.status

    async def wait_unhealthy(self) -> None:
        while self.status != UNHEALTHY:
            self._changed.clear()
            await self._changed.wait()

    async def _run(self) -> None:
        while True:
            await self._clock.sleep(self.spec.interval_s)
            ok = await self._probe_once()
            self._record(ok)

    async def _probe_once(self) -> bool:
        self.probes += 1
        try:
            code = await self._clock.wait_for(self._probe(self.spec.argv), self.spec.timeout_s)
        except TimeoutError:
            log.info("health check exceeded its timeout", timeout_s=self.spec.timeout_s)
            return False
        except OSError as e:
            log.info("health check could not run", error=str(e))
            return False
        return code == 0

    def _record(self, ok: bool) -> None:
        if ok:
            self.failing_streak = 0
            self._set(HEALTHY)
            return
        in_start_period = (
            self.status == STARTING
            and self._clock.monotonic() - self._started_at < self.spec.start_period_s
        )
        if in_start_period:
            return
        self.failing_streak += 1
        if self.failing_streak >= self.spec.retries:
            self._set(UNHEALTHY)

    def _set(self, status: str) -> None:
        if status != self.status:
            self.status = status
            self._changed.set()
            self._on_change(status)
