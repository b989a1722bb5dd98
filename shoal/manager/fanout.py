"""Fanning committed changes out to followers that must never hold the publisher up.

The event log (`GET /events`) and the visualizer's feed each publish to subscribers
that read at their own pace (a client on the far side of a socket). A `Subscribers` set
hands every item to each `Subscription`'s queue without waiting; a subscription that
holds `limit` items unread is closed (its queue dropped, `closed_reason` saying why)
and counted in `slow_closed`: its client starts again (a page reconnects to a
snapshot; `docker events` ends). A reader takes everything queued at once
(`next_batch`, or `async for batch in sub`), waiting only when nothing is. Both follow
the store the same way (`Follower`): watching from construction, watching again after
the store closed a watcher that fell behind (`fell_behind` says what that costs).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from typing import Generic, TypeVar

from shoal.log import get_logger
from shoal.manager.store import Event, Store, Watcher, WatcherClosed

T = TypeVar("T")

log = get_logger("shoal.manager.fanout")


class Subscription(Generic[T]):
    """One follower's bounded queue; `include` decides what it is offered (all)."""

    def __init__(self, subscribers: Subscribers[T]) -> None:
        self._subscribers = subscribers
        self._queue: deque[T] = deque()
        self._wake = asyncio.Event()
        self.closed_reason: str | None = None

    def include(self, item: T) -> bool:
        return True

    def offer(self, items: Iterable[T]) -> None:
        if self.closed_reason is not None:
            return
        wanted = [item for item in items if self.include(item)]
        if not wanted:
            return
        limit = self._subscribers.limit
        if len(self._queue) + len(wanted) > limit:
            self._subscribers.slow_closed += 1
            log.warning(
                "closing a slow subscriber", of=self._subscribers.what, queued=len(self._queue)
            )
            self.close(f"fell {limit} {self._subscribers.what} behind")
            return
        self._queue.extend(wanted)
        self._wake.set()

    def close(self, reason: str = "unsubscribed") -> None:
        if self.closed_reason is None:
            self.closed_reason = reason
            self._subscribers.discard(self)
        self._queue.clear()
        self._wake.set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def next_batch(self) -> list[T] | None:
        """Every item queued (waiting for one), or None once closed."""
        while not self._queue:
            if self.closed_reason is not None:
                return None
            self._wake.clear()
            await self._wake.wait()
        batch = list(self._queue)
        self._queue.clear()
        return batch

    def __aiter__(self) -> Subscription[T]:
        return self

    async def __anext__(self) -> list[T]:
        batch = await self.next_batch()
        if batch is None:
            raise StopAsyncIteration
        return batch


class Subscribers(Generic[T]):
    """The open subscriptions of one publisher: each holds at most `limit` unread
    items (`what` names them in the reason a slow one is closed with)."""

    def __init__(self, limit: int, what: str) -> None:
        self.limit = limit
        self.what = what
        self._open: set[Subscription[T]] = set()
        self.slow_closed = 0

    def __len__(self) -> int:
        return len(self._open)

    def add(self, sub: Subscription[T]) -> Subscription[T]:
        self._open.add(sub)
        return sub

    def discard(self, sub: Subscription[T]) -> None:
        self._open.discard(sub)

    def publish(self, items: list[T]) -> None:
        """Offer `items` to every subscription; never waits."""
        for sub in list(self._open):
            sub.offer(items)

    def close_all(self, reason: str) -> None:
        for sub in list(self._open):
            sub.close(reason)


class Follower(Generic[T]):
    """A publisher that follows the store's committed changes of `kinds` (watched from
    construction: nothing committed before `run()` starts is missed) and fans them out
    to `subscribers`. A subclass handles each transaction's events (`handle`) and what
    to do when the store closed its watcher for falling behind (`fell_behind`: changes
    were missed); the follower then watches again and goes on."""

    def __init__(
        self, store: Store, kinds: tuple[str, ...], subscribers: Subscribers[T], name: str
    ) -> None:
        self._store = store
        self._kinds = kinds
        self._watcher: Watcher | None = store.watch(*kinds)
        self._subscribers = subscribers
        self._name = name
        self._stopped = asyncio.Event()
        self.resyncs = 0

    def handle(self, events: list[Event]) -> None:
        raise NotImplementedError

    def fell_behind(self, reason: str) -> None:
        raise NotImplementedError

    async def run(self) -> None:
        while not self._stopped.is_set():
            watcher = self._watcher or self._store.watch(*self._kinds)
            self._watcher = None
            try:
                async for events in watcher:
                    self.handle(events)
            except WatcherClosed as e:
                self.resyncs += 1
                self.fell_behind(str(e))
            finally:
                watcher.close()

    def stop(self) -> None:
        self._stopped.set()
        if self._watcher is not None:
            self._watcher.close()
        self._subscribers.close_all(f"the {self._name} stopped")
