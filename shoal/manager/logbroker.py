"""The log broker: gathers the logs of a service's (or one task's) tasks from the
nodes that ran them, merged in time order; with `follow`, also from tasks that start
while the client is listening: a watcher on tasks says when one reaches a node, so a
follower costs nothing while nothing changes."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
from collections.abc import AsyncGenerator, AsyncIterator

import msgspec

from shoal.manager.dispatcher.dispatcher import Dispatcher
from shoal.manager.store import Store, Watcher, WatcherClosed
from shoal.types.agent import LogMessage, LogOptions
from shoal.types.task import Task, TaskState

FOLLOW_QUEUE = 10_000  # messages buffered for a slow client before readers wait


class LogBroker:
    def __init__(self, store: Store, dispatcher: Dispatcher) -> None:
        self._store = store
        self._dispatcher = dispatcher

    def _tasks(self, service_id: str | None, task_id: str | None) -> list[Task]:
        view = self._store.view()
        if task_id is not None:
            t = view.get_task(task_id)
            return [t] if t is not None else []
        assert service_id is not None
        return sorted(view.tasks_of_service(service_id), key=lambda t: (t.created_at, t.id))

    async def logs(
        self, options: LogOptions, service_id: str | None = None, task_id: str | None = None
    ) -> AsyncIterator[tuple[Task, LogMessage]]:
        # Watch before reading: a task that reaches a node after the read is seen.
        watcher = self._store.watch("task") if options.follow and task_id is None else None
        try:
            async for item in self._logs(options, service_id, task_id, watcher):
                yield item
        finally:
            if watcher is not None:
                watcher.close()

    async def _logs(
        self,
        options: LogOptions,
        service_id: str | None,
        task_id: str | None,
        watcher: Watcher | None,
    ) -> AsyncIterator[tuple[Task, LogMessage]]:
        tasks = [
            t
            for t in self._tasks(service_id, task_id)
            if t.node_id and t.state >= TaskState.ASSIGNED
        ]
        if not options.follow:
            async for item in self._merged(tasks, options):
                yield item
            return
        queue: asyncio.Queue[tuple[Task, LogMessage]] = asyncio.Queue(maxsize=FOLLOW_QUEUE)
        readers: dict[str, asyncio.Task[None]] = {}

        async def pump(t: Task, opts: LogOptions) -> None:
            async for m in self._task_logs(t, opts):
                await queue.put((t, m))

        def start(t: Task, opts: LogOptions) -> None:
            readers[t.id] = asyncio.create_task(pump(t, opts), name=f"logs-{t.id}")

        for t in tasks:
            start(t, options)
        # Tasks that start while the client follows are read from their beginning.
        new_options = msgspec.structs.replace(options, tail=None)

        def consider(t: Task) -> None:
            # From RUNNING on, the runtime has its log (a task only ASSIGNED may have
            # none yet, and a reader started then would end at once); a task that ends
            # without running reaches a state past RUNNING too.
            if t.id not in readers and t.node_id and t.state >= TaskState.RUNNING:
                start(t, new_options)

        async def watch_new(w: Watcher) -> None:
            assert service_id is not None
            try:
                while True:
                    try:
                        events = await w.__anext__()
                    except WatcherClosed:  # fell behind: read the service's tasks again
                        w.close()
                        w = self._store.watch("task")
                        for t in self._tasks(service_id, None):
                            consider(t)
                        continue
                    for ev in events:
                        if ev.action != "remove" and ev.obj.service_id == service_id:
                            consider(ev.obj)
            finally:
                w.close()

        follower = (
            asyncio.create_task(watch_new(watcher), name="logs-new-tasks")
            if watcher is not None
            else None
        )
        try:
            while True:
                yield await queue.get()
        finally:
            if follower is not None:
                follower.cancel()
            for r in readers.values():
                r.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(*readers.values(), return_exceptions=True)

    async def _merged(
        self, tasks: list[Task], options: LogOptions
    ) -> AsyncIterator[tuple[Task, LogMessage]]:
        """Every task's logs in time order, read as they are merged: what waits in the
        manager is one message per task (and each remote stream's window), never the
        whole history. Equal timestamps keep the tasks' order."""
        streams = [self._task_logs(t, options) for t in tasks]
        heads: list[tuple[int, int, LogMessage]] = []
        try:
            for i, stream in enumerate(streams):
                m = await anext(stream, None)
                if m is not None:
                    heapq.heappush(heads, (m.timestamp_ns, i, m))
            while heads:
                _, i, m = heapq.heappop(heads)
                yield tasks[i], m
                nxt = await anext(streams[i], None)
                if nxt is not None:
                    heapq.heappush(heads, (nxt.timestamp_ns, i, nxt))
        finally:
            for stream in streams:
                await stream.aclose()

    async def _task_logs(self, task: Task, options: LogOptions) -> AsyncGenerator[LogMessage, None]:
        source = self._dispatcher.log_source(task.node_id or "")
        if source is None:
            return
        async for m in source.task_logs(task.id, options):
            yield m
