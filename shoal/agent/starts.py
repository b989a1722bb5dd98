"""The bound on task starts in flight on one node.

A hundred tasks assigned at once would otherwise all prepare and start together: under
the process runtime that is a hundred supervising shims starting on a few cores, none
finishing early, so the first task runs only when nearly all do. A task holds one of
`limit` slots from PREPARING until its start returned (RUNNING, or failed); waiters
get slots in arrival order (asyncio's semaphore is FIFO), so the first tasks assigned
run first and the rest follow at the pace the machine starts them.
"""

from __future__ import annotations

import asyncio
import os

# Starts in flight per CPU: a start is mostly CPU (a shim's interpreter starting up),
# with a little waiting between (spawn, the running record): two per CPU keep the
# CPUs busy without the starts sharing them thinly.
STARTS_PER_CPU = 2
# The environment variable that overrides the bound (0: unbounded; the benchmarks
# compare with and without).
MAX_STARTS_ENV = "SHOAL_MAX_CONCURRENT_STARTS"


def default_limit() -> int:
    """STARTS_PER_CPU per CPU this process may use, or MAX_STARTS_ENV when set."""
    raw = os.environ.get(MAX_STARTS_ENV)
    if raw is not None and raw.strip().isdigit():
        return int(raw)
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return STARTS_PER_CPU * max(1, cpus)


class StartSlots:
    """At most `limit` tasks between PREPARING and the end of their start at once
    (`limit` 0: no bound). Counts what it did, for the agent's statistics."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._sem = asyncio.Semaphore(limit) if limit > 0 else None
        self.in_flight = 0
        self.peak = 0
        self.waited = 0  # starts that found every slot taken

    async def acquire(self) -> None:
        if self._sem is not None:
            if self._sem.locked():
                self.waited += 1
            await self._sem.acquire()
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)

    def release(self) -> None:
        self.in_flight -= 1
        if self._sem is not None:
            self._sem.release()

    def statistics(self) -> dict[str, int]:
        return {
            "limit": self.limit,
            "in_flight": self.in_flight,
            "peak": self.peak,
            "waited": self.waited,
        }
