"""Waiting in the agent's unit tests without sleeping: for a coroutine to reach the point
where it blocks, and for a process to exit (through a pidfd, which the kernel makes
readable when the process has exited)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import time
from collections.abc import Callable, Collection
from typing import Any

# Bound on every wait here, so a bug fails a test instead of hanging it.
WAIT_S = 10.0


def suspended_in(task: asyncio.Future[Any], fn: Callable[..., Any]) -> bool:
    """True while `task` is suspended inside a call of the coroutine function `fn`: its
    chain of awaits (coroutine by coroutine, `cr_await`) passes through `fn`'s code."""
    code = getattr(fn, "__code__", None)
    get_coro = getattr(task, "get_coro", None)
    awaited: Any = get_coro() if get_coro is not None else None
    while awaited is not None:
        if getattr(awaited, "cr_code", None) is code:
            return True
        awaited = getattr(awaited, "cr_await", None)
    return False


async def until(condition: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    """Let the event loop run (zero sleeps: nothing is waited for by the clock) until
    `condition()` holds; TimeoutError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not so within {timeout_s:g}s: {condition}")
        await asyncio.sleep(0)


def _pidfd(pid: int) -> int | None:
    """A pidfd of `pid`, None when there is no such process any more."""
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None


async def exited(pid: int, timeout_s: float = WAIT_S) -> None:
    """Return once process `pid` has exited (a zombie has); TimeoutError after
    `timeout_s`. It need not be a child of ours."""
    pidfd = _pidfd(pid)
    if pidfd is None:
        return
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(pidfd, readable)
    try:
        async with asyncio.timeout(timeout_s):
            await done
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


def all_exited(pidfds: Collection[int], timeout_s: float = WAIT_S) -> bool:
    """Block until every process of `pidfds` has exited; False if `timeout_s` passed
    first. Closes the pidfds."""
    try:
        poller = select.poll()
        for fd in pidfds:
            poller.register(fd, select.POLLIN)
        left = set(pidfds)
        deadline = time.monotonic() + timeout_s
        while left:
            remaining_ms = (deadline - time.monotonic()) * 1000
            if remaining_ms <= 0:
                return False
            for fd, _ in poller.poll(remaining_ms):
                poller.unregister(fd)
                left.discard(fd)
        return True
    finally:
        for fd in pidfds:
            with contextlib.suppress(OSError):
                os.close(fd)


def open_pidfds(pids: Collection[int]) -> list[int]:
    """pidfds of those of `pids` that still exist."""
    return [fd for fd in map(_pidfd, pids) if fd is not None]
