"""Helpers for the manager's background tasks."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

from shoal.log import get_logger
from shoal.manager.store import Event, Store, Tx

log = get_logger("shoal.manager")


def log_failure(task: asyncio.Task[object]) -> None:
    """Done-callback: a background task that died of an exception is logged, not lost."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("background task failed", task=task.get_name(), error=repr(exc))


async def reconcile_loop(
    store: Store,
    kinds: tuple[str, ...],
    sweep: Callable[[Tx], None],
    handle: Callable[[Tx, list[Event]], None],
    stopped: asyncio.Event,
) -> None:
    """The shape of a control loop that writes: one `sweep` transaction over everything
    (at start, also after a daemon restart), then one `handle` transaction per burst of
    events (all queued events at once: SwarmKit's batching, bounded by what is ready)."""
    watcher = store.watch(*kinds)
    try:
        store.update(sweep)
        while not stopped.is_set():
            events = await watcher.__anext__()
            events.extend(watcher.get_nowait_all())
            store.update(functools.partial(_apply, handle, events))
    finally:
        watcher.close()


def _apply(handle: Callable[[Tx, list[Event]], None], events: list[Event], tx: Tx) -> None:
    handle(tx, events)
