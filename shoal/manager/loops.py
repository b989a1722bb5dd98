"""Helpers for the manager's background tasks."""

from __future__ import annotations

import asyncio

from shoal.log import get_logger

log = get_logger("shoal.manager")


def log_failure(task: asyncio.Task[object]) -> None:
    """Done-callback: a background task that died of an exception is logged, not lost."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("background task failed", task=task.get_name(), error=repr(exc))
