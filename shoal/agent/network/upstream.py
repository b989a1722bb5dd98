"""Forwarding the names the swarm does not answer to the node's own resolvers.

The upstreams are the `nameserver` lines of the node's /etc/resolv.conf as read when the
agent starts (at most three, as the libc resolver and Docker take; 127.0.0.11, the
tasks' own resolver address, is skipped). The forwarding sockets live in the node's
namespace (the daemon's): one connected UDP socket per upstream, so only that server's
answers are read and an ICMP error from it is seen at once.

Each UDP query gets a fresh random ID on the way out (the asker's is put back on the
way in); a query that came over TCP (after a truncated UDP answer) goes over TCP, one
connection per query. Either waits at most UPSTREAM_TIMEOUT_S for each upstream in
turn, and when none answers, or one cannot be reached (no route, refused), the asker gets SERVFAIL. At most
MAX_OUTSTANDING queries wait at once (Docker's bound); beyond that the asker gets
SERVFAIL at once rather than queueing without bound.
"""

from __future__ import annotations

import asyncio
import errno
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from dnslib import RCODE, DNSRecord

from shoal.clock import SYSTEM_CLOCK, Clock, TimerHandle
from shoal.log import get_logger

log = get_logger("shoal.agent.network.dns")

RESOLV_CONF = "/etc/resolv.conf"
DNS_PORT = 53
# The libc resolver reads at most three nameservers (MAXNS); Docker forwards to three.
MAX_UPSTREAMS = 3
# The address every task's resolv.conf names: ours, so never an upstream.
TASK_RESOLVER_ADDR = "127.0.0.11"
# How long one upstream may take to answer before the next is tried. Shorter than a
# libc client's own 5 s timeout, so the asker hears SERVFAIL before it gives up.
UPSTREAM_TIMEOUT_S = 2.0
# Queries forwarded and not yet answered, at most (Docker's maxConcurrent).
MAX_OUTSTANDING = 100
# An upstream that could not be reached is not tried again for this long.
UPSTREAM_RETRY_S = 5.0
MAX_MESSAGE = 65535

Reply = Callable[[bytes], None]


