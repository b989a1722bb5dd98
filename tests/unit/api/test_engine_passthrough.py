"""The engine pass-through against a fake engine on a unix socket: plain requests with
their method, path, query, headers and body, streamed answers, swarm paths kept, and a
hijacked connection (101, then bytes both ways, the client's half-close passed on)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from shoal.api import engine

STREAM_PARTS = [b"one\n", b"two\n", b"three\n"]
WAIT_S = 10.0
# How long the first part of a stream may take to come through (it is sent at once).
PART_WAIT_S = 5.0


async def fake_engine_app(seen: list[dict[str, Any]]) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        seen.append(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "auth": request.headers.get("X-Registry-Auth"),
                "body": await request.read(),
            }
        )
        return web.json_response({"ok": True}, status=201, headers={"Api-Version": "1.41"})

    # The stream sends its first part, then holds the rest until the client, having
    # read that part through shoal, asks for it (a buffering proxy never gets there).
    released = asyncio.Event()

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = "application/octet-stream"
        await resp.prepare(request)
        first, *rest = STREAM_PARTS
        await resp.write(first)
        await released.wait()
        for part in rest:
            await resp.write(part)
        await resp.write_eof()
        return resp

    async def release(request: web.Request) -> web.Response:
        released.set()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_route("*", "/v1.41/stream", stream)
    app.router.add_route("POST", "/v1.41/stream/release", release)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def hijack_engine(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers any request with 101, then echoes what comes upper-cased until the
    client's half-close, then says "bye" and closes (as an exec's output ends)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await reader.readexactly(length)
    writer.write(
        b"HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\n"
        b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
    )
    while data := await reader.read(1024):
        writer.write(data.upper())
    writer.write(b"bye")
    await writer.drain()
    writer.close()


async def serve_unix(app: web.Application, path: str) -> web.AppRunner:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.UnixSite(runner, path).start()
    return runner


def shoal_app(engine_sock: str) -> web.Application:
    async def swarm_route(request: web.Request) -> web.Response:
        return web.json_response({"shoal": True})

    app = web.Application()
    app.router.add_get("/v1.41/services", swarm_route)
    engine.register(app, f"unix://{engine_sock}")
    return app


async def raw_request(sock: str, head: str, body: bytes = b"") -> tuple[bytes, bytes]:
    reader, writer = await asyncio.open_unix_connection(sock)
    writer.write(head.encode() + body)
    await writer.drain()
    data = await reader.read()
    writer.close()
    head_end = data.index(b"\r\n\r\n") + 4
    return data[:head_end], data[head_end:]


def run(test: Callable[[str, str, list[dict[str, Any]]], Awaitable[None]], hijack: bool) -> None:
    async def main() -> None:
        with tempfile.TemporaryDirectory(prefix="shoal-pt-", dir="/tmp") as tmp:
            engine_sock, shoal_sock = f"{tmp}/engine.sock", f"{tmp}/shoal.sock"
            seen: list[dict[str, Any]] = []
            stack = contextlib.AsyncExitStack()
            async with stack:
                if hijack:
                    server = await asyncio.start_unix_server(hijack_engine, engine_sock)
                    stack.push_async_callback(server.wait_closed)
                    stack.callback(server.close)
                else:
                    fake = await serve_unix(await fake_engine_app(seen), engine_sock)
                    stack.push_async_callback(fake.cleanup)
                front = await serve_unix(shoal_app(engine_sock), shoal_sock)
                stack.push_async_callback(front.cleanup)
                async with asyncio.timeout(WAIT_S):
                    await test(shoal_sock, engine_sock, seen)

    asyncio.run(main())


def test_plain_request_goes_through_whole() -> None:
    async def check(sock: str, _: str, seen: list[dict[str, Any]]) -> None:
        body = json.dumps({"Image": "busybox"}).encode()
        head, payload = await raw_request(
            sock,
            "POST /v1.41/containers/create?name=x HTTP/1.1\r\nHost: shoal\r\n"
            "Content-Type: application/json\r\nX-Registry-Auth: e30=\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n",
            body,
        )
        assert head.startswith(b"HTTP/1.1 201")
        assert b"Api-Version: 1.41" in head
        assert json.loads(payload) == {"ok": True}
        assert seen == [
            {
                "method": "POST",
                "path": "/v1.41/containers/create",
                "query": {"name": "x"},
                "auth": "e30=",
                "body": body,
            }
        ]

    run(check, hijack=False)


def test_streamed_answer_and_swarm_paths_kept() -> None:
    async def check(sock: str, _: str, seen: list[dict[str, Any]]) -> None:
        reader, writer = await asyncio.open_unix_connection(sock)
        writer.write(b"GET /v1.41/stream HTTP/1.1\r\nHost: shoal\r\nConnection: close\r\n\r\n")
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"Transfer-Encoding: chunked" in head
        # The first part arrives while the engine still holds the rest back: shoal
        # passes the stream on as it comes, it does not wait for its end.
        received = b""
        while STREAM_PARTS[0] not in received:
            chunk = await asyncio.wait_for(reader.read(1024), PART_WAIT_S)
            assert chunk, f"the stream ended before its first part: {received!r}"
            received += chunk
        assert not any(part in received for part in STREAM_PARTS[1:]), received
        released, _ = await raw_request(
            sock,
            "POST /v1.41/stream/release HTTP/1.1\r\nHost: shoal\r\n"
            "Content-Length: 0\r\nConnection: close\r\n\r\n",
        )
        assert released.startswith(b"HTTP/1.1 204"), released
        received += await reader.read()
        writer.close()
        assert all(part in received for part in STREAM_PARTS), received
        head, payload = await raw_request(
            sock, "GET /v1.41/services HTTP/1.1\r\nHost: shoal\r\nConnection: close\r\n\r\n"
        )
        assert json.loads(payload) == {"shoal": True}
        head, _ = await raw_request(
            sock, "GET /v1.41/nodes/xyz HTTP/1.1\r\nHost: shoal\r\nConnection: close\r\n\r\n"
        )
        assert head.startswith(b"HTTP/1.1 404")
        assert seen == []  # neither reached the engine (the release has its own route)

    run(check, hijack=False)


def test_hijacked_connection_pipes_both_ways() -> None:
    async def check(sock: str, _: str, seen: list[dict[str, Any]]) -> None:
        body = b'{"Detach":false,"Tty":false}'
        reader, writer = await asyncio.open_unix_connection(sock)
        writer.write(
            b"POST /v1.41/exec/abc/start HTTP/1.1\r\nHost: shoal\r\n"
            b"Content-Type: application/json\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101")
        writer.write(b"stdin data")
        await writer.drain()
        writer.write_eof()  # stdin closed: the engine must see it and still answer
        rest = await reader.read()
        writer.close()
        assert rest == b"STDIN DATAbye"

    run(check, hijack=True)


def test_register_adds_the_catch_all_last(tmp_path: Path) -> None:
    app = shoal_app(str(tmp_path / "nowhere.sock"))
    resources = list(app.router.resources())
    assert resources[-1].canonical == "/{tail}"
