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
- `remove_safely`: a member removed, its etcd raft leadership moved off it first.
- `prune_members`: the leader removes the member of a node that is no longer a
  manager (demoted, or removed), driven by committed node events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.daemon.etcd_leader import anyone, move_leader
from shoal.etcdclient import FAILURES, EtcdClient, EtcdError, TLSFiles
from shoal.log import get_logger
from shoal.manager.etcd.datastore import CLIENT_TIMEOUT_S
from shoal.manager.etcd.member import EtcdMember, MemberAddress, member_names, remove_member
from shoal.manager.store import Store
from shoal.pki import MANAGER_SERVER_NAME

MEMBER_FILE = "etcd.json"
MEMBER_DIR = "etcd"
# A demoted manager waits this long for the leader to remove its member.
REMOVED_TIMEOUT_S = 45.0
REMOVED_POLL_S = 0.5
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
        self,
        initial_cluster: dict[str, str] | None = None,
        state: str = "new",
        force_new_cluster: bool = False,
    ) -> None:
        """Start the member (on its data if it has some: the cluster flags are then
        ignored) and supervise it."""
        await self.member.start(initial_cluster, state, force_new_cluster=force_new_cluster)
        self._supervisor = asyncio.create_task(self.member.supervise(), name="etcd-member")

    async def force_new_cluster(self) -> None:
        """Restart the member on its data as an etcd cluster of one (the others lost for
        good: `swarm init --force-new-cluster`); its supervisor restarts it without the
        flag from then on, and other managers join it again as usual."""
        log.warning("etcd member restarting as a cluster of one", name=self.file.name)
        await self.stop()
        await self.start(force_new_cluster=True)
        self.file.endpoints = [self.client_url]
        self.file.save(self.swarm_dir)

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
            await clock.sleep(REMOVED_POLL_S)

    async def _remove_self(self, client: EtcdClient) -> None:
        if len(await member_names(client)) > 1:
            await remove_safely(client, self.file.name, self.member.tls)

    async def _until_gone(self, out: Coroutine[Any, Any, None]) -> None:
        """`out` (the member taken out of the cluster), or less: the member's process
        exiting first means it is out already (etcd exits once removed; a request
        through it would wait out its deadline)."""
        work = asyncio.ensure_future(out)
        gone = asyncio.ensure_future(self.member.wait())
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not work.done():
                work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work  # its error, if it ended first with one

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
                    out = self._remove_self(client)
                else:
                    out = self._removed(client, clock)
                await self._until_gone(out)
            except EtcdError as e:
                log.warning("this node's etcd member may not be removed", error=str(e))
            finally:
                await client.close()
        await self.stop()
        self.member.remove_data()
        MemberFile.path(self.swarm_dir).unlink(missing_ok=True)


async def remove_safely(
    client: EtcdClient, name: str, tls: TLSFiles, eligible: Callable[[str], bool] = anyone
) -> None:
    """Remove member `name`, its raft leadership moved to another started member
    first if it holds it: a leader removed from two members can leave the other
    without a leader for good (etcd issue 10563; k3s and LXD move it too)."""
    try:
        if await move_leader(client, name, tls, eligible):
            log.info("etcd leadership moved before a removal", name=name)
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
            await remove_safely(client, name, tls, managers.__contains__)
