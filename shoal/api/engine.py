"""The local engine's own endpoints, passed through to the Docker Engine.

Under the docker runtime the daemon's API answers, as dockerd in swarm mode does, the
engine's endpoints too (containers, images, exec, volumes, networks, the rest): every
request no shoal route answers goes to the engine with the same method, path, query,
headers and body, and the answer streams back as it comes (chunked logs, events,
pulls). Swarm's own paths (/swarm, /services, /tasks, /nodes, /secrets, /configs) are
never passed through: the engine here is not in swarm mode, shoal is.

Connection hijacking (`docker exec`, `docker attach`, `docker run -i`): a request that
asks for an upgrade (`Connection: Upgrade`, `Upgrade: tcp`) goes to the engine on a
raw connection. When the engine switches protocols (101, or the old 200 with a raw
stream), its answer is relayed verbatim, the client's connection is taken over from
aiohttp (`transport.set_protocol`) and bytes are piped both ways until the engine
closes; a client's half-close (stdin EOF) is passed on as one. Clients send nothing
before the answer (the docker CLI, docker-py and Go's client all wait for it): aiohttp's
C parser does not treat an upgrade request with a body as an upgrade, so bytes sent
in the same packet as the request would be read as the start of a next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any, cast
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from yarl import URL

from shoal.errors import Internal
from shoal.log import get_logger

# Headers that belong to one hop, not to the request or the answer.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
# Swarm-mode paths shoal answers itself, never the engine.
SWARM_PREFIXES = ("/swarm", "/services", "/tasks", "/nodes", "/secrets", "/configs")
RAW_STREAM_TYPES = (
    "application/vnd.docker.raw-stream",
    "application/vnd.docker.multiplexed-stream",
)
# Bodies up to this size are read whole and sent with a Content-Length; larger or
# unknown ones (image builds, loads) stream through chunked.
BODY_BUFFER_LIMIT = 1024 * 1024
PIPE_CHUNK_BYTES = 64 * 1024
# A hijacked pipe stops reading the side it copies from while the other side has more
# than this waiting to be sent.
PIPE_HIGH_WATER_BYTES = 1024 * 1024
HEAD_LIMIT_BYTES = 64 * 1024
CONNECT_TIMEOUT_S = 5.0
# dockerd's plain-TCP port, for a tcp:// engine host without one.
DEFAULT_ENGINE_TCP_PORT = 2375
ENGINE_UNREACHABLE = "Cannot connect to the Docker daemon at {host}. Is the docker daemon running?"

_VERSION_RE = re.compile(r"^/v\d+\.\d+(/.*)$")

log = get_logger("shoal.api.engine")


class EngineProxy:
    """The pass-through to one engine (`unix:///path` or `tcp://addr:port`)."""

    def __init__(self, host: str) -> None:
        self.host = host
        if host.startswith("unix://"):
            self._unix_path: str | None = host[len("unix://") :]
            self._base = "http://docker"
            self._tcp: tuple[str, int] = ("", 0)
        else:
            parts = urlsplit(host if "://" in host else f"tcp://{host}")
            self._unix_path = None
            self._tcp = (parts.hostname or "127.0.0.1", parts.port or DEFAULT_ENGINE_TCP_PORT)
            self._base = f"http://{self._tcp[0]}:{self._tcp[1]}"
        self._session: aiohttp.ClientSession | None = None
        self.requests = 0
        self.hijacked = 0

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector: aiohttp.BaseConnector
            if self._unix_path is not None:
                connector = aiohttp.UnixConnector(path=self._unix_path, limit=0)
            else:
                connector = aiohttp.TCPConnector(limit=0)
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT_S),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def statistics(self) -> dict[str, int]:
        return {"requests": self.requests, "hijacked": self.hijacked}

    # --- plain requests ---------------------------------------------------------------

    async def forward(self, request: web.Request) -> web.StreamResponse:
        """Send `request` to the engine and stream its answer back."""
        self.requests += 1
        if _wants_upgrade(request):
            return await self._hijack(request)
        data: Any = None
        if request.body_exists:
            length = request.content_length
            if length is not None and length <= BODY_BUFFER_LIMIT:
                data = await request.read()
            else:
                data = _stream(request)
        url = URL(self._base + request.raw_path, encoded=True)
        try:
            upstream = await self.session.request(
                request.method,
                url,
                headers=_forward_headers(request.headers.items()),
                data=data,
                allow_redirects=False,
            )
        except (aiohttp.ClientConnectionError, OSError) as e:
            raise Internal(ENGINE_UNREACHABLE.format(host=self.host)) from e
        async with upstream:
            resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in HOP_BY_HOP:
                    resp.headers.add(key, value)
            if upstream.content_length is not None:
                resp.content_length = upstream.content_length
            await resp.prepare(request)
            if request.method != "HEAD":
                async for chunk in upstream.content.iter_any():
                    await resp.write(chunk)
            await resp.write_eof()
        return resp

    async def send(self, method: str, raw_path: str, body: bytes) -> tuple[int, str, bytes]:
        """A request with a JSON body read beforehand; the engine's status, content type
        and body."""
        self.requests += 1
        url = URL(self._base + raw_path, encoded=True)
        headers = {"Content-Type": "application/json"}
        try:
            async with self.session.request(method, url, data=body, headers=headers) as r:
                return r.status, r.headers.get("Content-Type", ""), await r.read()
        except (aiohttp.ClientConnectionError, OSError) as e:
            raise Internal(ENGINE_UNREACHABLE.format(host=self.host)) from e

    async def get(self, raw_path: str) -> aiohttp.ClientResponse:
        """GET `raw_path` (path and query) from the engine, for a caller that reads the
        answer itself (and closes it)."""
        self.requests += 1
        try:
            return await self.session.get(URL(self._base + raw_path, encoded=True))
        except (aiohttp.ClientConnectionError, OSError) as e:
            raise Internal(ENGINE_UNREACHABLE.format(host=self.host)) from e

    # --- hijacked connections ---------------------------------------------------------

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                if self._unix_path is not None:
                    return await asyncio.open_unix_connection(self._unix_path)
                return await asyncio.open_connection(*self._tcp)
        except (OSError, TimeoutError) as e:
            raise Internal(ENGINE_UNREACHABLE.format(host=self.host)) from e

    async def _hijack(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        reader, writer = await self._open()
        try:
            head = [f"{request.method} {request.raw_path} HTTP/1.1", "Host: docker"]
            head += [f"{k}: {v}" for k, v in _forward_headers(request.headers.items())]
            head += [
                f"Connection: {request.headers.get('Connection', 'Upgrade')}",
                f"Upgrade: {request.headers.get('Upgrade', 'tcp')}",
                f"Content-Length: {len(body)}",
            ]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
            await writer.drain()
            try:
                raw_head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
                raise Internal("the Docker Engine closed the connection without an answer") from e
            status, reason, headers = _parse_head(raw_head)
            content_type = _header(headers, "content-type").split(";")[0].strip().lower()
            switched = status == 101 or (
                status == 200
                and content_type in RAW_STREAM_TYPES
                and not _header(headers, "content-length")
                and _header(headers, "transfer-encoding").lower() != "chunked"
            )
            if not switched:
                return await _relay_plain(reader, status, reason, headers)
            self.hijacked += 1
            transport = request.transport
            if transport is None or transport.is_closing():
                return web.Response(status=status)
            await _pipe(request, transport, raw_head, reader, writer)
            # The connection is closed: aiohttp's attempt to answer fails quietly.
            return web.StreamResponse()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def _wants_upgrade(request: web.Request) -> bool:
    tokens = {t.strip().lower() for t in request.headers.get("Connection", "").split(",")}
    return "upgrade" in tokens and bool(request.headers.get("Upgrade"))


def _forward_headers(items: Any) -> list[tuple[str, str]]:
    return [(k, v) for k, v in items if k.lower() not in HOP_BY_HOP]


async def _stream(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(PIPE_CHUNK_BYTES):
        yield chunk


def _parse_head(raw: bytes) -> tuple[int, str, list[tuple[str, str]]]:
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    try:
        status = int(parts[1])
    except (IndexError, ValueError) as e:
        raise Internal(f"the Docker Engine answered {lines[0]!r}") from e
    reason = parts[2] if len(parts) > 2 else ""
    headers = []
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        if sep:
            headers.append((key.strip(), value.strip()))
    return status, reason, headers


def _header(headers: list[tuple[str, str]], name: str) -> str:
    return next((v for k, v in headers if k.lower() == name), "")


async def _relay_plain(
    reader: asyncio.StreamReader, status: int, reason: str, headers: list[tuple[str, str]]
) -> web.Response:
    """An ordinary answer on the raw connection (an error, a detached exec start)."""
    length = _header(headers, "content-length")
    if length.isdigit():
        body = await reader.readexactly(int(length))
    elif _header(headers, "transfer-encoding").lower() == "chunked":
        body = await _read_chunked(reader)
    elif status in (204, 304):
        body = b""
    else:
        body = await reader.read()
    resp = web.Response(status=status, reason=reason or None, body=body)
    for key, value in headers:
        if key.lower() not in HOP_BY_HOP and key.lower() != "content-type":
            resp.headers.add(key, value)
    content_type = _header(headers, "content-type")
    if content_type:
        resp.headers["Content-Type"] = content_type
    return resp


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            with contextlib.suppress(asyncio.IncompleteReadError):
                await reader.readuntil(b"\r\n")
            return bytes(out)
        out += await reader.readexactly(size)
        await reader.readexactly(2)


class _ClientPipe(asyncio.Protocol):
    """The client's side of a hijacked connection, once taken over from aiohttp: what
    the client sends goes to the engine; its half-close becomes the engine's."""

    def __init__(self, transport: asyncio.Transport, engine: asyncio.StreamWriter) -> None:
        self._transport = transport
        self._engine = engine
        self.lost = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()
        self._draining = False

    def feed(self, data: bytes) -> None:
        if not data or self._engine.is_closing():
            return
        self._engine.write(data)
        engine_transport = self._engine.transport
        if not self._draining and engine_transport.get_write_buffer_size() > PIPE_HIGH_WATER_BYTES:
            self._draining = True
            self._transport.pause_reading()
            asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await self._engine.drain()
        self._draining = False
        if not self._transport.is_closing():
            self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.feed(data)

    def eof_received(self) -> bool:
        if not self._engine.is_closing() and self._engine.can_write_eof():
            with contextlib.suppress(OSError):
                self._engine.write_eof()
        return True  # keep our side open: the engine's output is still coming

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()
        self.writable.set()
        self._engine.close()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()


