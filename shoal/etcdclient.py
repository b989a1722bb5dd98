"""A thin etcd v3 client: aetcd over mutual TLS, to several endpoints at once.

aetcd (asyncio, grpc.aio) dials with `grpc.aio.insecure_channel` only; `EtcdClient`
dials a secure channel instead, with the cluster CA as its trust root and a manager's
certificate as its own. Several endpoints go into one gRPC target
(`ipv4:a:p,b:p,...`, pick_first): when the member it talks to goes, gRPC moves to the
next. `txn()` answers the transaction's header revision beside its outcome (aetcd's
own `transaction()` drops it), which the store maps its index onto.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aetcd
import aetcd.exceptions
import grpc
from aetcd import rpc

# gRPC's message limit, both ways: a group commit is one etcd request (see
# member.MAX_REQUEST_BYTES, which the member is started with).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# What a failed request raises (aetcd's errors, or gRPC's where aetcd lets them through).
CLIENT_ERRORS: tuple[type[BaseException], ...] = (
    aetcd.exceptions.ClientError,
    grpc.aio.AioRpcError,
)


class EtcdError(Exception):
    """etcd could not be reached or refused a request (stays inside the etcd code:
    the store maps it to Internal, a loop retries)."""


class EtcdUnavailable(EtcdError):
    """No member answered in time (gRPC UNAVAILABLE or DEADLINE_EXCEEDED: the member
    went, or etcd is electing its leader): the request may or may not have been
    applied, and may be tried again."""


_UNAVAILABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def _failed(what: str, e: grpc.aio.AioRpcError) -> EtcdError:
    kind = EtcdUnavailable if e.code() in _UNAVAILABLE else EtcdError
    return kind(f"etcd {what} failed: {e.code().name}: {e.details()}")


# Any failed request: the client's errors or ours.
FAILURES: tuple[type[BaseException], ...] = (EtcdError, *CLIENT_ERRORS)


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """PEM bytes for a mutual-TLS etcd connection: the trust root and our own pair."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int  # the store's revision after the transaction (header revision)
    responses: list[Any]  # rpc.ResponseOp, in op order


@dataclass(frozen=True, slots=True)
class Fence:
    """A leadership as etcd records it: the election key and the revision that created
    it (the fencing token). Every write the leader makes compares the key's
    create_revision with it, so a deposed leader's write fails even before it knows."""

    key: bytes
    revision: int


def grpc_target(endpoints: Sequence[str]) -> str:
    """`host:port` endpoints as one gRPC target: `ipv4:a:1,b:2` (or `ipv6:...`) so the
    channel fails over between them; a single DNS name stays as it is."""
    hosts = []
    for ep in endpoints:
        host, _, port = ep.rpartition(":")
        host = host.strip("[]")
        try:
            version = ipaddress.ip_address(host).version
        except ValueError:
            if len(endpoints) > 1:
                raise ValueError(f"several endpoints must be IP addresses: {ep!r}") from None
            return ep
        hosts.append((version, f"[{host}]:{port}" if version == 6 else f"{host}:{port}"))
    families = {v for v, _ in hosts}
    if len(families) != 1:
        raise ValueError("endpoints mix IPv4 and IPv6")
    return f"ipv{families.pop()}:" + ",".join(h for _, h in hosts)


def strip_scheme(url: str) -> str:
    """`https://10.0.0.1:2379` → `10.0.0.1:2379`."""
    return url.split("://", 1)[-1].rstrip("/")


class EtcdClient(aetcd.Client):
    """aetcd's client on a mutual-TLS channel to `endpoints` (`host:port` or URLs)."""

    def __init__(
        self,
        endpoints: Sequence[str],
        tls: TLSFiles,
        timeout: float | None = None,
        server_name: str | None = None,
    ) -> None:
        """`server_name`: the name every member's certificate must carry (shoal's
        members: `swarm-manager`). Without it a single endpoint is checked against its
        own host, and several against the first one's host (gRPC checks one name for
        the whole target)."""
        hosts = [strip_scheme(e) for e in endpoints]
        self.target = grpc_target(hosts)
        if server_name is None and len(hosts) > 1:
            server_name = hosts[0].rpartition(":")[0].strip("[]")
        options: dict[str, Any] = {
            "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
            "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
        }
        if server_name is not None:
            options["grpc.ssl_target_name_override"] = server_name
        super().__init__(host=self.target, port=0, timeout=timeout, options=options)
        self._credentials = grpc.ssl_channel_credentials(tls.ca_pem, tls.key_pem, tls.cert_pem)

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        self.channel = grpc.aio.secure_channel(
            self.target, self._credentials, options=list(self._options.items())
        )
        self.kvstub = rpc.KVStub(self.channel)
        self.clusterstub = rpc.ClusterStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.maintenancestub = rpc.MaintenanceStub(self.channel)
        self._watcher = aetcd.client.watcher.Watcher(
            rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
        )
        self._connected.set()

    async def txn(
        self, compare: Sequence[Any], success: Sequence[Any], failure: Sequence[Any] = ()
    ) -> TxnResult:
        """One transaction; `compare` holds aetcd compare objects
        (`self.transactions.create(key) == 0`), success/failure aetcd ops."""
        await self.connect()
        request = rpc.TxnRequest(
            compare=[c.build_message() for c in compare],
            success=self._ops_to_requests(list(success)),
            failure=self._ops_to_requests(list(failure)),
        )
        try:
            response = await self.kvstub.Txn(request, timeout=self._timeout, metadata=self.metadata)
        except grpc.aio.AioRpcError as e:
            raise _failed("transaction", e) from e
        return TxnResult(response.succeeded, response.header.revision, list(response.responses))

    async def range_page(
        self, key: bytes, range_end: bytes, revision: int = 0, limit: int = 0
    ) -> tuple[list[Any], bool, int]:
        """One page of `[key, range_end)` at `revision` (0: the latest, linearizable):
        its key-values (rpc.KeyValue, by key), whether more follow, and the revision
        it was read at."""
        await self.connect()
        request = rpc.RangeRequest(key=key, range_end=range_end, revision=revision, limit=limit)
        try:
            response = await self.kvstub.Range(
                request, timeout=self._timeout, metadata=self.metadata
            )
        except grpc.aio.AioRpcError as e:
            raise _failed("range", e) from e
        return list(response.kvs), bool(response.more), response.header.revision
