"""The manager side of an agent's session: a websocket bridged onto the Dispatcher.

The agent's certificate names the node; a session may only speak for that node, and
only while the store still says what the certificate says (every message is checked:
a removed or demoted node's session ends). The node's address is the connection's
peer address; the address the agent advertises is a hint that must agree with it.

Nothing a peer sends can stall the session: frames are capped (`MAX_AGENT_FRAME_BYTES`),
a frame that does not decode is dropped alone, and log data flows under a window of
LOG_WINDOW batches per subscription, acknowledged as the reader consumes them, so the
session's read loop never waits on a slow log reader.

The dispatcher sees a remote agent exactly as it sees the local one (a DispatcherSession
caller and a LogSource), so nothing above this module knows about the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
from collections.abc import AsyncIterator

import msgspec
from aiohttp import WSMsgType, web

from shoal.errors import InvalidArgument, ShoalError
from shoal.log import get_logger
from shoal.manager.ca.rotation import Directive, directive, record_node_tls
from shoal.manager.clusterport.access import Gate
from shoal.manager.dispatcher.dispatcher import Dispatcher
from shoal.manager.roster import RosterCache, manager_addrs
from shoal.manager.store import Store
from shoal.pki import Identity
from shoal.types import session as msg
from shoal.types.agent import LogMessage, LogOptions

REGISTER_TIMEOUT_S = 10.0
# A trust directive the node has not acted on is sent again after this many heartbeats.
TRUST_RESEND_BEATS = 5

log = get_logger("shoal.manager.session")


class _Sender:
    def __init__(self, ws: web.WebSocketResponse) -> None:
        self._ws = ws
        self._lock = asyncio.Lock()

    async def send(self, m: msg.SessionMessage) -> None:
        async with self._lock:
            await self._ws.send_bytes(msg.encode(m))


class RemoteLogSource:
    """Asks the agent for a task's logs over the session and yields what it sends.

    Each subscription holds at most LOG_WINDOW batches: the agent sends a batch only
    while it has credit, and each batch the reader takes returns one (LogAck)."""

    _ids = itertools.count(1)

    def __init__(self, sender: _Sender) -> None:
        self._sender = sender
        self._subs: dict[str, asyncio.Queue[msg.LogData | None]] = {}
        self.overruns = 0

    async def task_logs(self, task_id: str, options: LogOptions) -> AsyncIterator[LogMessage]:
        sub_id = str(next(self._ids))
        # the window, and one place more for the end-of-session marker
        queue: asyncio.Queue[msg.LogData | None] = asyncio.Queue(msg.LOG_WINDOW + 1)
        self._subs[sub_id] = queue
        try:
            await self._sender.send(
                msg.LogSubscribe(sub_id=sub_id, task_id=task_id, options=options)
            )
            while True:
                data = await queue.get()
                if data is None:
                    return  # the session ended
                if not data.done:
                    await self._sender.send(msg.LogAck(sub_id=sub_id))
                for m in data.messages:
                    yield m
                if data.done:
                    return
        finally:
            self._subs.pop(sub_id, None)
            with contextlib.suppress(Exception):
                await self._sender.send(msg.LogCancel(sub_id=sub_id))

    def feed(self, data: msg.LogData) -> None:
        """Never waits: an agent that sends past its window loses the excess batch."""
        queue = self._subs.get(data.sub_id)
        if queue is None:
            return
        if queue.qsize() >= msg.LOG_WINDOW:
            self.overruns += 1
            log.warning("agent sent log data past its window; dropped", sub=data.sub_id)
            return
        queue.put_nowait(data)

    def close(self) -> None:
        for q in self._subs.values():
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(None)


def node_addr(peer: str | None, advertised: str) -> str:
    """The address the node is reached at: the connection's peer. The advertised
    address, when it is an IP, must be that same address."""
    if not peer:
        raise InvalidArgument("the session has no peer address")
    addr = ipaddress.ip_address(peer)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    try:
        hint = ipaddress.ip_address(advertised)
    except ValueError:
        return str(addr)  # a name, or nothing: the peer address stands
    if hint != addr:
        raise InvalidArgument(
            f"advertised address {advertised} is not the address the node connects from ({addr})"
        )
    return str(addr)


class AgentSession:
    """One agent's websocket, from its Register to its end."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        ident: Identity,
        peer: str | None,
        dispatcher: Dispatcher,
        gate: Gate,
        store: Store,
        roster: RosterCache | None = None,
    ) -> None:
        """`roster`: several managers, whose cluster ports the heartbeat answers carry
        when they change (None: one manager, whose address the agent has)."""
        self._roster = roster
        self._ws = ws
        self._ident = ident
        self._peer = peer
        self._dispatcher = dispatcher
        self._gate = gate
        self._store = store
        # the trust directive last sent, and heartbeats since (root rotation)
        self._directive: Directive | None = None
        self._beats_since = 0
        # the managers' cluster ports this session last told its agent
        self._managers_sent: list[str] = []
        self._sender = _Sender(ws)
        self._logs = RemoteLogSource(self._sender)

    @property
    def node_id(self) -> str:
        return self._ident.node_id

    async def serve(self) -> None:
        try:
            if not await self._register():
                return
            forward = asyncio.create_task(self._forward(), name=f"assign-{self.node_id}")
            read = asyncio.create_task(self._read(), name=f"session-{self.node_id}")
            try:
                await asyncio.wait({forward, read}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (forward, read):
                    t.cancel()
                await asyncio.gather(forward, read, return_exceptions=True)
        except (TimeoutError, ConnectionError) as e:
            log.info("agent session ended", node=self.node_id, reason=repr(e))
        finally:
            self._logs.close()
            self._dispatcher.close_session(self.node_id, self._logs)
            await self._ws.close()

    async def _refuse(self, message: str) -> None:
        with contextlib.suppress(ConnectionError):
            await self._sender.send(msg.SessionError(message=message))

    async def _register(self) -> bool:
        first = await self._ws.receive(timeout=REGISTER_TIMEOUT_S)
        if first.type != WSMsgType.BINARY:
            return False
        try:
            hello = msg.decode(first.data)
        except (msgspec.ValidationError, msgspec.DecodeError) as e:
            await self._refuse(f"invalid register message: {e}")
            return False
        if not isinstance(hello, msg.Register) or hello.node_id != self.node_id:
            await self._refuse("a session may only register its own node")
            return False
        try:
            addr = node_addr(self._peer, hello.addr)
            period = await self._dispatcher.register(
                self.node_id, hello.description, addr, self._logs, hello.manager_addr
            )
        except ShoalError as e:
            await self._refuse(e.message)
            return False
        managers = manager_addrs(self._store.view())
        self._managers_sent = managers
        await self._sender.send(msg.Registered(period=period, managers=managers))
        return True

    async def _forward(self) -> None:
        """Assignments until the dispatcher ends the stream (the session was revoked)."""
        async for a in self._dispatcher.assignments(self.node_id):
            await self._sender.send(msg.AssignmentMsg(assignment=a))
        await self._refuse("the manager closed this session: node removed or role changed")

    async def _read(self) -> None:
        async for frame in self._ws:
            if frame.type != WSMsgType.BINARY:
                if frame.type == WSMsgType.ERROR:
                    log.warning("agent session broken", node=self.node_id, error=repr(frame.data))
                return
            try:
                self._gate.check_member(self._ident)
            except ShoalError as e:
                await self._refuse(e.message)
                return
            try:
                m = msg.decode(frame.data)
            except (msgspec.ValidationError, msgspec.DecodeError) as e:
                self._dispatcher.reject_report(self.node_id, str(e))
                continue
            if isinstance(m, msg.Heartbeat):
                try:
                    period = await self._dispatcher.heartbeat(self.node_id)
                except ShoalError as e:
                    await self._refuse(e.message)
                    return
                managers = self._roster.get() if self._roster is not None else []
                changed = managers if managers != self._managers_sent else []
                self._managers_sent = managers or self._managers_sent
                await self._sender.send(
                    msg.HeartbeatAck(seq=m.seq, period=period, managers=changed)
                )
                await self._direct()
            elif isinstance(m, msg.NodeTLS):
                await record_node_tls(self._store, self.node_id, m.tls_info)
            elif isinstance(m, msg.Status):
                await self._dispatcher.update_task_status(self.node_id, m.updates, m.applied)
            elif isinstance(m, msg.LogData):
                self._logs.feed(m)

    async def _direct(self) -> None:
        """Tell the node what to trust and whether to renew, when that differs from
        what it reported (a root rotation); again if it has not acted after a while."""
        d = directive(self._store.view(), self.node_id)
        self._beats_since += 1
        if d is None or (d == self._directive and self._beats_since < TRUST_RESEND_BEATS):
            self._directive = d
            return
        self._directive, self._beats_since = d, 0
        await self._sender.send(msg.TrustUpdate(trust_root=d.trust_root, renew=d.renew))


async def serve_session(
    request: web.Request,
    ident: Identity,
    dispatcher: Dispatcher,
    gate: Gate,
    store: Store,
    roster: RosterCache | None = None,
) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=msg.MAX_AGENT_FRAME_BYTES)
    await ws.prepare(request)
    await AgentSession(ws, ident, request.remote, dispatcher, gate, store, roster).serve()
    return ws
