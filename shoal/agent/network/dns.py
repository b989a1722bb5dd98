"""The node's DNS resolver: every task's 127.0.0.11:53, served inside the task's own
network namespace by the daemon's event loop (docs/networking.md "DNS").

The plumbing tells the resolver when a task's namespace is ready and gone (it is a
`TaskNetworkListener`); the resolver then binds a UDP and a TCP socket at
127.0.0.11:53 in that namespace (nsbind.py) and remembers which task, so which networks,
each socket serves. A query is answered from the name table (names.py) on those networks
only; a name none of them knows is forwarded to the node's upstreams (upstream.py), as
Docker does, even when it is a swarm name on some other network.

Answers carry AA, RA (the resolver does recurse, through its upstreams: dig would
otherwise warn) and never AD (nothing was validated); their TTL is NAME_TTL_S. Local
answers are kept packed until the table changes (ANSWER_CACHE_MAX), so a repeated query
is a dict hit; PTR queries for running tasks' addresses answer their names.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Protocol, cast

from dnslib import AAAA, PTR, QTYPE, RR, A, DNSError, DNSRecord

from shoal.agent.network.names import NameTable, key
from shoal.agent.network.nsbind import NetnsGone, bind_in_netns
from shoal.agent.network.state import NetworkState, TaskNetworkListener
from shoal.agent.network.upstream import (
    DNS_PORT,
    RESOLV_CONF,
    TASK_RESOLVER_ADDR,
    UPSTREAM_TIMEOUT_S,
    Reply,
    Upstream,
    read_nameservers,
)
from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.log import get_logger

log = get_logger("shoal.agent.network.dns")

# Docker's embedded resolver answers with TTL 600 and relies on clients not caching (libc
# does not). Answers here must follow a scale or a failed task within a second even for
# a client that does cache (nscd, a local dnsmasq, a JVM): TTL 0, "do not cache", as
# Consul answers by default.
NAME_TTL_S = 0
# Largest UDP answer without EDNS0 (RFC 1035); larger ones are cut, with TC set, and the
# client asks again over TCP.
UDP_MAX = 512
TCP_MAX = 65535
# A TCP client that sends nothing for this long is closed.
TCP_IDLE_S = 10.0
# Answers from the table are kept, packed, keyed by the query as sent (all but its ID)
# and the asker's networks, until the table changes: a repeated query is then a dict
# hit with the asker's ID put in front. At most this many; all dropped when full.
ANSWER_CACHE_MAX = 4096
# A multi-address answer is kept in this many shuffled orders, one picked at random.
ANSWER_VARIANTS = 8


@dataclass
class _Served:
    """One task's resolver: its sockets and the networks it answers from."""

    task_id: str
    network_ids: tuple[str, ...]
    udp: asyncio.DatagramTransport | None = None
    udp_protocol: _UDPProtocol | None = None
    tcp: asyncio.AbstractServer | None = None
    conns: set[asyncio.StreamWriter] = field(default_factory=set)


@dataclass
class _Cached:
    answers: list[bytes]
    complete: bool


class _UDPProtocol(asyncio.DatagramProtocol):
    def __init__(self, resolver: Resolver, served: _Served) -> None:
        self._resolver = resolver
        self._served = served
        self._transport: asyncio.DatagramTransport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        transport = self._transport
        assert transport is not None

        def send(out: bytes) -> None:
            if not transport.is_closing():
                transport.sendto(out, addr)

        self._resolver.handle_safely(data, self._served, send, tcp=False)

    def error_received(self, exc: Exception) -> None:
        log.debug("dns socket error", task=self._served.task_id, error=str(exc))