class _TailCollector:
    """Stands in as aiohttp's payload parser for a moment, to collect what the client
    sent after the request and aiohttp already buffered."""

    def __init__(self) -> None:
        self.data = bytearray()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.data += data
        return False, b""

    def feed_eof(self) -> None:
        pass


async def _pipe(
    request: web.Request,
    transport: asyncio.BaseTransport,
    raw_head: bytes,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    client = cast(asyncio.Transport, transport)
    client.write(raw_head)  # the engine's answer, verbatim
    pipe = _ClientPipe(client, writer)
    tail = _TailCollector()
    protocol = request.protocol
    with contextlib.suppress(AssertionError, AttributeError):
        protocol.set_parser(cast(Any, tail))
    client.set_protocol(pipe)
    if not client.is_reading():
        client.resume_reading()
    pipe.feed(bytes(tail.data))
    try:
        while not pipe.lost.is_set():
            chunk = await reader.read(PIPE_CHUNK_BYTES)
            if not chunk:
                break
            client.write(chunk)
            if client.get_write_buffer_size() > PIPE_HIGH_WATER_BYTES:
                await pipe.writable.wait()
    except (ConnectionError, OSError):
        pass
    finally:
        client.close()


# --- routes -------------------------------------------------------------------------------

PROXY_KEY = web.AppKey("engine_proxy", EngineProxy)


def register(app: web.Application, host: str) -> None:
    """Pass what no other route answers through to the engine at `host`; call last."""
    proxy = EngineProxy(host)
    app[PROXY_KEY] = proxy
    app.router.add_route("*", "/{tail:.*}", passthrough)

    async def close(_: web.Application) -> None:
        await proxy.close()

    app.on_cleanup.append(close)


def proxy_of(request: web.Request) -> EngineProxy | None:
    """The app's pass-through, when the daemon has an engine."""
    return request.app.get(PROXY_KEY)


async def passthrough(request: web.Request) -> web.StreamResponse:
    proxy = proxy_of(request)
    m = _VERSION_RE.match(request.path)
    path = m.group(1) if m else request.path
    if proxy is None or any(path == p or path.startswith(p + "/") for p in SWARM_PREFIXES):
        raise web.HTTPNotFound()
    return await proxy.forward(request)
