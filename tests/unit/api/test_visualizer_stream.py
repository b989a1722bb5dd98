"""The visualizer's stream on a real socket, time on a FakeClock: a heartbeat while
nothing happens, and a browser that stops reading cut off after WRITE_TIMEOUT_S,
its place in the feed given back, whatever it left unread."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import msgspec
from aiohttp import web

from shoal.api.visualizer import HEARTBEAT_S, WRITE_TIMEOUT_S, build_app
from shoal.clock import FakeClock
from shoal.manager.manager import Manager
from shoal.manager.store import Event, MemoryBackend, Store
from shoal.types.node import NodeDescription

from ..agent.awaiting import until
from ..manager.test_store import make_node

REQUEST = b"GET /visualizer/events HTTP/1.1\r\nHost: x\r\n\r\n"


@dataclass
class Node:
    """The daemon as the API sees it, with a real manager (its loops not started)."""

    manager: Manager
    locked: bool = False
    node_id: str = "n1"

    async def store_moved(self) -> None:
        return None


@asynccontextmanager
async def serving(clock: FakeClock) -> AsyncIterator[tuple[Manager, int]]:
    manager = Manager(Store(MemoryBackend(), clock), clock)
    runner = web.AppRunner(build_app(Node(manager)), handler_cancellation=True)  # type: ignore[arg-type]
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield manager, port
    finally:
        manager.visualizer.stop()
        await runner.cleanup()
        manager.store.close()


async def wait_real(predicate: Callable[[], bool], what: str) -> None:
    """Socket I/O happens in real time: let the loop turn (zero sleeps, nothing waited
    for by a clock) until `predicate()` holds."""
    try:
        await until(predicate)
    except TimeoutError:
        raise AssertionError(f"never: {what}") from None


def test_an_idle_stream_gets_a_heartbeat() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        async with serving(clock) as (manager, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(REQUEST)
            head = await reader.readuntil(b"event: snapshot\n")
            assert b"200 OK" in head and b"text/event-stream" in head
            await reader.readuntil(b"\n\n")  # the snapshot's data
            await clock.advance(HEARTBEAT_S)
            assert b": keepalive\n\n" in await asyncio.wait_for(reader.readuntil(b"\n\n"), 5)
            writer.close()
            await wait_real(
                lambda: manager.visualizer.statistics()["subscribers"] == 0,
                "the subscriber of the closed connection to go",
            )

    asyncio.run(scenario())


def test_a_browser_that_stops_reading_is_cut_off_and_its_place_given_back() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        async with serving(clock) as (manager, port):
            feed = manager.visualizer
            client = socket.socket()
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.connect(("127.0.0.1", port))
            client.sendall(REQUEST)
            await wait_real(lambda: feed.statistics()["subscribers"] == 1, "the stream")
            # Far more than the socket buffers hold (8 KiB a change, 24 MiB in all), and
            # fewer changes than a subscriber may queue: the server's write blocks.
            node = msgspec.structs.replace(
                make_node("n1"), description=NodeDescription(hostname="h" * 8192)
            )
            for _ in range(30):
                feed.publish([Event("update", "node", node)] * 100)
                await asyncio.sleep(0)  # the server writes what it can
            assert feed.statistics()["slow_closed"] == 0
            assert feed.statistics()["subscribers"] == 1  # blocked, still attached
            await clock.advance(WRITE_TIMEOUT_S)
            await wait_real(
                lambda: feed.statistics()["subscribers"] == 0,
                "the browser that stopped reading to be cut off",
            )
            client.setblocking(False)
            got = b""
            try:
                while chunk := client.recv(1 << 20):
                    got += chunk
            except BlockingIOError:
                raise AssertionError("the connection is still open") from None
            except ConnectionResetError:
                pass  # aborted with data unread: a reset
            client.close()

    asyncio.run(scenario())