def read_nameservers(path: str = RESOLV_CONF) -> list[str]:
    """The upstreams named by a resolv.conf, in order, without ours; [] if unreadable."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        log.warning("no upstream resolvers: resolv.conf unreadable", path=path, error=str(e))
        return []
    servers: list[str] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver" and fields[1] != TASK_RESOLVER_ADDR:
            servers.append(fields[1].split("%")[0])
    return servers[:MAX_UPSTREAMS]


def servfail(query: DNSRecord) -> bytes:
    reply = query.reply()
    reply.header.rcode = RCODE.SERVFAIL
    reply.header.aa = 0
    reply.header.ad = 0
    return bytes(reply.pack())


@dataclass
class _Pending:
    query: bytes  # as the asker sent it (its own ID)
    record: DNSRecord
    reply: Reply
    server: int  # index of the upstream it waits on
    timer: TimerHandle | None = None


class _Server:
    def __init__(self, addr: str, port: int) -> None:
        self.addr = addr
        self.port = port
        self.sock: socket.socket | None = None
        self.down_until = 0.0


class Upstream:
    """Forwards raw queries; `forward(query, record, reply)` calls `reply` exactly once
    with the answer (or SERVFAIL), unless the forwarder is closed first."""

    def __init__(
        self,
        servers: list[str],
        *,
        port: int = DNS_PORT,
        clock: Clock = SYSTEM_CLOCK,
        timeout_s: float = UPSTREAM_TIMEOUT_S,
        max_outstanding: int = MAX_OUTSTANDING,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._servers = [_Server(a, port) for a in servers[:MAX_UPSTREAMS]]
        self._clock = clock
        self._timeout_s = timeout_s
        self._max = max_outstanding
        self._pending: dict[tuple[int, int], _Pending] = {}
        self._stats = dict.fromkeys(
            ("forwarded", "answered", "timeouts", "unreachable", "overflow", "servfail"), 0
        ) | {"tcp_failed": 0}
        self._tcp: set[asyncio.Task[None]] = set()  # queries forwarded over TCP

    @property
    def servers(self) -> list[str]:
        return [s.addr for s in self._servers]

    def statistics(self) -> dict[str, int]:
        return {**self._stats, "outstanding": len(self._pending) + len(self._tcp)}

    def forward(self, query: bytes, record: DNSRecord, reply: Reply, *, tcp: bool = False) -> None:
        """Over UDP; or, for a query that came over TCP (a client whose UDP answer was
        truncated), over TCP, one connection per query, as Docker does."""
        if len(self._pending) + len(self._tcp) >= self._max:
            self._stats["overflow"] += 1
            self._fail(record, reply)
            return
        self._stats["forwarded"] += 1
        if tcp:
            task = self._loop.create_task(self._forward_tcp(query, record, reply))
            self._tcp.add(task)
            task.add_done_callback(self._tcp.discard)
        else:
            self._send(_Pending(query, record, reply, server=0))

    async def _forward_tcp(self, query: bytes, record: DNSRecord, reply: Reply) -> None:
        for server in self._servers:
            if self._clock.monotonic() < server.down_until:
                continue
            try:
                answer = await self._clock.wait_for(
                    self._exchange_tcp(server, query), self._timeout_s
                )
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as e:
                self._stats["tcp_failed"] += 1
                log.debug("upstream TCP query failed", upstream=server.addr, error=repr(e))
                continue
            self._stats["answered"] += 1
            reply(answer)
            return
        self._fail(record, reply)

    @staticmethod
    async def _exchange_tcp(server: _Server, query: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(server.addr, server.port)
        try:
            writer.write(len(query).to_bytes(2, "big") + query)
            await writer.drain()
            size = int.from_bytes(await reader.readexactly(2), "big")
            return await reader.readexactly(size)
        finally:
            writer.close()

    async def close(self) -> None:
        tasks = list(self._tcp)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for p in self._pending.values():
            if p.timer is not None:
                p.timer.cancel()
        self._pending.clear()
        for s in self._servers:
            self._close_server(s)

    # ---- the path of one query ----

    def _send(self, p: _Pending) -> None:
        """Send `p` to its upstream, or the next one that can be reached; SERVFAIL when
        none is left."""
        while p.server < len(self._servers):
            server = self._servers[p.server]
            sock = self._socket(server)
            if sock is not None:
                qid = self._fresh_id(p.server)
                try:
                    sock.send(qid.to_bytes(2, "big") + p.query[2:])
                except OSError as e:
                    self._unreachable(server, e)
                else:
                    k = (p.server, qid)
                    self._pending[k] = p
                    p.timer = self._clock.call_later(self._timeout_s, partial(self._timed_out, k))
                    return
            p.server += 1
        self._fail(p.record, p.reply)

    def _fresh_id(self, server: int) -> int:
        while True:
            qid = random.getrandbits(16)
            if (server, qid) not in self._pending:
                return qid

    def _timed_out(self, k: tuple[int, int]) -> None:
        p = self._pending.pop(k, None)
        if p is None:
            return
        self._stats["timeouts"] += 1
        p.timer = None
        p.server += 1
        self._send(p)

    def _received(self, index: int) -> None:
        server = self._servers[index]
        sock = server.sock
        while sock is not None:
            try:
                data = sock.recv(MAX_MESSAGE)
            except BlockingIOError:
                return
            except OSError as e:  # an ICMP error from the upstream: fail over at once
                self._unreachable(server, e)
                return
            if len(data) < 12:
                continue
            p = self._pending.pop((index, int.from_bytes(data[:2], "big")), None)
            if p is None:
                continue  # late (timed out already) or not ours
            if p.timer is not None:
                p.timer.cancel()
            self._stats["answered"] += 1
            p.reply(p.query[:2] + data[2:])

    def _fail(self, record: DNSRecord, reply: Reply) -> None:
        self._stats["servfail"] += 1
        reply(servfail(record))

    # ---- sockets ----

    def _socket(self, server: _Server) -> socket.socket | None:
        if server.sock is not None:
            return server.sock
        if self._clock.monotonic() < server.down_until:
            return None
        family = socket.AF_INET6 if ":" in server.addr else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.connect((server.addr, server.port))
        except OSError as e:
            sock.close()
            self._unreachable(server, e)
            return None
        server.sock = sock
        index = self._servers.index(server)
        self._loop.add_reader(sock.fileno(), self._received, index)
        return sock

    def _unreachable(self, server: _Server, e: OSError) -> None:
        self._stats["unreachable"] += 1
        if server.down_until <= self._clock.monotonic():
            log.warning(
                "upstream resolver unreachable",
                upstream=server.addr,
                error=errno.errorcode.get(e.errno or 0, str(e)),
            )
        server.down_until = self._clock.monotonic() + UPSTREAM_RETRY_S
        self._close_server(server)
        # What waits on it goes on to the next upstream now, not at its timeout.
        index = self._servers.index(server)
        for k in [k for k in self._pending if k[0] == index]:
            p = self._pending.pop(k)
            if p.timer is not None:
                p.timer.cancel()
            p.server += 1
            self._send(p)

    def _close_server(self, server: _Server) -> None:
        if server.sock is not None:
            self._loop.remove_reader(server.sock.fileno())
            server.sock.close()
            server.sock = None
