"""What the resolver answers, query bytes in, answer bytes out (Resolver.handle, the
function its sockets call), with the real name table and a forwarder with no upstream."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from shoal.agent.network.dns import NAME_TTL_S, Resolver, start_resolver
from shoal.agent.network.state import NetworkState
from shoal.clock import FakeClock
from shoal.types.network import Network, NetworkPeer, NetworkUpdate, ServiceEndpoint

APP = "net-app"


def peer(i: int) -> NetworkPeer:
    return NetworkPeer(
        network_id=APP,
        task_id=f"t{i}",
        node_id="n",
        node_addr="10.124.7.1",
        addr=f"10.0.1.{10 + i}",
        service_id="sid-web",
        service_name="web",
        task_name=f"web.{i}.t{i}",
        running=True,
    )


def web(n: int) -> NetworkUpdate:
    return NetworkUpdate(
        full=True,
        networks=[Network(id=APP)],
        peers=[peer(i) for i in range(n)],
        endpoints=[
            ServiceEndpoint(
                network_id=APP, service_id="sid-web", service_name="web", vip="10.0.1.2"
            )
        ],
    )


def with_resolver(test: Callable[[NetworkState, Resolver], None], **kw: object) -> None:
    async def main() -> None:
        state = NetworkState()
        resolver = start_resolver(state, upstreams=[], clock=FakeClock(), **kw)  # type: ignore[arg-type]
        try:
            test(state, resolver)
        finally:
            await resolver.close()

    asyncio.run(main())


def ask(
    resolver: Resolver, q: DNSRecord, nets: tuple[str, ...] = (APP,), tcp: bool = False
) -> DNSRecord:
    got: list[bytes] = []
    resolver.handle(bytes(q.pack()), nets, got.append, tcp=tcp)
    assert len(got) == 1
    reply = DNSRecord.parse(got[0])
    assert reply.header.id == q.header.id
    return reply


def addrs(reply: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in reply.rr]


def test_local_answer_flags_and_ttl() -> None:
    def test(state: NetworkState, resolver: Resolver) -> None:
        state.apply(web(3))
        q = DNSRecord.question("Web.")
        q.header.ad = 1
        reply = ask(resolver, q)
        assert addrs(reply) == ["10.0.1.2"]
        h = reply.header
        assert (h.aa, h.ra, h.ad, h.rcode) == (1, 1, 0, RCODE.NOERROR)
        assert reply.rr[0].ttl == NAME_TTL_S
        assert str(reply.rr[0].rname) == "Web."  # the name as asked
        v6 = ask(resolver, DNSRecord.question("web", "AAAA"))
        assert v6.header.rcode == RCODE.NOERROR and v6.rr == [] and v6.header.aa
        mx = ask(resolver, DNSRecord.question("tasks.web", "MX"))
        assert mx.header.rcode == RCODE.NOERROR and mx.rr == []

    with_resolver(test)


def test_unknown_or_other_network_names_go_to_the_forwarder() -> None:
    def test(state: NetworkState, resolver: Resolver) -> None:
        state.apply(web(1))
        # No upstream configured: SERVFAIL from the forwarder, at once.
        assert ask(resolver, DNSRecord.question("foo.example")).header.rcode == RCODE.SERVFAIL
        assert (
            ask(resolver, DNSRecord.question("web"), nets=("elsewhere",)).header.rcode
            == RCODE.SERVFAIL
        )
        assert resolver.statistics()["forwarded"] == 2

    with_resolver(test)


def test_multi_address_answers_are_shuffled_and_follow_changes() -> None:
    def test(state: NetworkState, resolver: Resolver) -> None:
        state.apply(web(5))
        firsts = set()
        for _ in range(60):
            got = addrs(ask(resolver, DNSRecord.question("tasks.web")))
            assert sorted(got) == [f"10.0.1.{10 + i}" for i in range(5)]
            firsts.add(got[0])
        assert len(firsts) > 1
        assert resolver.statistics()["cached"] > 0
        # The table changes: the next answer is the new one, not a cached one.
        state.apply(NetworkUpdate(removed_peers=[f"{APP}/t4", f"{APP}/t3"]))
        assert sorted(addrs(ask(resolver, DNSRecord.question("tasks.web")))) == [
            "10.0.1.10",
            "10.0.1.11",
            "10.0.1.12",
        ]

    with_resolver(test)


def test_cache_off_answers_the_same() -> None:
    def test(state: NetworkState, resolver: Resolver) -> None:
        state.apply(web(2))
        for _ in range(3):
            assert sorted(addrs(ask(resolver, DNSRecord.question("tasks.web")))) == [
                "10.0.1.10",
                "10.0.1.11",
            ]
        assert resolver.statistics()["cached"] == 0

    with_resolver(test, answer_cache=0)


def test_udp_answers_truncate_to_the_clients_size() -> None:
    def test(state: NetworkState, resolver: Resolver) -> None:
        state.apply(web(100))
        plain = ask(resolver, DNSRecord.question("tasks.web"))
        assert plain.header.tc and len(plain.pack()) <= 512 and 0 < len(plain.rr) < 100
        q = DNSRecord.question("tasks.web")
        q.add_ar(EDNS0(udp_len=4096))
        big = ask(resolver, q)
        assert not big.header.tc and len(big.rr) == 100
        tcp = ask(resolver, DNSRecord.question("tasks.web"), tcp=True)
        assert not tcp.header.tc and len(tcp.rr) == 100

    with_resolver(test)


def test_what_is_not_a_query_is_dropped() -> None:
    def test(state: NetworkState, resolver: Resolver) -> None:
        state.apply(web(1))
        got: list[bytes] = []
        resolver.handle(b"\x00\x01garbage", (APP,), got.append, tcp=False)
        answer = DNSRecord.question("web").reply()
        resolver.handle(bytes(answer.pack()), (APP,), got.append, tcp=False)
        assert got == [] and resolver.statistics()["malformed"] == 2

    with_resolver(test)


def test_reverse_lookup_of_a_task_address() -> None:
    def test(state: NetworkState, resolver: Resolver) -> None:
        state.apply(web(2))
        reply = ask(resolver, DNSRecord.question("11.1.0.10.in-addr.arpa", "PTR"))
        assert [str(rr.rdata) for rr in reply.rr] == ["web.1.t1."]
        assert reply.rr[0].rtype == QTYPE.PTR and reply.header.aa
        # An address that is no task's: forwarded (no upstream here: SERVFAIL).
        other = ask(resolver, DNSRecord.question("99.1.0.10.in-addr.arpa", "PTR"))
        assert other.header.rcode == RCODE.SERVFAIL

    with_resolver(test)
