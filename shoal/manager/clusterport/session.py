"""The manager side of an agent's session: a websocket bridged onto the Dispatcher.

The agent's certificate names the node; a session may only speak for that node. The
dispatcher sees a remote agent exactly as it sees the local one (a DispatcherSession
caller and a LogSource), so nothing above this module knows about the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator

from aiohttp import WSMsgType, web

from shoal.log import get_logger
from shoal.manager.dispatcher.dispatcher import Dispatcher
from shoal.pki import Identity
from shoal.types import session as msg
from shoal.types.agent import LogMessage, LogOptions

REGISTER_TIMEOUT_S = 10.0
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
LOG_QUEUE = 1000

log = get_logger("shoal.manager.session")


class _Sender:
    def __init__(self, ws: web.WebSocketResponse) -> None:
        self._ws = ws
        self._lock = asyncio.Lock()

    async def send(self, m: msg.SessionMessage) -> None:
        async with self._lock:
            await self._ws.send_bytes(msg.encode(m))


class RemoteLogSource:
    """Asks the agent for a task's logs over the session and yields what it sends."""

    _ids = itertools.count(1)

    def __init__(self, sender: _Sender) -> None:
        self._sender = sender
        self._subs: dict[str, asyncio.Queue[msg.LogData | None]] = {}

    async def task_logs(self, task_id: str, options: LogOptions) -> AsyncIterator[LogMessage]:
        sub_id = str(next(self._ids))
        queue: asyncio.Queue[msg.LogData | None] = asyncio.Queue(LOG_QUEUE)
        self._subs[sub_id] = queue
        try:
            await self._sender.send(
                msg.LogSubscribe(sub_id=sub_id, task_id=task_id, options=options)
            )
            while True:
                data = await queue.get()
                if data is None:
                    return  # the session ended
                for m in data.messages:
                    yield m
                if data.done:
                    return
        finally:
            self._subs.pop(sub_id, None)
            with contextlib.suppress(Exception):
                await self._sender.send(msg.LogCancel(sub_id=sub_id))

    async def feed(self, data: msg.LogData) -> None:
        queue = self._subs.get(data.sub_id)
        if queue is not None:
            await queue.put(data)

    def close(self) -> None:
        for q in self._subs.values():
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(None)


async def serve_session(
    request: web.Request, ident: Identity, dispatcher: Dispatcher
) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES)
    await ws.prepare(request)
    sender = _Sender(ws)
    logs = RemoteLogSource(sender)
    forward: asyncio.Task[None] | None = None
    try:
        first = await ws.receive(timeout=REGISTER_TIMEOUT_S)
        if first.type != WSMsgType.BINARY:
            return ws
        hello = msg.decode(first.data)
        if not isinstance(hello, msg.Register) or hello.node_id != ident.node_id:
            await sender.send(msg.SessionError(message="a session may only register its own node"))
            return ws
        try:
            period = await dispatcher.register(ident.node_id, hello.description, hello.addr, logs)
        except Exception as e:
            await sender.send(msg.SessionError(message=str(e)))
            return ws
        await sender.send(msg.Registered(period=period))

        async def push_assignments() -> None:
            async for a in dispatcher.assignments(ident.node_id):
                await sender.send(msg.AssignmentMsg(assignment=a))

        forward = asyncio.create_task(push_assignments(), name=f"assign-{ident.node_id}")
        async for frame in ws:
            if frame.type != WSMsgType.BINARY:
                break
            m = msg.decode(frame.data)
            if isinstance(m, msg.Heartbeat):
                period = await dispatcher.heartbeat(ident.node_id)
                await sender.send(msg.HeartbeatAck(seq=m.seq, period=period))
            elif isinstance(m, msg.Status):
                await dispatcher.update_task_status(ident.node_id, m.updates)
            elif isinstance(m, msg.LogData):
                await logs.feed(m)
            if forward.done():
                break
    except (TimeoutError, ConnectionError) as e:
        log.info("agent session ended", node=ident.node_id, reason=repr(e))
    finally:
        if forward is not None:
            forward.cancel()
            with contextlib.suppress(BaseException):
                await forward
        logs.close()
        dispatcher.close_session(ident.node_id, logs)
        await ws.close()
    return ws
