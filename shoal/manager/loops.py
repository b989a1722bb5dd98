"""Helpers for the manager's background tasks."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.log import get_logger
from shoal.manager.store import Event, Store, Tx, Watcher, WatcherClosed

# A loop whose rounds fail waits before it resyncs: doubling, within these bounds.
RETRY_MIN_S = 0.1
RETRY_MAX_S = 10.0

# The most events one round of a reconcile loop takes into its transaction: a burst
# larger than this (a huge service being built) is handled over several rounds, each a
# bounded transaction with the event loop free between them. (1,000 before: a request
# waits for one round of every busy loop at each of its turns of the event loop; at
# 500, with the writes' bounds halved too, `GET /services` while 30k tasks converge
# went from 21-24 ms to 8 ms at p50; docs/sim.md.)
MAX_EVENTS_PER_ROUND = 500

log = get_logger("shoal.manager")


def log_failure(task: asyncio.Task[object]) -> None:
    """Done-callback: a background task that died of an exception is logged, not lost."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("background task failed", task=task.get_name(), error=repr(exc))


@dataclass(slots=True)
class LoopStats:
    """What a supervised loop counts, for its `statistics()`."""

    rounds: int = 0
    failures: int = 0
    resyncs: int = 0
    # Transactions still queued behind the round being handled (reconcile_loop sets it
    # before each round): a loop that makes work for itself (a build in chunks) makes
    # the next chunk only once it has caught up, so no watcher's queue keeps growing.
    backlog: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"rounds": self.rounds, "failures": self.failures, "resyncs": self.resyncs}


async def reconcile_loop(
    store: Store,
    kinds: tuple[str, ...],
    sweep: Callable[[Tx], None],
    handle: Callable[[Tx, list[Event]], None],
    stopped: asyncio.Event,
    name: str = "loop",
    stats: LoopStats | None = None,
    after: Callable[[], Awaitable[None]] | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> None:
    """The shape of a control loop that writes: one `sweep` transaction over everything
    (at start, after a daemon restart, after a failure, after its watcher fell behind),
    then one `handle` transaction per burst of events (the queued events at once:
    SwarmKit's batching, bounded by what is ready and by MAX_EVENTS_PER_ROUND). `after` runs after each commit: the
    effects of what was committed (timers, updaters) start there, never inside a
    transaction.

    A round that raises is logged with the loop's name and counted; the loop then
    resyncs from a fresh sweep, backing off (doubling up to RETRY_MAX_S) while rounds
    keep failing."""
    stats = stats if stats is not None else LoopStats()
    backoff = 0.0
    while not stopped.is_set():
        watcher = store.watch(*kinds)
        try:
            await store.update(sweep)
            if after is not None:
                await after()
            backoff = 0.0
            while not stopped.is_set():
                events = await watcher.__anext__()
                events.extend(watcher.get_nowait_all(MAX_EVENTS_PER_ROUND - len(events)))
                stats.backlog = watcher.queue.qsize()
                await store.update(functools.partial(_apply, handle, events))
                if after is not None:
                    await after()
                stats.rounds += 1
        except WatcherClosed as e:
            stats.resyncs += 1
            log.warning("loop resyncs", loop=name, reason=str(e))
        except Exception:
            stats.failures += 1
            log.exception("loop round failed; resyncing", loop=name)
            backoff = next_backoff(backoff)
            await clock.sleep(backoff)
        finally:
            watcher.close()


def next_backoff(backoff: float) -> float:
    """The wait after one more failed round: doubling, within RETRY_MIN_S..RETRY_MAX_S."""
    return min(RETRY_MAX_S, max(RETRY_MIN_S, backoff * 2))


async def supervise(
    name: str,
    incarnation: Callable[[], Awaitable[None]],
    stopped: asyncio.Event,
    stats: LoopStats,
    clock: Clock = SYSTEM_CLOCK,
) -> None:
    """Run a loop that keeps its own view (the scheduler's nodes, the reaper's dirty
    slots, ...) so that one bad round never ends it. `incarnation` watches the store,
    loads its view and then handles events until `stopped`, counting each round in
    `stats.rounds`; when it raises, the failure is logged with `name` and counted, and a
    fresh incarnation (a new watcher, a new view: a resync) starts after a backoff that
    doubles while incarnations fail without completing a round. A watcher closed for
    falling behind is a resync, not a failure."""
    backoff = 0.0
    while not stopped.is_set():
        rounds = stats.rounds
        try:
            await incarnation()
        except WatcherClosed as e:
            stats.resyncs += 1
            log.warning("loop resyncs", loop=name, reason=str(e))
        except Exception:
            stats.failures += 1
            log.exception("loop round failed; resyncing", loop=name)
            backoff = 0.0 if stats.rounds > rounds else backoff
            backoff = next_backoff(backoff)
            await clock.sleep(backoff)


def _apply(handle: Callable[[Tx, list[Event]], None], events: list[Event], tx: Tx) -> None:
    handle(tx, events)


async def take_burst(
    watcher: Watcher,
    apply: Callable[[list[Event]], None],
    clock: Clock,
    quiet_s: float,
    max_s: float,
    full: Callable[[], bool] | None = None,
    limit: int | None = MAX_EVENTS_PER_ROUND,
) -> None:
    """After a first event was applied: keep applying what arrives until `quiet_s`
    passes with nothing new, `max_s` has passed since the first, or `full()` says the
    batch is big enough (a size and a time bound; STYLE.md point 8). `limit`: the most
    events one apply takes (whole transactions; the rest stay queued for the next,
    which comes a turn of the event loop later: Watcher.__anext__)."""
    first = clock.monotonic()
    while full is None or not full():
        left = max_s - (clock.monotonic() - first)
        if left <= 0:
            return
        try:
            more = await clock.wait_for(watcher.__anext__(), min(quiet_s, left))
        except TimeoutError:
            return
        more.extend(watcher.get_nowait_all(limit))
        apply(more)
