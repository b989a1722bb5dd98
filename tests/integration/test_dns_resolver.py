"""The node's DNS resolver serving inside real network namespaces.

Each test creates its namespaces (named with a random suffix, removed by those names
afterwards, even on failure), runs a real Resolver (start_resolver) on its own event
loop, as the daemon does, and asks it from inside a namespace: with busybox nslookup, as
a task would, or with a small dnslib client run there (tests/integration/dns_client.py)
when the test needs the flags, the ID or TCP. Forwarded names go to a fake upstream, a
dnslib server the test runs on loopback in the node's namespace.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import uvloop
from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from shoal.agent.network.dns import Resolver, start_resolver
from shoal.agent.network.plumbing import Plumbing
from shoal.agent.network.state import NetworkState
from shoal.types.network import (
    VXLAN_ID_OPTION,
    Driver,
    IPAMConfig,
    IPAMOptions,
    Network,
    NetworkAttachment,
    NetworkPeer,
    NetworkUpdate,
    ServiceEndpoint,
)

from .cluster_harness import NetnsLab

pytestmark = pytest.mark.integration

APP = "net-app"
OTHER = "net-other"
VIP = "10.0.1.2"
# A guard against a hang (a resolver that never answers), not a timing assert.
CLIENT_TIMEOUT_S = 30
CLIENT = Path(__file__).with_name("dns_client.py")


# ---- namespaces ----


class Namespaces:
    def __init__(self) -> None:
        self.made: list[str] = []

    def add(self) -> str:
        name = f"shoal-dns-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.made.append(name)
        return name

    def remove(self, name: str) -> None:
        subprocess.run(["ip", "netns", "del", name], check=True)
        self.made.remove(name)


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    ns = Namespaces()
    try:
        yield ns
    finally:
        for name in list(ns.made):
            ns.remove(name)
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert not any(n in left for n in ns.made)


def netns_path(name: str) -> str:
    return f"/run/netns/{name}"


# ---- what the manager would send ----


def peer(
    task: str, addr: str, net: str = APP, svc: str = "web", running: bool = True
) -> NetworkPeer:
    return NetworkPeer(
        network_id=net,
        task_id=task,
        node_id="node-1",
        node_addr="10.124.7.1",
        addr=addr,
        service_id=f"sid-{svc}",
        service_name=svc,
        task_name=f"{svc}.1.{task}",
        running=running,
    )


def web(n: int, vip: str | None = VIP, aliases: list[str] | None = None) -> NetworkUpdate:
    return NetworkUpdate(
        full=True,
        networks=[Network(id=APP), Network(id=OTHER)],
        peers=[peer(f"t{i}", f"10.0.1.{10 + i}") for i in range(n)]
        + [peer("d0", "10.0.2.10", net=OTHER, svc="db")],
        endpoints=[
            ServiceEndpoint(
                network_id=APP,
                service_id="sid-web",
                service_name="web",
                vip=vip,
                aliases=aliases or [],
            ),
            ServiceEndpoint(
                network_id=OTHER, service_id="sid-db", service_name="db", vip="10.0.2.2"
            ),
        ],
    )


# ---- a fake upstream resolver ----


class FakeUpstream(asyncio.DatagramProtocol):
    """Answers foo.example. with 10.9.9.9, big.example. with 60 addresses (over UDP: cut
    to the header with TC, as a real server does past 512 bytes), every other name
    NXDOMAIN; over UDP and TCP on one port. `silent` answers nothing. Records the names
    asked, and over which protocol."""

    def __init__(self, silent: bool = False) -> None:
        self.silent = silent
        self.asked: list[str] = []
        self.asked_tcp: list[str] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.tcp: asyncio.AbstractServer | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if self.tcp is not None:
            self.tcp.close()

    def answer(self, q: DNSRecord) -> DNSRecord:
        reply = q.reply()
        reply.header.aa = 0  # a recursive resolver's answer
        name = str(q.q.qname)
        if name == "foo.example." and q.q.qtype == QTYPE.A:
            reply.add_answer(RR(name, QTYPE.A, rdata=A("10.9.9.9"), ttl=60))
        elif name == "big.example." and q.q.qtype == QTYPE.A:
            for i in range(60):
                reply.add_answer(RR(name, QTYPE.A, rdata=A(f"10.9.8.{i + 1}"), ttl=60))
        else:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        q = DNSRecord.parse(data)
        self.asked.append(str(q.q.qname))
        if self.silent:
            return
        out = bytes(self.answer(q).pack())
        if len(out) > 512:
            out = bytes(self.answer(q).truncate().pack())
        assert self.transport is not None
        self.transport.sendto(out, addr)

    async def serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            size = int.from_bytes(await reader.readexactly(2), "big")
            q = DNSRecord.parse(await reader.readexactly(size))
            self.asked_tcp.append(str(q.q.qname))
            out = bytes(self.answer(q).pack())
            writer.write(len(out).to_bytes(2, "big") + out)
            await writer.drain()
        finally:
            writer.close()


async def fake_upstream(silent: bool = False) -> tuple[FakeUpstream, int]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        lambda: FakeUpstream(silent), local_addr=("127.0.0.1", 0)
    )
    port = transport.get_extra_info("sockname")[1]
    proto.tcp = await asyncio.start_server(proto.serve_tcp, "127.0.0.1", port)
    return proto, port


def closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- asking from inside a namespace ----


async def run_in(ns: str, *argv: str) -> tuple[int, str]:
    return await _run("ip", "netns", "exec", ns, *argv)


async def run_in_path(netns: str, *argv: str) -> tuple[int, str]:
    return await _run("nsenter", f"--net={netns}", *argv)


async def _run(*argv: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), CLIENT_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode()


async def nslookup(ns: str, name: str) -> set[str]:
    """The IPv4 addresses busybox nslookup shows for `name` (empty when none)."""
    _, out = await run_in(ns, "busybox", "nslookup", "-type=a", name, "127.0.0.11")
    lines = out.splitlines()
    # The server's own "Address: 127.0.0.11:53" comes before the first "Name:".
    start = next((i for i, line in enumerate(lines) if line.startswith("Name:")), len(lines))
    return {line.split()[1] for line in lines[start:] if line.startswith("Address:")}


async def ask(ns: str, name: str, qtype: str = "A", tcp: bool = False) -> dict:
    argv = [sys.executable, str(CLIENT), name, qtype] + (["--tcp"] if tcp else [])
    code, out = await run_in(ns, *argv)
    assert code == 0, out
    return json.loads(out)


def run(test: Callable[[], Awaitable[None]]) -> None:
    # On uvloop, as the daemon runs (shoal/cli/main.py).
    uvloop.run(test())  # type: ignore[arg-type]


async def serving(
    state: NetworkState, *attach: tuple[str, str, list[str]], **kw: object
) -> Resolver:
    resolver = start_resolver(state, **kw)  # type: ignore[arg-type]
    for task_id, ns, nets in attach:
        await resolver.task_attached(task_id, netns_path(ns), nets)
    return resolver


# ---- tests ----


def test_a_task_resolves_service_names_on_its_networks(namespaces: Namespaces) -> None:
    ns = namespaces.add()

    async def test() -> None:
        upstream, port = await fake_upstream()
        state = NetworkState()
        state.apply(web(3, aliases=["frontend"]))
        resolver = await serving(
            state, ("c1", ns, [APP]), upstreams=["127.0.0.1"], upstream_port=port
        )
        try:
            assert await nslookup(ns, "tasks.web") == {"10.0.1.10", "10.0.1.11", "10.0.1.12"}
            assert await nslookup(ns, "web") == {VIP}
            assert await nslookup(ns, "FrontEnd") == {VIP}
            assert await nslookup(ns, "web.1.t2") == {"10.0.1.12"}
            # Scaled to 5: the next query sees five.
            state.apply(NetworkUpdate(peers=[peer("t3", "10.0.1.13"), peer("t4", "10.0.1.14")]))
            assert len(await nslookup(ns, "tasks.web")) == 5
            # A task stops running: gone from the answers.
            state.apply(NetworkUpdate(peers=[peer("t0", "10.0.1.10", running=False)]))
            assert "10.0.1.10" not in await nslookup(ns, "tasks.web")
            # dnsrr: the service name itself answers with the running tasks.
            state.apply(web(2, vip=None))
            assert await nslookup(ns, "web") == {"10.0.1.10", "10.0.1.11"}
            assert upstream.asked == []  # nothing of the swarm's own went upstream
        finally:
            await resolver.close()
            upstream.close()

    run(test)


def test_names_are_scoped_to_the_askers_networks(namespaces: Namespaces) -> None:
    on_app, on_other = namespaces.add(), namespaces.add()

    async def test() -> None:
        upstream, port = await fake_upstream()
        state = NetworkState()
        state.apply(web(3))
        resolver = await serving(
            state,
            ("c1", on_app, [APP]),
            ("c2", on_other, [OTHER]),
            upstreams=["127.0.0.1"],
            upstream_port=port,
        )
        try:
            assert await nslookup(on_other, "db") == {"10.0.2.2"}
            assert await nslookup(on_app, "db") == set()
            # Not on its networks: forwarded (as Docker does), and upstream knows nothing.
            answer = await ask(on_other, "web")
            assert answer["rcode"] == "NXDOMAIN" and answer["answers"] == []
            assert "web." in upstream.asked
            assert await nslookup(on_other, "tasks.web") == set()
            assert await nslookup(on_app, "tasks.web") == {"10.0.1.10", "10.0.1.11", "10.0.1.12"}
        finally:
            await resolver.close()
            upstream.close()

    run(test)


def test_other_names_are_forwarded_upstream(namespaces: Namespaces) -> None:
    ns = namespaces.add()

    async def test() -> None:
        upstream, port = await fake_upstream()
        state = NetworkState()
        state.apply(web(1))
        resolver = await serving(
            state, ("c1", ns, [APP]), upstreams=["127.0.0.1"], upstream_port=port
        )
        try:
            forwarded = await ask(ns, "foo.example")
            assert forwarded["id_matches"] and forwarded["rcode"] == "NOERROR"
            assert forwarded["answers"] == ["10.9.9.9"]
            assert not forwarded["aa"]  # the upstream's answer, relayed
            assert (await ask(ns, "nothere.example"))["rcode"] == "NXDOMAIN"
            assert upstream.asked == ["foo.example.", "nothere.example."]
            # Too big for UDP upstream: truncated; the client's TCP retry goes over TCP.
            assert (await ask(ns, "big.example"))["tc"]
            big = await ask(ns, "big.example", tcp=True)
            assert len(big["answers"]) == 60 and big["id_matches"] and not big["tc"]
            assert upstream.asked_tcp == ["big.example."]
            # The swarm's own answers: authoritative; AAAA of a known name is NODATA.
            local = await ask(ns, "WEB.")
            assert local["aa"] and not local["ad"] and local["answers"] == [VIP]
            v6 = await ask(ns, "web", "AAAA")
            assert v6["rcode"] == "NOERROR" and v6["answers"] == [] and v6["aa"]
            assert resolver.statistics()["upstream_answered"] == 4
        finally:
            await resolver.close()
            upstream.close()

    run(test)


def test_unreachable_or_silent_upstream_answers_servfail(namespaces: Namespaces) -> None:
    ns = namespaces.add()

    async def test() -> None:
        state = NetworkState()
        state.apply(web(1))
        # Nothing listens: the ICMP error fails the query over at once.
        refused = await serving(
            state, ("c1", ns, [APP]), upstreams=["127.0.0.1"], upstream_port=closed_udp_port()
        )
        try:
            assert (await ask(ns, "foo.example"))["rcode"] == "SERVFAIL"
            assert (await ask(ns, "web"))["answers"] == [VIP]
            assert refused.statistics()["upstream_unreachable"] >= 1
        finally:
            await refused.close()
        # Two upstreams that never answer: each waits its timeout, then SERVFAIL.
        silent, port = await fake_upstream(silent=True)
        quiet = await serving(
            state,
            ("c1", ns, [APP]),
            upstreams=["127.0.0.1", "127.0.0.1"],
            upstream_port=port,
            upstream_timeout_s=0.2,
        )
        try:
            assert (await ask(ns, "foo.example"))["rcode"] == "SERVFAIL"
            assert silent.asked == ["foo.example.", "foo.example."]
            assert quiet.statistics()["upstream_timeouts"] == 2
        finally:
            await quiet.close()
            silent.close()
        # No upstream at all (resolv.conf names only 127.0.0.11): SERVFAIL at once.
        none = await serving(state, ("c1", ns, [APP]), upstreams=[])
        try:
            assert (await ask(ns, "foo.example"))["rcode"] == "SERVFAIL"
        finally:
            await none.close()

    run(test)


def test_large_answers_truncate_over_udp_and_come_whole_over_tcp(namespaces: Namespaces) -> None:
    ns = namespaces.add()

    async def test() -> None:
        state = NetworkState()
        state.apply(web(60))
        resolver = await serving(state, ("c1", ns, [APP]), upstreams=[])
        try:
            udp = await ask(ns, "tasks.web")
            assert udp["tc"] and 0 < len(udp["answers"]) < 60
            tcp = await ask(ns, "tasks.web", tcp=True)
            assert not tcp["tc"] and len(set(tcp["answers"])) == 60
        finally:
            await resolver.close()

    run(test)


def test_detach_closes_and_a_vanished_namespace_is_counted(namespaces: Namespaces) -> None:
    ns = namespaces.add()

    async def listening() -> str:
        _, out = await run_in(ns, "ss", "-Hlnut")
        return out

    async def test() -> None:
        state = NetworkState()
        state.apply(web(1))
        resolver = await serving(state, ("c1", ns, [APP]), upstreams=[])
        try:
            assert (await listening()).count("127.0.0.11:53") == 2  # UDP and TCP
            await resolver.task_detached("c1")
            assert "127.0.0.11:53" not in await listening()
            assert resolver.serving() == []
            # Attached again (an adopted task): serves again on the freed port.
            await resolver.task_attached("c1", netns_path(ns), [APP])
            assert await nslookup(ns, "web") == {VIP}
            # A namespace gone before its resolver started: logged, counted, no error.
            gone = namespaces.add()
            namespaces.remove(gone)
            await resolver.task_attached("c2", netns_path(gone), [APP])
            assert resolver.statistics()["netns_missing"] == 1
            assert resolver.serving() == ["c1"]
        finally:
            await resolver.close()
        assert "127.0.0.11:53" not in await listening()

    run(test)


def test_served_in_the_namespaces_the_plumbing_makes(tmp_path: Path) -> None:
    """The resolver as the daemon wires it: registered with the node's Plumbing, which
    makes the task's namespace and tells it; detached with the task."""
    lab = NetnsLab()
    try:
        node_ns, node_addr = lab.add_host()
        net = Network(
            id=secrets.token_hex(12),
            driver_state=Driver(
                name="overlay", options={VXLAN_ID_OPTION: str(4200 + secrets.randbelow(100_000))}
            ),
            ipam_options=IPAMOptions(configs=[IPAMConfig(subnet="10.214.7.0/24")]),
        )
        update = NetworkUpdate(
            full=True,
            networks=[net],
            peers=[
                NetworkPeer(
                    network_id=net.id, task_id=f"t{i}", node_id="A", node_addr=node_addr,
                    addr=f"10.214.7.{10 + i}", service_id="sid-web", service_name="web",
                    task_name=f"web.{i + 1}.t{i}", running=True,
                )
                for i in range(3)
            ],
            endpoints=[
                ServiceEndpoint(network_id=net.id, service_id="sid-web", service_name="web", vip="10.214.7.2")
            ],
        )  # fmt: skip

        async def test() -> None:
            plumbing = Plumbing(tmp_path / "data", tmp_path / "run", node_addr, netns_path(node_ns))
            state = NetworkState()
            plumbing.watch(state)
            resolver = start_resolver(state, plumbing, upstreams=[])
            state.apply(update)
            try:
                path = await plumbing.attach(
                    "t0", [NetworkAttachment(network=net, addresses=["10.214.7.10/24"])]
                )
                assert resolver.serving() == ["t0"]
                code, out = await run_in_path(
                    path, "busybox", "nslookup", "tasks.web", "127.0.0.11"
                )
                assert code == 0, out
                for i in range(3):
                    assert f"10.214.7.{10 + i}" in out
                await plumbing.detach("t0")
                assert resolver.serving() == []
            finally:
                await resolver.close()
                await plumbing.close()

        run(test)
    finally:
        assert lab.teardown() == []
