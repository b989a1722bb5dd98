"""Forwarding to upstream resolvers: real UDP sockets on loopback, time on a FakeClock."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from dnslib import RCODE, DNSRecord

from shoal.agent.network.upstream import Upstream, read_nameservers
from shoal.clock import FakeClock


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


def silent_server(addr: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A UDP socket on loopback that receives queries and answers nothing."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, port))
    s.setblocking(False)
    return s


class Answers:
    def __init__(self) -> None:
        self.got: list[DNSRecord] = []
        self.event = asyncio.Event()

    def __call__(self, raw: bytes) -> None:
        self.got.append(DNSRecord.parse(raw))
        self.event.set()


async def received(server: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.sock_recv(server, 4096), 10)


def test_no_answer_fails_over_then_servfail_on_the_clock() -> None:
    async def test() -> None:
        clock = FakeClock()
        a = silent_server("127.0.0.1")
        b = silent_server("127.0.0.2", a.getsockname()[1])  # the port is one for all
        up = Upstream(
            ["127.0.0.1", "127.0.0.2"], port=a.getsockname()[1], clock=clock, timeout_s=2.0
        )
        try:
            answers = Answers()
            q = DNSRecord.question("foo.example")
            up.forward(bytes(q.pack()), q, answers)
            sent = await received(a)
            assert sent[2:] == bytes(q.pack())[2:]  # the same query, its own ID
            await clock.advance(1.9)
            assert answers.got == []
            await clock.advance(0.2)
            # The first timed out: the second upstream is asked.
            assert (await received(b))[2:] == bytes(q.pack())[2:]
            assert answers.got == []
            await clock.advance(2.1)
            assert [r.header.rcode for r in answers.got] == [RCODE.SERVFAIL]
            assert answers.got[0].header.id == q.header.id
            assert up.statistics()["timeouts"] == 2 and up.statistics()["outstanding"] == 0
        finally:
            await up.close()
            a.close()
            b.close()

    run(test)


def test_answer_gets_the_askers_id_back() -> None:
    async def test() -> None:
        clock = FakeClock()
        server = silent_server()
        up = Upstream(["127.0.0.1"], port=server.getsockname()[1], clock=clock)
        try:
            answers = Answers()
            q = DNSRecord.question("foo.example")
            up.forward(bytes(q.pack()), q, answers)
            loop = asyncio.get_running_loop()
            data, addr = await asyncio.wait_for(loop.sock_recvfrom(server, 4096), 10)
            upstream_q = DNSRecord.parse(data)
            reply = upstream_q.reply()
            reply.header.rcode = RCODE.NXDOMAIN
            # A stray answer with another ID is not taken for it.
            stray = upstream_q.reply()
            stray.header.id = (upstream_q.header.id + 1) % 65536
            await loop.sock_sendto(server, stray.pack(), addr)
            await loop.sock_sendto(server, reply.pack(), addr)
            await asyncio.wait_for(answers.event.wait(), 10)
            assert len(answers.got) == 1
            assert answers.got[0].header.id == q.header.id
            assert answers.got[0].header.rcode == RCODE.NXDOMAIN
            assert clock.pending_timers() == 0  # the timeout was cancelled
        finally:
            await up.close()
            server.close()

    run(test)


def test_outstanding_queries_are_bounded() -> None:
    async def test() -> None:
        clock = FakeClock()
        server = silent_server()
        up = Upstream(["127.0.0.1"], port=server.getsockname()[1], clock=clock, max_outstanding=2)
        try:
            answers = Answers()
            for name in ("a.example", "b.example", "c.example"):
                q = DNSRecord.question(name)
                up.forward(bytes(q.pack()), q, answers)
            # The third is refused at once; the first two still wait.
            assert [str(r.q.qname) for r in answers.got] == ["c.example."]
            assert answers.got[0].header.rcode == RCODE.SERVFAIL
            assert up.statistics()["outstanding"] == 2 and up.statistics()["overflow"] == 1
        finally:
            await up.close()
            server.close()

    run(test)


def test_no_upstream_answers_servfail_at_once() -> None:
    async def test() -> None:
        up = Upstream([], clock=FakeClock())
        answers = Answers()
        q = DNSRecord.question("foo.example")
        up.forward(bytes(q.pack()), q, answers)
        assert answers.got[0].header.rcode == RCODE.SERVFAIL
        await up.close()

    run(test)


def test_read_nameservers(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# comment\nsearch lab\nnameserver 127.0.0.11\nnameserver 10.0.0.53\n"
        "nameserver fe80::1%eth0\nnameserver 10.0.0.54\nnameserver 10.0.0.55\noptions ndots:0\n"
    )
    assert read_nameservers(str(conf)) == ["10.0.0.53", "fe80::1", "10.0.0.54"]
    assert read_nameservers(str(tmp_path / "missing")) == []


def test_tcp_queries_go_over_tcp_and_fail_over() -> None:
    async def test() -> None:
        clock = FakeClock()
        asked: list[str] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            size = int.from_bytes(await reader.readexactly(2), "big")
            q = DNSRecord.parse(await reader.readexactly(size))
            asked.append(str(q.q.qname))
            out = bytes(q.reply().pack())
            writer.write(len(out).to_bytes(2, "big") + out)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.2", 0)
        port = server.sockets[0].getsockname()[1]
        # The first upstream refuses TCP (nothing listens there): the second answers.
        up = Upstream(["127.0.0.1", "127.0.0.2"], port=port, clock=clock)
        try:
            answers = Answers()
            q = DNSRecord.question("big.example")
            up.forward(bytes(q.pack()), q, answers, tcp=True)
            await asyncio.wait_for(answers.event.wait(), 10)
            assert answers.got[0].header.id == q.header.id
            assert answers.got[0].header.rcode == RCODE.NOERROR
            assert asked == ["big.example."]
            assert up.statistics()["tcp_failed"] == 1
        finally:
            await up.close()
            server.close()
            await server.wait_closed()

    run(test)


def test_tcp_query_to_a_silent_upstream_times_out_on_the_clock() -> None:
    async def test() -> None:
        clock = FakeClock()
        accepted = asyncio.Event()

        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.set()
            await reader.read()  # never answers; ends when the client closes
            writer.close()

        server = await asyncio.start_server(hold, "127.0.0.1", 0)
        up = Upstream(["127.0.0.1"], port=server.sockets[0].getsockname()[1], clock=clock)
        try:
            answers = Answers()
            q = DNSRecord.question("big.example")
            up.forward(bytes(q.pack()), q, answers, tcp=True)
            await asyncio.wait_for(accepted.wait(), 10)
            assert answers.got == []
            await clock.advance(2.1)
            await asyncio.wait_for(answers.event.wait(), 10)
            assert answers.got[0].header.rcode == RCODE.SERVFAIL
        finally:
            await up.close()
            server.close()
            await server.wait_closed()

    run(test)