class Resolver:
    """Answers the tasks of this node (see the module docstring). Build it with
    `start_resolver`; hand it to the plumbing as a TaskNetworkListener."""

    def __init__(
        self,
        names: NameTable,
        upstream: Upstream,
        *,
        listen_addr: str = TASK_RESOLVER_ADDR,
        port: int = DNS_PORT,
        clock: Clock = SYSTEM_CLOCK,
        answer_cache: int = ANSWER_CACHE_MAX,
    ) -> None:
        self.names = names
        self._cache_max = answer_cache
        self.upstream = upstream
        self._addr = listen_addr
        self._port = port
        self._clock = clock
        self._served: dict[str, _Served] = {}
        # (query but its ID, networks, tcp) -> packed answers: one, or once complete
        # ANSWER_VARIANTS shuffled orders (a list still filling is not served from)
        self._cache: dict[tuple[bytes, tuple[str, ...], bool], _Cached] = {}
        self._cache_version = names.version
        self._stats = dict.fromkeys(
            ("queries", "local", "cached", "forwarded", "malformed", "errors", "truncated"), 0
        ) | dict.fromkeys(("attached", "netns_missing", "bind_failed"), 0)

    def statistics(self) -> dict[str, int]:
        return {
            **self._stats,
            "tasks": len(self._served),
            **{f"upstream_{k}": v for k, v in self.upstream.statistics().items()},
            **self.names.statistics(),
        }

    # ---- TaskNetworkListener ----

    async def task_attached(self, task_id: str, netns: str, network_ids: list[str]) -> None:
        await self.task_detached(task_id)
        served = _Served(task_id, tuple(network_ids))
        self._served[task_id] = served
        try:
            udp, tcp = await bind_in_netns(netns, self._addr, self._port)
        except NetnsGone:
            self._stats["netns_missing"] += 1
            log.warning(
                "task namespace gone before its resolver started", task=task_id, netns=netns
            )
            self._served.pop(task_id, None)
            return
        except OSError as e:
            self._stats["bind_failed"] += 1
            log.error("task resolver could not bind", task=task_id, netns=netns, error=str(e))
            self._served.pop(task_id, None)
            return
        if self._served.get(task_id) is not served:  # detached while binding
            udp.close()
            tcp.close()
            return
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: _UDPProtocol(self, served), sock=udp
            )
            served.udp, served.udp_protocol = transport, protocol
            served.tcp = await asyncio.start_server(
                lambda r, w: self._serve_tcp(served, r, w), sock=tcp
            )
        except BaseException:
            self._served.pop(task_id, None)
            if served.udp is None:
                udp.close()
            if served.tcp is None:
                tcp.close()
            await self._close(served)
            raise
        if self._served.get(task_id) is not served:
            await self._close(served)
            return
        self._stats["attached"] += 1
        log.debug("task resolver serving", task=task_id, networks=list(network_ids))

    async def task_detached(self, task_id: str) -> None:
        served = self._served.pop(task_id, None)
        if served is not None:
            await self._close(served)

    def serving(self) -> list[str]:
        """The tasks served (or being set up)."""
        return list(self._served)

    async def close(self) -> None:
        for task_id in list(self._served):
            await self.task_detached(task_id)
        await self.upstream.close()

    @staticmethod
    async def _close(served: _Served) -> None:
        """Close the task's sockets; on return 127.0.0.11:53 is free in its namespace."""
        if served.tcp is not None:
            served.tcp.close()  # the listening socket is closed at once
        for w in served.conns:
            w.close()
        if served.udp is not None:
            served.udp.close()  # closed on the loop's next turn
            if served.udp_protocol is not None:
                await served.udp_protocol.closed

    # ---- answering ----

    def handle_safely(self, data: bytes, served: _Served, send: Reply, *, tcp: bool) -> None:
        try:
            self.handle(data, served.network_ids, send, tcp=tcp)
        except Exception:  # one bad query must not stop the task's resolver
            self._stats["errors"] += 1
            log.exception("dns query failed", task=served.task_id)

    def handle(self, data: bytes, network_ids: tuple[str, ...], send: Reply, *, tcp: bool) -> None:
        """Answer one query from a task on `network_ids`: `send(answer)`, now or (when
        forwarded) later; nothing for what is not a query."""
        self._stats["queries"] += 1
        if self.names.version != self._cache_version:
            self._cache.clear()
            self._cache_version = self.names.version
        ck = (data[2:], network_ids, tcp)
        cached = self._cache.get(ck)
        if cached is not None and cached.complete:
            self._stats["local"] += 1
            self._stats["cached"] += 1
            answers = cached.answers
            send(data[:2] + (answers[0] if len(answers) == 1 else random.choice(answers))[2:])
            return
        try:
            record = DNSRecord.parse(data)
        except (DNSError, ValueError, IndexError):
            self._stats["malformed"] += 1
            return
        if record.header.qr or not record.questions:
            self._stats["malformed"] += 1
            return
        q = record.q
        name = key(str(q.qname))
        if q.qtype == QTYPE.PTR:
            target = self.names.lookup_ptr(name, network_ids)
            if target is not None:
                self._stats["local"] += 1
                send(self._answer_ptr(record, target))
                return
        found = self.names.lookup(name, network_ids)
        if found is None:
            self._stats["forwarded"] += 1
            self.upstream.forward(data, record, send, tcp=tcp)
            return
        self._stats["local"] += 1
        out, shuffled = self._answer(record, found, TCP_MAX if tcp else _udp_limit(record))
        if cached is None and self._cache_max > 0:
            if len(self._cache) >= self._cache_max:
                self._cache.clear()
            self._cache[ck] = _Cached([out], complete=not shuffled)
        elif cached is not None:
            cached.answers.append(out)
            cached.complete = len(cached.answers) >= ANSWER_VARIANTS
        send(out)

    @staticmethod
    def _answer_ptr(record: DNSRecord, target: str) -> bytes:
        reply = record.reply()
        reply.header.aa, reply.header.ad, reply.header.ra = 1, 0, 1
        reply.add_answer(RR(record.q.qname, QTYPE.PTR, rdata=PTR(target + "."), ttl=NAME_TTL_S))
        return bytes(reply.pack())

    def _answer(self, record: DNSRecord, addrs: tuple[str, ...], limit: int) -> tuple[bytes, bool]:
        """The packed answer, and whether its order was shuffled."""
        reply = record.reply()
        reply.header.aa = 1
        reply.header.ad = 0
        reply.header.ra = 1
        q = record.q
        shuffled = False
        if q.qtype in (QTYPE.A, QTYPE.AAAA):
            v6 = q.qtype == QTYPE.AAAA
            rdata = AAAA if v6 else A
            picked = [a for a in addrs if (":" in a) == v6]
            if len(picked) > 1:
                random.shuffle(picked)  # spread clients over the tasks, as Docker does
                shuffled = True
            for a in picked:
                reply.add_answer(RR(q.qname, q.qtype, rdata=rdata(a), ttl=NAME_TTL_S))
        # Any other type of a known name: NOERROR with no records (the name exists).
        out = bytes(reply.pack())
        if len(out) > limit:
            self._stats["truncated"] += 1
            reply.header.tc = 1
            while reply.rr and len(out) > limit:
                reply.rr.pop()
                out = bytes(reply.pack())
        return out, shuffled

    async def _serve_tcp(
        self, served: _Served, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        served.conns.add(writer)
        try:
            while True:
                try:
                    head = await self._clock.wait_for(reader.readexactly(2), TCP_IDLE_S)
                    data = await self._clock.wait_for(
                        reader.readexactly(int.from_bytes(head, "big")), TCP_IDLE_S
                    )
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    return

                def send(out: bytes) -> None:
                    if not writer.is_closing():
                        writer.write(len(out).to_bytes(2, "big") + out)

                self.handle_safely(data, served, send, tcp=True)
        finally:
            served.conns.discard(writer)
            writer.close()


def _udp_limit(record: DNSRecord) -> int:
    # An EDNS0 OPT record's class is the largest UDP payload the client takes.
    for rr in record.ar:
        if rr.rtype == QTYPE.OPT:
            return max(UDP_MAX, min(int(rr.rclass), TCP_MAX))
    return UDP_MAX


class _Announcer(Protocol):
    """What tells listeners of task namespaces (the Plumbing)."""

    def add_listener(self, listener: TaskNetworkListener) -> None: ...


def start_resolver(
    state: NetworkState,
    plumbing: _Announcer | None = None,
    *,
    resolv_conf: str = RESOLV_CONF,
    upstreams: list[str] | None = None,
    upstream_port: int = DNS_PORT,
    upstream_timeout_s: float = UPSTREAM_TIMEOUT_S,
    listen_addr: str = TASK_RESOLVER_ADDR,
    port: int = DNS_PORT,
    clock: Clock = SYSTEM_CLOCK,
    answer_cache: int = ANSWER_CACHE_MAX,
) -> Resolver:
    """The node's resolver, following `state` (the agent's NetworkState) and told of task
    namespaces by `plumbing` (registered as its listener here: do it before
    `plumbing.start()`, whose adoption announces the namespaces kept). Call on the
    daemon's event loop, in the node's own namespace (the forwarding sockets are made
    there); `await resolver.close()` at shutdown."""
    servers = read_nameservers(resolv_conf) if upstreams is None else upstreams
    log.info("dns resolver started", upstreams=servers)
    resolver = Resolver(
        NameTable(state),
        Upstream(servers, port=upstream_port, clock=clock, timeout_s=upstream_timeout_s),
        listen_addr=listen_addr,
        port=port,
        clock=clock,
        answer_cache=answer_cache,
    )
    if plumbing is not None:
        plumbing.add_listener(resolver)
    return resolver
