"""What a node trusts when it dials a manager: the root pinned by the join token (one
certificate, exactly the one hashed), and then only a manager's certificate of its own
cluster. Real TLS servers on loopback (aiohttp) stand in for the manager; the node side
is the real code (`shoal.agent.join`, `shoal.agent.session`)."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shoal.agent.join import JoinFailed, join, renew
from shoal.agent.session import RemoteSession, SessionClosed
from shoal.errors import InvalidArgument
from shoal.manager.ca.root import RootCA
from shoal.manager.ca.signer import sign_node_certificate
from shoal.pki import NodeCredentials, key_pem, make_csr, new_key
from shoal.types.agent import LogMessage, LogOptions
from shoal.types.node import NodeDescription
from shoal.types.session import RenewResponse

DAY = datetime.timedelta(days=1)
CLUSTER = "cluster-a"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _NoLogs:
    async def task_logs(self, task_id: str, options: LogOptions) -> AsyncIterator[LogMessage]:
        return
        yield


NO_LOGS = _NoLogs()


def credentials(root: RootCA, node_id: str, role: str, cluster: str = CLUSTER) -> NodeCredentials:
    key = new_key()
    cert = sign_node_certificate(root, make_csr(key), node_id, role, cluster, DAY)
    return NodeCredentials(root.cert_pem, cert, key_pem(key))


def worker_named_manager(root: RootCA) -> NodeCredentials:
    """A worker certificate carrying the name `swarm-manager`, as the CA issued before it
    stopped copying client-sent addresses into names."""
    key = ec.generate_private_key(ec.SECP256R1())
    ca_key = serialization.load_pem_private_key(root.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, CLUSTER),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "swarm-worker"),
                    x509.NameAttribute(NameOID.COMMON_NAME, "rogue"),
                ]
            )
        )
        .issuer_name(root.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + DAY)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("swarm-worker"), x509.DNSName("rogue"), x509.DNSName("swarm-manager")]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return NodeCredentials(
        root.cert_pem, cert.public_bytes(serialization.Encoding.PEM), key_pem(key)
    )


@pytest.fixture(scope="module")
def root() -> RootCA:
    return RootCA.create()


class Servers:
    """`await servers.start(credentials, {"METHOD /path": handler})` -> "127.0.0.1:PORT";
    every server is stopped when the `async with` block ends."""

    def __init__(self) -> None:
        self._runners: list[web.AppRunner] = []

    async def __aenter__(self) -> Servers:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for runner in self._runners:
            await runner.cleanup()

    async def start(self, creds: NodeCredentials, routes: dict[str, Handler]) -> str:
        app = web.Application()
        for route, handler in routes.items():
            method, path = route.split(" ", 1)
            app.router.add_route(method, path, handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=creds.server_context())
        await site.start()
        return f"127.0.0.1:{runner.addresses[0][1]}"


def renew_handler(root: RootCA) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        key = new_key()
        cert = sign_node_certificate(root, make_csr(key), "n1", "worker", CLUSTER, DAY)
        return web.Response(body=msgspec.json.encode(RenewResponse(certificate=cert.decode())))

    return handle


def test_renewal_reaches_a_manager_of_the_cluster(root: RootCA) -> None:
    # The control: with a real manager's certificate on the other end, renewal works.
    async def main() -> NodeCredentials:
        async with Servers() as servers:
            addr = await servers.start(
                credentials(root, "m1", "manager"), {"POST /ca/renew": renew_handler(root)}
            )
            return await renew(addr, credentials(root, "n1", "worker"))

    assert asyncio.run(main()).identity.node_id == "n1"


@pytest.mark.parametrize(
    "server",
    ["worker named swarm-manager", "worker", "manager of another cluster"],
)
def test_a_node_refuses_a_peer_that_is_not_a_manager_of_its_cluster(
    root: RootCA, server: str
) -> None:
    # (its certificate, why the node refuses it)
    creds, why = {
        "worker named swarm-manager": (worker_named_manager(root), "not a manager's"),
        # (a worker's certificate does not even carry the manager's name)
        "worker": (credentials(root, "w2", "worker"), "Hostname mismatch"),
        "manager of another cluster": (
            credentials(root, "m9", "manager", "cluster-b"),
            "from another cluster",
        ),
    }[server]
    reached: list[str] = []

    async def session(request: web.Request) -> web.StreamResponse:
        reached.append(request.path)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive()
        return ws

    async def renewal(request: web.Request) -> web.StreamResponse:
        reached.append(request.path)
        return await renew_handler(root)(request)

    node = credentials(root, "n1", "worker")

    async def main() -> None:
        async with Servers() as servers:
            addr = await servers.start(
                creds, {"POST /ca/renew": renewal, "GET /dispatcher/session": session}
            )
            with pytest.raises(JoinFailed, match=why):
                await renew(addr, node)
            remote = RemoteSession(lambda: [addr], lambda: node)
            try:
                with pytest.raises(SessionClosed, match=why):
                    await remote.register("n1", NodeDescription(), "127.0.0.1", NO_LOGS)
            finally:
                await remote.close()

    asyncio.run(main())
    # Refused at the handshake: neither the CSR nor the session's Register was sent.
    assert reached == []


def test_a_join_refuses_a_root_bundle(root: RootCA) -> None:
    attacker = RootCA.create()
    token = root.new_join_token()
    joins: list[bytes] = []

    async def join_handler(request: web.Request) -> web.Response:
        joins.append(await request.read())
        return web.json_response({"message": "no"}, status=500)

    async def attempt(answer: bytes) -> None:
        async def root_handler(request: web.Request) -> web.Response:
            return web.Response(body=answer)

        async with Servers() as servers:
            addr = await servers.start(
                credentials(attacker, "evil", "manager"),
                {"GET /ca/root": root_handler, "POST /ca/join": join_handler},
            )
            with pytest.raises(JoinFailed, match="no valid root CA"):
                await join(addr, token, "h", "127.0.0.1")

    for answer in (
        root.cert_pem + attacker.cert_pem,  # the real root first: its digest matches
        root.cert_pem + b"trailing bytes\n",
        attacker.cert_pem + root.cert_pem,
    ):
        asyncio.run(attempt(answer))
    assert joins == []  # the token never left the node


def test_a_join_trusts_exactly_the_pinned_root(root: RootCA) -> None:
    # The control: the one root whose digest the token carries passes the pin, and the
    # join goes on to present the token (to a manager of that root).
    joins: list[bytes] = []

    async def root_handler(request: web.Request) -> web.Response:
        return web.Response(body=root.cert_pem)

    async def join_handler(request: web.Request) -> web.Response:
        joins.append(await request.read())
        return web.json_response({"message": "token refused by the test"}, status=400)

    async def main() -> None:
        async with Servers() as servers:
            addr = await servers.start(
                credentials(root, "m1", "manager"),
                {"GET /ca/root": root_handler, "POST /ca/join": join_handler},
            )
            with pytest.raises(InvalidArgument, match="token refused by the test"):
                await join(addr, root.new_join_token(), "h", "127.0.0.1")

    asyncio.run(main())
    assert len(joins) == 1
