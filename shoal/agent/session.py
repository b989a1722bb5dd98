"""The agent side of a session with a remote manager: DispatcherSession over the
cluster port (mutual TLS websocket, MessagePack frames).

One `register()` opens one connection; when it drops, `assignments()` ends and the agent
registers again (with backoff), trying each known manager in turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable

import aiohttp

from shoal.log import get_logger
from shoal.pki import MANAGER_SERVER_NAME, NodeCredentials
from shoal.types import session as msg
from shoal.types.agent import Assignment, LogMessage, LogOptions, LogSource, TaskStatusUpdate
from shoal.types.node import NodeDescription, TLSInfo

RPC_TIMEOUT_S = 5.0  # SwarmKit's dispatcher RPC timeout
CONNECT_TIMEOUT_S = 5.0
# A log frame holds at most this many messages and about this many bytes of them.
LOG_BATCH = 100
LOG_BATCH_BYTES = 256 * 1024
SESSION_PATH = "/dispatcher/session"

log = get_logger("shoal.agent.session")


class SessionClosed(ConnectionError):
    pass


class SessionRefused(SessionClosed):
    """A manager refused this node's certificate (403): it was removed, or its role
    changed and the certificate must be renewed."""


class RemoteSession:
    """Implements `DispatcherSession` against the managers at `managers()`."""

    def __init__(
        self,
        managers: Callable[[], list[str]],
        credentials: Callable[[], NodeCredentials],
        on_refused: Callable[[], None] = lambda: None,
        on_trust: Callable[[msg.TrustUpdate], None] = lambda _: None,
        tls_info: Callable[[], TLSInfo] | None = None,
        local_addr: str | None = None,
        on_managers: Callable[[list[str]], None] = lambda _: None,
        manager_addr: str | None = None,
    ) -> None:
        """`on_trust`: the manager said what to trust and whether to renew (a root
        rotation); `tls_info`: this node's TLS state, reported after registering;
        `local_addr`: the source address to dial from (None: the kernel's choice);
        `on_managers`: the managers' cluster ports, as the manager said at
        registration (to fail over to); `manager_addr`: this node's own cluster port
        when it is a manager (registered for the others to learn)."""
        self._local_addr = local_addr
        self._on_managers = on_managers
        self._manager_addr = manager_addr
        self._managers = managers
        self._credentials = credentials
        self._on_refused = on_refused
        self._on_trust = on_trust
        self._tls_info = tls_info
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._assignments: asyncio.Queue[Assignment | None] = asyncio.Queue()
        self._acks: dict[int, asyncio.Future[float]] = {}
        self._seq = itertools.count(1)
        self._log_pumps: dict[str, asyncio.Task[None]] = {}
        self._log_credits: dict[str, asyncio.Semaphore] = {}
        self._send_lock = asyncio.Lock()
        self._next_manager = 0
        self.connected_to: str | None = None

    # connection -------------------------------------------------------------------------
    async def _connect(self) -> aiohttp.ClientWebSocketResponse:
        await self._close()
        managers = self._managers()
        if not managers:
            raise SessionClosed("no manager known")
        # it requires a manager's certificate of this node's cluster (pki.client_context)
        ssl_ctx = self._credentials().client_context()
        connector = aiohttp.TCPConnector(
            local_addr=(self._local_addr, 0) if self._local_addr else None
        )
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(connect=CONNECT_TIMEOUT_S), connector=connector
        )
        errors = []
        for i in range(len(managers)):
            addr = managers[(self._next_manager + i) % len(managers)]
            try:
                ws = await self._http.ws_connect(
                    f"wss://{addr}{SESSION_PATH}",
                    ssl=ssl_ctx,
                    server_hostname=MANAGER_SERVER_NAME,
                    max_msg_size=msg.MAX_MANAGER_FRAME_BYTES,
                    heartbeat=None,
                )
            except aiohttp.WSServerHandshakeError as e:
                if e.status == 403:
                    # removed, or its role changed: the daemon renews the certificate
                    log.warning("manager refused this node's certificate", addr=addr)
                    self._on_refused()
                errors.append(f"{addr}: {e}")
                continue
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                errors.append(f"{addr}: {e}")
                continue
            self._next_manager = (self._next_manager + i) % len(managers)
            self.connected_to = addr
            return ws
        self._next_manager += 1
        raise SessionClosed("no manager reachable: " + "; ".join(errors))

    async def _close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
            self._reader = None
        for t in self._log_pumps.values():
            t.cancel()
        self._log_pumps.clear()
        self._log_credits.clear()
        if self._ws is not None:
            await self._ws.close()
            self._ws = None
        if self._http is not None:
            await self._http.close()
            self._http = None
        for f in self._acks.values():
            if not f.done():
                f.set_exception(SessionClosed("session closed"))
        self._acks.clear()

    async def close(self) -> None:
        await self._close()

    async def _send(self, m: msg.SessionMessage) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            raise SessionClosed("no session")
        async with self._send_lock:
            await ws.send_bytes(msg.encode(m))

    # DispatcherSession ----------------------------------------------------------------------
    async def register(
        self, node_id: str, description: NodeDescription, addr: str, logs: LogSource
    ) -> float:
        ws = await self._connect()
        self._ws = ws
        await self._send(
            msg.Register(
                node_id=node_id,
                description=description,
                addr=addr,
                manager_addr=self._manager_addr,
            )
        )
        reply = await ws.receive(timeout=RPC_TIMEOUT_S)
        if reply.type != aiohttp.WSMsgType.BINARY:
            raise SessionClosed(f"manager closed the session ({reply.type.name})")
        m = msg.decode(reply.data)
        if isinstance(m, msg.SessionError):
            raise SessionClosed(m.message)
        if not isinstance(m, msg.Registered):
            raise SessionClosed(f"unexpected {type(m).__name__} from the manager")
        if m.managers:
            self._on_managers(m.managers)
        self._assignments = asyncio.Queue()
        self._reader = asyncio.create_task(self._read(ws, logs), name="session-reader")
        log.info("session started", manager=self.connected_to)
        if self._tls_info is not None:
            await self.report_tls(self._tls_info())
        return m.period

    async def report_tls(self, tls: TLSInfo) -> None:
        """Tell the manager what this node trusts and who issued its certificate."""
        await self._send(msg.NodeTLS(tls_info=tls))

    async def heartbeat(self, node_id: str) -> float:
        seq = next(self._seq)
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._acks[seq] = fut
        try:
            await self._send(msg.Heartbeat(seq=seq))
            return await asyncio.wait_for(fut, RPC_TIMEOUT_S)
        finally:
            self._acks.pop(seq, None)

    async def assignments(self, node_id: str) -> AsyncIterator[Assignment]:
        while True:
            a = await self._assignments.get()
            if a is None:
                raise SessionClosed("session with the manager ended")
            yield a

    async def update_task_status(
        self, node_id: str, updates: list[TaskStatusUpdate], applied: int = 0
    ) -> None:
        if not updates:
            await self._send(msg.Status(updates=[], applied=applied))
        for i in range(0, len(updates), msg.MAX_STATUS_UPDATES):
            chunk = updates[i : i + msg.MAX_STATUS_UPDATES]
            await self._send(msg.Status(updates=chunk, applied=applied))

    # incoming -------------------------------------------------------------------------------
    async def _read(self, ws: aiohttp.ClientWebSocketResponse, logs: LogSource) -> None:
        try:
            async for frame in ws:
                if frame.type != aiohttp.WSMsgType.BINARY:
                    break
                m = msg.decode(frame.data)
                if isinstance(m, msg.AssignmentMsg):
                    self._assignments.put_nowait(m.assignment)
                elif isinstance(m, msg.HeartbeatAck):
                    if m.managers:
                        self._on_managers(m.managers)
                    fut = self._acks.get(m.seq)
                    if fut is not None and not fut.done():
                        fut.set_result(m.period)
                elif isinstance(m, msg.LogSubscribe):
                    self._log_credits[m.sub_id] = asyncio.Semaphore(msg.LOG_WINDOW)
                    self._log_pumps[m.sub_id] = asyncio.create_task(
                        self._pump_logs(logs, m.sub_id, m.task_id, m.options)
                    )
                elif isinstance(m, msg.LogAck):
                    credits = self._log_credits.get(m.sub_id)
                    if credits is not None:
                        credits.release()
                elif isinstance(m, msg.LogCancel):
                    self._log_credits.pop(m.sub_id, None)
                    pump = self._log_pumps.pop(m.sub_id, None)
                    if pump is not None:
                        pump.cancel()
                elif isinstance(m, msg.TrustUpdate):
                    self._on_trust(m)
                elif isinstance(m, msg.SessionError):
                    log.warning("manager ended the session", error=m.message)
                    break
        finally:
            self._assignments.put_nowait(None)
            for f in self._acks.values():
                if not f.done():
                    f.set_exception(SessionClosed("session closed"))

    async def _pump_logs(
        self, logs: LogSource, sub_id: str, task_id: str, options: LogOptions
    ) -> None:
        """Sends a task's logs in batches, each one only with credit from the manager
        (LOG_WINDOW batches in flight, one more per LogAck): a slow reader slows this
        pump, never the session."""
        credits = self._log_credits[sub_id]

        async def send(batch: list[LogMessage], done: bool = False) -> None:
            await credits.acquire()
            await self._send(msg.LogData(sub_id=sub_id, messages=batch, done=done))

        batch: list[LogMessage] = []
        size = 0
        try:
            async for m in logs.task_logs(task_id, options):
                batch.append(m)
                size += len(m.data)
                if len(batch) >= LOG_BATCH or size >= LOG_BATCH_BYTES or options.follow:
                    await send(batch)
                    batch, size = [], 0
            await send(batch, done=True)
        except (SessionClosed, ConnectionError):
            pass
        finally:
            self._log_pumps.pop(sub_id, None)
            self._log_credits.pop(sub_id, None)
