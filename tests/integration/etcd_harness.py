"""Real etcd members for the etcd tests: on loopback, with real mutual TLS from a
cluster CA made for the test. `etcd_cluster()` starts them (one with state "new", the
others added through the client API, as a joining manager does) and, whatever happens,
stops each by its own handle and removes its directory."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import threading
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from shoal.etcdclient import EtcdClient
from shoal.manager.ca.root import RootCA
from shoal.manager.etcd.certs import member_tls, write_tls
from shoal.manager.etcd.member import EtcdMember, MemberAddress, add_member
from shoal.pki import MANAGER_SERVER_NAME

CLIENT_TIMEOUT_S = 10.0
THREAD_WAIT_S = 90.0
T = TypeVar("T")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    root: RootCA
    cluster_id: str
    base: Path
    members: list[EtcdMember] = field(default_factory=list)

    def new_member(self, name: str | None = None) -> EtcdMember:
        name = name or f"m{len(self.members) + 1}-{secrets.token_hex(3)}"
        tls = member_tls(self.root, name, self.cluster_id, ["127.0.0.1"])
        member = EtcdMember(
            name, self.base / name, MemberAddress("127.0.0.1", free_port(), free_port()), tls
        )
        self.members.append(member)
        return member

    async def join(self, via: EtcdMember) -> EtcdMember:
        """A new member, added through `via`'s client API, then started."""
        member = self.new_member()
        client = via.client(CLIENT_TIMEOUT_S)
        try:
            initial = await add_member(client, member.name, member.address.peer_url)
        finally:
            await client.close()
        await member.start(initial, state="existing")
        return member

    def datastore_args(self, name: str, tls_dir: Path, every_member: bool = False) -> list[str]:
        """`shoal daemon`'s flags for a store on the first member (or on every member,
        one `--datastore-endpoint` each), with a client certificate of the cluster's CA
        written in `tls_dir`."""
        tls = write_tls(member_tls(self.root, name, self.cluster_id, []), tls_dir)
        chosen = self.members if every_member else self.members[:1]
        endpoints = [a for m in chosen for a in ("--datastore-endpoint", m.address.client_url)]
        return [
            *endpoints,
            "--datastore-cafile",
            str(tls.ca),
            "--datastore-certfile",
            str(tls.cert),
            "--datastore-keyfile",
            str(tls.key),
        ]

    def client(self, *members: EtcdMember) -> EtcdClient:
        """A manager's client of these members (all of them by default)."""
        chosen = members or tuple(m for m in self.members if m.running)
        tls = member_tls(self.root, "client-" + secrets.token_hex(3), self.cluster_id, [])
        return EtcdClient(
            [m.address.client_url for m in chosen],
            tls,
            timeout=CLIENT_TIMEOUT_S,
            server_name=MANAGER_SERVER_NAME,
        )


@contextlib.asynccontextmanager
async def etcd_cluster(base: Path, size: int = 1) -> AsyncIterator[Cluster]:
    cluster = Cluster(RootCA.create(), "cluster-" + secrets.token_hex(4), base)
    try:
        first = cluster.new_member()
        await first.start()
        for _ in range(size - 1):
            await cluster.join(first)
        yield cluster
    finally:
        for member in reversed(cluster.members):
            with contextlib.suppress(Exception):
                await member.kill()
            member.remove_data()


class EtcdThread:
    """`etcd_cluster()` on an event loop of its own thread, for tests written as plain
    functions (the daemon tests): `run(coro)` runs a coroutine there and waits."""

    def __init__(self, base: Path, size: int = 1) -> None:
        self._base = base
        self._size = size
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._cm: contextlib.AbstractAsyncContextManager[Cluster] | None = None

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(THREAD_WAIT_S)

    def __enter__(self) -> Cluster:
        self._thread.start()
        self._cm = etcd_cluster(self._base, self._size)
        try:
            return self.run(self._cm.__aenter__())
        except BaseException:
            self._stop_loop()
            raise

    def __exit__(self, *exc: Any) -> None:
        assert self._cm is not None
        try:
            self.run(self._cm.__aexit__(None, None, None))
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(THREAD_WAIT_S)
        self._loop.close()
