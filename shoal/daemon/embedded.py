"""The daemon's embedded etcd member (docs/ha.md), as k3s embeds etcd: a manager
without `--datastore-endpoint` keeps its store in SQLite while it is the only manager,
and in an etcd member of its own (`<data dir>/swarm/etcd`) once there are several.

- `MemberFile` (`swarm/etcd.json`): that the store lives in the embedded member, the
  member's name (the node ID), address and ports (picked free on the advertise
  address's host at its first start, reused at every restart), and the client URLs of
  the other members it knew.
- `Embedded`: the member started and supervised (killed with the daemon, even by
  SIGKILL), the client configuration the store opens with (its own member first),
  its removal when the node leaves.
- `grant_member` (a manager's side of `POST /manager/member`): add the asking
  manager's member through the client API; `request_member` (the joining or promoted
  node's side).
- `prune_members`: the leader removes the member of a node that is no longer a
  manager (demoted, or removed), driven by committed node events.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
from aetcd import rpc

from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.errors import JoinFailed
from shoal.etcdclient import FAILURES, EtcdClient, EtcdError, TLSFiles
from shoal.log import get_logger
from shoal.manager.etcd.datastore import CLIENT_TIMEOUT_S
from shoal.manager.etcd.member import (
    EtcdMember,
    MemberAddress,
    add_member,
    member_names,
    remove_member,
)
from shoal.manager.store import Store
from shoal.pki import MANAGER_SERVER_NAME, NodeCredentials

MEMBER_FILE = "etcd.json"
MEMBER_DIR = "etcd"
# A manager asked for a member while it moves its store from SQLite answers 503: the
# asking node tries again meanwhile, for up to this long.
REQUEST_TIMEOUT_S = 120.0
REQUEST_RETRY_S = 1.0
HTTP_TIMEOUT_S = 60.0
# A demoted manager waits this long for the leader to remove its member.
REMOVED_TIMEOUT_S = 45.0
PRUNE_RETRY_S = 2.0

log = get_logger("shoal.daemon.embedded")


@dataclass
class MemberFile:
    name: str
    host: str
    client_port: int
    peer_port: int
    endpoints: list[str] = field(default_factory=list)  # every member's client URL

    @property
    def address(self) -> MemberAddress:
        return MemberAddress(self.host, self.client_port, self.peer_port)

    @staticmethod
    def path(swarm_dir: Path) -> Path:
        return swarm_dir / MEMBER_FILE

    @classmethod
    def load(cls, swarm_dir: Path) -> MemberFile | None:
        path = cls.path(swarm_dir)
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))

    def save(self, swarm_dir: Path) -> None:
        tmp = swarm_dir / (MEMBER_FILE + ".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        tmp.replace(self.path(swarm_dir))


@dataclass(frozen=True, slots=True)
class EmbeddedConfig:
    """What the store's client dials: the embedded members, this node's first."""

    endpoints: list[str]
    tls: TLSFiles

    def client(self) -> EtcdClient:
        return EtcdClient(
            self.endpoints, self.tls, timeout=CLIENT_TIMEOUT_S, server_name=MANAGER_SERVER_NAME
        )


def free_port(host: str) -> int:
    """A port free now on `host` (the member binds it at once, and keeps it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def new_member_file(name: str, host: str) -> MemberFile:
    return MemberFile(name, host, free_port(host), free_port(host))


class Embedded:
    """This node's member: started (and supervised) on its data, stopped, left."""

    def __init__(self, swarm_dir: Path, file: MemberFile, tls: TLSFiles) -> None:
        self.swarm_dir = swarm_dir
        self.file = file
        self.member = EtcdMember(
            file.name, swarm_dir / MEMBER_DIR, file.address, tls, die_with_parent=True
        )
        self._supervisor: asyncio.Task[None] | None = None

    @classmethod
    def load(cls, swarm_dir: Path) -> Embedded | None:
        """The member this node's store lives in, if it has one (its PEMs are where
        it wrote them at its first start)."""
        file = MemberFile.load(swarm_dir)
        if file is None:
            return None
        tls_dir = swarm_dir / MEMBER_DIR / "tls"
        tls = TLSFiles(
            (tls_dir / "ca.pem").read_bytes(),
            (tls_dir / "cert.pem").read_bytes(),
            (tls_dir / "key.pem").read_bytes(),
        )
        return cls(swarm_dir, file, tls)

    @property
    def started(self) -> bool:
        return self._supervisor is not None

    @property
    def client_url(self) -> str:
        return self.file.address.client_url

    def config(self) -> EmbeddedConfig:
        others = [e for e in self.file.endpoints if e != self.client_url]
        return EmbeddedConfig([self.client_url, *others], self.member.tls)

    async def start(
        self, initial_cluster: dict[str, str] | None = None, state: str = "new"
    ) -> None:
        """Start the member (on its data if it has some: the cluster flags are then
        ignored) and supervise it."""
        await self.member.start(initial_cluster, state)
        self._supervisor = asyncio.create_task(self.member.supervise(), name="etcd-member")

    def record(self) -> None:
        """Write the member file: the store lives in this member from now on."""
        if self.client_url not in self.file.endpoints:
            self.file.endpoints.insert(0, self.client_url)
        self.file.save(self.swarm_dir)

    async def refresh_endpoints(self, client: EtcdClient) -> None:
        """Keep the members' client URLs (a restart dials them beside its own)."""
        with contextlib.suppress(Exception):
            urls = [u async for m in client.members() for u in m.client_urls[:1]]
            if urls and urls != self.file.endpoints:
                self.file.endpoints = urls
                self.file.save(self.swarm_dir)

    async def stop(self) -> None:
        await self.member.stop()
        if self._supervisor is not None:
            await asyncio.gather(self._supervisor, return_exceptions=True)
            self._supervisor = None

    async def _removed(self, client: EtcdClient, clock: Clock) -> None:
        deadline = clock.monotonic() + REMOVED_TIMEOUT_S
        while self.file.name in await member_names(client):
            if clock.monotonic() >= deadline:
                raise EtcdError(f"the leader did not remove member {self.file.name}")
            await clock.sleep(REQUEST_RETRY_S / 2)

    async def leave(self, remove_self: bool, clock: Clock = SYSTEM_CLOCK) -> None:
        """Leave the etcd cluster, then stop the member and remove its data:
        `remove_self`, remove it through the client API first (a node leaving the
        swarm); else wait (at most REMOVED_TIMEOUT_S) until the leader removed it (a
        demoted node: the leader's `prune_members` does, and a member stopped while
        still counted would weigh against the quorum of the others)."""
        if self.member.running:
            client = self.config().client()
            try:
                if remove_self:
                    if len(await member_names(client)) > 1:
                        await remove_safely(client, self.file.name, self.member.tls)
                else:
                    await self._removed(client, clock)
            except EtcdError as e:
                log.warning("this node's etcd member may not be removed", error=str(e))
            finally:
                await client.close()
        await self.stop()
        self.member.remove_data()
        MemberFile.path(self.swarm_dir).unlink(missing_ok=True)


# joining: a manager's member added through another's ----------------------------------


@dataclass(frozen=True, slots=True)
class MemberGrant:
    """What a new member starts with, and the keys the store is sealed with."""

    initial_cluster: dict[str, str]
    endpoints: list[str]
    dek: bytes
    root_key: bytes


async def grant_member(
    client: EtcdClient, body: bytes, dek: bytes, root_key: bytes, clock: Clock = SYSTEM_CLOCK
) -> bytes:
    """`POST /manager/member` on a manager whose store is in embedded members: add the
    asking manager's member; answer its `--initial-cluster`, the members' client
    URLs, the DEK and the root key."""
    req = json.loads(body)
    name, peer_url = str(req["name"]), str(req["peer_url"])
    if name in await member_names(client):  # asked again (a retry, a restart)
        with contextlib.suppress(EtcdError):
            await remove_member(client, name, clock)
    cluster = await add_member(client, name, peer_url, clock)
    endpoints = [u async for m in client.members() for u in m.client_urls[:1]]
    return json.dumps(
        {
            "initial_cluster": cluster,
            "endpoints": endpoints,
            "dek": base64.b64encode(dek).decode(),
            "root_key": root_key.decode(),
        }
    ).encode()


async def request_member(
    managers: list[str], creds: NodeCredentials, file: MemberFile, clock: Clock = SYSTEM_CLOCK
) -> MemberGrant:
    """Ask a manager (the first that answers) to add this node's member. A manager
    that answers 503 (it moves its store to etcd first) is asked again."""
    body = json.dumps({"name": file.name, "peer_url": file.address.peer_url}).encode()
    deadline = clock.monotonic() + REQUEST_TIMEOUT_S
    failure = "no manager known"
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
    while True:
        for addr in managers:
            try:
                async with aiohttp.ClientSession(timeout=timeout) as http:
                    async with http.post(
                        f"https://{addr}/manager/member",
                        data=body,
                        ssl=creds.client_context(),
                        server_hostname=MANAGER_SERVER_NAME,
                        headers={"Content-Type": "application/json"},
                    ) as r:
                        answer = await r.read()
                        if r.status == 200:
                            data = json.loads(answer)
                            return MemberGrant(
                                {str(k): str(v) for k, v in data["initial_cluster"].items()},
                                [str(e) for e in data["endpoints"]],
                                base64.b64decode(data["dek"]),
                                str(data["root_key"]).encode(),
                            )
                        failure = f"{addr} answered {r.status}: {answer!r}"
                        if r.status not in (502, 503):
                            raise JoinFailed(f"no etcd member for this manager: {failure}")
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                failure = f"cannot reach {addr}: {e!r}"
            log.info("etcd member not granted yet; asking again", reason=failure)
        if clock.monotonic() >= deadline:
            raise JoinFailed(f"no etcd member for this manager: {failure}")
        await clock.sleep(REQUEST_RETRY_S)


async def join_member(
    swarm_dir: Path,
    file: MemberFile,
    managers: list[str],
    creds: NodeCredentials,
    tls: Callable[[bytes], TLSFiles],
) -> tuple[Embedded, MemberGrant]:
    """A new manager's member: added by a manager (`request_member`), then started
    with state `existing` (`tls(root key)`: its certificate, from the root key the
    grant carries) and recorded."""
    grant = await request_member(managers, creds, file)
    file.endpoints = list(grant.endpoints)
    embedded = Embedded(swarm_dir, file, tls(grant.root_key))
    try:
        await embedded.start(grant.initial_cluster, "existing")
    except BaseException:
        # a member added but never started would count against the quorum: removed
        # through the others
        client = EmbeddedConfig(grant.endpoints, embedded.member.tls).client()
        try:
            await remove_unstarted(client, file.address.peer_url)
        except FAILURES as e:
            log.error("a member that failed to start could not be removed", error=str(e))
        finally:
            await client.close()
        await embedded.stop()
        embedded.member.remove_data()
        raise
    embedded.record()
    return embedded, grant


async def remove_unstarted(client: EtcdClient, peer_url: str) -> None:
    """Remove the member added at `peer_url` (one never started has no name yet)."""
    async for m in client.members():
        if peer_url in m.peer_urls:
            await client.remove_member(m.id)
            log.info("removed an etcd member that never started", peer_url=peer_url)


async def remove_safely(client: EtcdClient, name: str, tls: TLSFiles) -> None:
    """Remove member `name`, its raft leadership moved to another started member
    first if it holds it: a leader removed from two members can leave the other
    without a leader for good (etcd issue 10563; k3s and LXD move it too)."""
    try:
        members = [m async for m in client.members()]
        target = next((m for m in members if m.name == name), None)
        others = [m for m in members if m.name and m is not target]
        if target is not None and others and target.client_urls:
            status = await client.status()
            if status.leader is not None and status.leader.id == target.id:
                leader = EmbeddedConfig([target.client_urls[0]], tls).client()
                try:
                    await leader.connect()
                    await leader.maintenancestub.MoveLeader(
                        rpc.MoveLeaderRequest(targetID=others[0].id), timeout=CLIENT_TIMEOUT_S
                    )
                    log.info("etcd leadership moved before a removal", name=name)
                finally:
                    await leader.close()
    except FAILURES as e:
        log.warning("etcd leadership not moved before a removal", name=name, error=str(e))
    await remove_member(client, name)


# leaving: the leader removes the member of a node that is no longer a manager ---------


async def prune_members(
    store: Store,
    client: EtcdClient,
    tls: TLSFiles,
    is_leader: Callable[[], bool],
    clock: Clock = SYSTEM_CLOCK,
) -> None:
    """Driven by committed node events, on the leader (`is_leader()`): every member
    whose node is gone or a worker is removed through the client API (after commit;
    a member added but not started yet has no name and is left alone). A removal
    that failed is tried again at the next node event, or after PRUNE_RETRY_S."""
    watcher = store.watch("node")
    try:
        while True:
            failed = False
            if is_leader():
                try:
                    await _prune(store, client, tls)
                except Exception as e:  # logged; tried again (a timer, or the next event)
                    log.warning("etcd members not pruned", error=repr(e))
                    failed = True
            if not failed:
                await watcher.__anext__()
            else:
                try:
                    await clock.wait_for(watcher.__anext__(), PRUNE_RETRY_S)
                except TimeoutError:
                    continue
            watcher.get_nowait_all()
    finally:
        watcher.close()


async def _prune(store: Store, client: EtcdClient, tls: TLSFiles) -> None:
    view = store.view()
    managers = {n.id for n in view.nodes() if n.spec.role == "manager"}
    for name in await member_names(client):
        if name and name not in managers:
            log.info("removing the etcd member of a node no longer a manager", name=name)
            await remove_safely(client, name, tls)
