"""Synchronous doors onto the async store, for tests that run outside an event loop:
each call runs to completion (the transaction durable and published) on a fresh loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

from shoal.manager.store import Store, Tx

T = TypeVar("T")


def commit(store: Store, fn: Callable[[Tx], T]) -> T:
    return asyncio.run(store.update(fn))


def commit_batch(store: Store, items: Iterable[T], fn: Callable[[Tx, T], None]) -> None:
    asyncio.run(store.batch(items, fn))


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)
