"""An embedded etcd member: Debian's `etcd` process, supervised by the daemon (as k3s
embeds etcd).

Its data lives under the daemon's data dir (`<dir>/data`, etcd's own layout, and
`<dir>/tls`, the PEMs it reads). Peers and clients speak mutual TLS with certificates
the cluster CA issued (certs.py): each side must present a manager's certificate.

Joining a running cluster follows etcd's runtime reconfiguration (and k3s): the new
member is first added through the client API of the cluster (`add_member`, which
answers the `--initial-cluster` the new member must start with, state `existing`),
then started; leaving, it is removed through the client API (`remove_member`), then
stopped and its data removed. A cluster of one is started with state `new`.

Nothing here sleeps: `start()` waits on the process's own log for etcd's "serving
client traffic" (or on its exit), `stop()` on its exit, each bounded through
the clock.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import functools
import json
import os
import shutil
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.etcdclient import (
    CLIENT_ERRORS,
    FAILURES,
    MAX_MESSAGE_BYTES,
    EtcdClient,
    EtcdError,
    TLSFiles,
)
from shoal.log import get_logger
from shoal.manager.etcd.certs import write_tls
from shoal.pki import MANAGER_SERVER_NAME

ETCD_BINARY = "etcd"
# The store hands etcd a whole group commit as one transaction: up to
# store.MAX_GROUP_RECORDS records plus the index key (etcd's defaults: 128 ops, 1.5 MiB).
MAX_TXN_OPS = 16_384
MAX_REQUEST_BYTES = MAX_MESSAGE_BYTES  # the client's gRPC limit
# etcd's own defaults (a leader lost stalls writes ~2 s, deps-evaluation §4).
HEARTBEAT_MS = 100
ELECTION_MS = 1000
# Keep this many revisions of history (a follower's watch resumes from its last one).
COMPACTION_RETENTION = "10000"
# How long a member may take to serve (it waits for its peers: a quorum must start).
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
# Before a supervised member that exited is started again (growing while it fails).
RESTART_BACKOFF_S = (0.1, 0.5, 1.0, 2.0, 5.0)
# What etcd 3.4 logs (zap) once its client listener serves.
READY_MSGS = ("serving client traffic securely", "ready to serve client requests")
LOG_TAIL = 40
PR_SET_PDEATHSIG = 1
# etcd's answer to an add while a member has not been connected for 5 s.
UNHEALTHY = "unhealthy cluster"
ADD_RETRY_S = 0.5
ADD_TIMEOUT_S = 30.0

log = get_logger("shoal.manager.etcd")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class MemberAddress:
    """Where a member listens: its IP address (advertised to the others, so named in
    its certificate) and two ports."""

    host: str
    client_port: int
    peer_port: int

    def _url(self, port: int) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{port}"

    @property
    def client_url(self) -> str:
        return self._url(self.client_port)

    @property
    def peer_url(self) -> str:
        return self._url(self.peer_port)


class EtcdMember:
    """One etcd process, named `name` (the node ID), with its files in `directory`."""

    def __init__(
        self,
        name: str,
        directory: Path,
        address: MemberAddress,
        tls: TLSFiles,
        clock: Clock = SYSTEM_CLOCK,
        binary: str = ETCD_BINARY,
        die_with_parent: bool = False,
    ) -> None:
        """`die_with_parent`: the process is killed when the daemon dies (even by
        SIGKILL, as a machine crash takes both: PR_SET_PDEATHSIG)."""
        self.name = name
        self.die_with_parent = die_with_parent
        self.directory = directory
        self.address = address
        self.tls = tls
        self._clock = clock
        self._binary = binary
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self.log_tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL)
        self._stopping = False
        self.restarts = 0  # by supervise()
        self.removed = False  # set by supervise() once etcd exited as removed
        self.restarted = asyncio.Event()

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def client(self, timeout: float | None = None) -> EtcdClient:
        """A client of this member alone."""
        return EtcdClient(
            [self.address.client_url], self.tls, timeout=timeout, server_name=MANAGER_SERVER_NAME
        )

    def command(
        self,
        initial_cluster: Mapping[str, str],
        state: str,
        token: str,
        force_new_cluster: bool = False,
    ) -> list[str]:
        paths = write_tls(self.tls, self.directory / "tls")
        a = self.address
        listen_host = f"[{a.host}]" if ":" in a.host else a.host
        # etcd's recovery of a cluster that lost quorum for good: on this member's data,
        # a cluster of this member alone (every other member removed from it)
        force = ["--force-new-cluster"] if force_new_cluster else []
        return [
            self._binary,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls=https://{listen_host}:{a.client_port}",
            f"--advertise-client-urls={a.client_url}",
            f"--listen-peer-urls=https://{listen_host}:{a.peer_port}",
            f"--initial-advertise-peer-urls={a.peer_url}",
            "--initial-cluster=" + ",".join(f"{n}={u}" for n, u in initial_cluster.items()),
            f"--initial-cluster-state={state}",
            f"--initial-cluster-token={token}",
            # clients and peers: mutual TLS, a manager's certificate of this CA only
            "--client-cert-auth",
            f"--trusted-ca-file={paths.ca}",
            f"--cert-file={paths.cert}",
            f"--key-file={paths.key}",
            f"--client-cert-allowed-hostname={MANAGER_SERVER_NAME}",
            "--peer-client-cert-auth",
            f"--peer-trusted-ca-file={paths.ca}",
            f"--peer-cert-file={paths.cert}",
            f"--peer-key-file={paths.key}",
            f"--peer-cert-allowed-hostname={MANAGER_SERVER_NAME}",
            f"--heartbeat-interval={HEARTBEAT_MS}",
            f"--election-timeout={ELECTION_MS}",
            f"--max-txn-ops={MAX_TXN_OPS}",
            f"--max-request-bytes={MAX_REQUEST_BYTES}",
            "--auto-compaction-mode=revision",
            f"--auto-compaction-retention={COMPACTION_RETENTION}",
            # Its JSON gateway dials etcd itself without verifying (so without a
            # certificate the allowed-hostname check accepts): gRPC clients only.
            "--enable-grpc-gateway=false",
            "--logger=zap",
            "--log-outputs=stderr",
            *force,
        ]

    async def start(
        self,
        initial_cluster: Mapping[str, str] | None = None,
        state: str = "new",
        token: str = "shoal",
        force_new_cluster: bool = False,
    ) -> None:
        """Start the process and return once it serves clients. `initial_cluster`
        ({name: peer URL}, this member included) defaults to this member alone; a
        member joining a running cluster passes what `add_member` answered and state
        "existing". A member restarted on its data dir ignores both (etcd's rule).

        `force_new_cluster`: the survivor of a cluster that lost its quorum for good
        (`docker swarm init --force-new-cluster`) starts on its data as a cluster of
        one, every other member removed from the membership, all its data kept (etcd's
        `--force-new-cluster`; a restart after, supervised or not, goes without it:
        the new membership is in its data). Other members are added again as usual."""
        if self.running:
            raise EtcdError(f"etcd member {self.name} is already running")
        self._stopping = False
        cluster = dict(initial_cluster or {self.name: self.address.peer_url})
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.data_dir.mkdir(exist_ok=True, mode=0o700)
        os.chmod(self.data_dir, 0o700)  # etcd insists
        self._ready = asyncio.Event()
        self.log_tail.clear()
        self._proc = await asyncio.create_subprocess_exec(
            *self.command(cluster, state, token, force_new_cluster),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # a signal to the daemon's group is not etcd's
            preexec_fn=_die_with_parent if self.die_with_parent else None,
        )
        self._reader = asyncio.create_task(self._read_log(self._proc))
        log.info(
            "etcd member starting",
            name=self.name,
            pid=self._proc.pid,
            state=state,
            force_new_cluster=force_new_cluster,
        )
        ready = asyncio.create_task(self._ready.wait())
        exited = asyncio.create_task(self._proc.wait())
        try:
            await self._clock.wait_for(
                asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED),
                START_TIMEOUT_S,
            )
        except TimeoutError:
            await self.stop()
            raise EtcdError(
                f"etcd member {self.name} did not serve within {START_TIMEOUT_S:.0f}s: "
                + self.tail()
            ) from None
        finally:
            ready.cancel()
            exited.cancel()
        if not self._ready.is_set():
            await self._drain_log()
            raise EtcdError(
                f"etcd member {self.name} exited with {self._proc.returncode}: {self.tail()}"
            )
        log.info("etcd member serving", name=self.name, client_url=self.address.client_url)

    async def _read_log(self, proc: asyncio.subprocess.Process) -> None:
        """Read etcd's log to its end (a reader that stopped would let the pipe fill
        and etcd block on its next line)."""
        assert proc.stderr is not None
        while True:
            try:
                raw = await proc.stderr.readline()
            except ValueError:  # a line beyond the stream's limit: dropped
                continue
            if not raw:
                return
            line = raw.decode(errors="replace").rstrip()
            self.log_tail.append(line)
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if not isinstance(entry, dict):
                continue
            if entry.get("msg") in READY_MSGS:
                self._ready.set()
            if entry.get("level") in ("error", "fatal", "panic"):
                log.warning("etcd", name=self.name, etcd_msg=entry.get("msg"))

    async def _drain_log(self) -> None:
        if self._reader is not None:
            try:
                await self._clock.wait_for(asyncio.shield(self._reader), STOP_TIMEOUT_S)
            except TimeoutError:
                pass

    def tail(self) -> str:
        return " | ".join(list(self.log_tail)[-8:]) or "(no output)"

    async def wait(self) -> int:
        """Wait until the process exits (a supervisor restarts it); its exit status."""
        if self._proc is None:
            raise EtcdError(f"etcd member {self.name} was not started")
        return await self._proc.wait()

    async def supervise(self) -> None:
        """Keep the started member running until stop() (run it as a task): when the
        process exits on its own (not cleanly: a clean exit is etcd's once the member
        was removed from its cluster, and sets `removed`), start it again on its data, where etcd finds the
        member it was (the cluster flags are ignored then), after a backoff that grows
        while restarts fail. `restarted` is set after each restart that serves."""
        failures = 0
        while True:
            status = await self.wait()
            if self._stopping:
                return
            if status == 0:
                # etcd exits cleanly on its own only once it is removed from the
                # cluster: it would refuse to start again on its data
                self.removed = True
                log.warning("etcd member removed from its cluster; not restarted", name=self.name)
                return
            log.warning("etcd member exited; restarting", name=self.name, status=status)
            await self._clock.sleep(RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)])
            if self._stopping:
                return
            try:
                await self.start()
            except EtcdError as e:
                failures += 1
                log.error("etcd member restart failed", name=self.name, error=str(e))
                continue
            failures = 0
            self.restarts += 1
            self.restarted.set()

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT_S (a
        supervisor then returns instead of restarting it)."""
        self._stopping = True
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await self._clock.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await self._drain_log()
        log.info("etcd member stopped", name=self.name, status=proc.returncode)

    async def kill(self) -> None:
        """SIGKILL, as a crash (tests of failover)."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        await self._drain_log()

    def remove_data(self) -> None:
        """Remove the member's directory (after it was removed from the cluster)."""
        if self.running:
            raise EtcdError(f"etcd member {self.name} is running")
        shutil.rmtree(self.directory, ignore_errors=True)


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the parent (the daemon) dies."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


async def add_member(
    client: EtcdClient, name: str, peer_url: str, clock: Clock = SYSTEM_CLOCK
) -> dict[str, str]:
    """Add a member to the cluster `client` talks to, before it starts; the
    `--initial-cluster` it must start with (every member by name, itself included).

    etcd refuses an add until every member has been connected for its health interval
    (5 s: "unhealthy cluster", so a member that just joined is not at once followed by
    another); the add is tried again meanwhile (`_when_healthy`)."""
    try:
        added = await _when_healthy(lambda: client.add_member([peer_url]), clock)
        cluster: dict[str, str] = {}
        async for m in client.members():
            member_name = name if m.id == added.id else m.name
            if not member_name:
                raise EtcdError(
                    f"etcd member {m.id:x} ({', '.join(m.peer_urls)}) was added but never "
                    "started: remove it before adding another"
                )
            cluster[member_name] = m.peer_urls[0]
    except FAILURES as e:
        raise EtcdError(f"cannot add etcd member {name} ({peer_url}): {e}") from e
    log.info("etcd member added", name=name, member_id=f"{added.id:x}", peer_url=peer_url)
    return cluster


async def remove_member(client: EtcdClient, name: str, clock: Clock = SYSTEM_CLOCK) -> bool:
    """Remove the member named `name` through `client` (False: there is none). Like an
    add, tried again while etcd answers "unhealthy cluster"."""
    try:
        ids = [m.id async for m in client.members() if m.name == name]
        if not ids:
            return False
        await _when_healthy(functools.partial(client.remove_member, ids[0]), clock)
    except CLIENT_ERRORS as e:
        raise EtcdError(f"cannot remove etcd member {name}: {e}") from e
    log.info("etcd member removed", name=name, member_id=f"{ids[0]:x}")
    return True


async def _when_healthy(request: Callable[[], Awaitable[T]], clock: Clock) -> T:
    """`request()`, tried again every ADD_RETRY_S while etcd refuses a membership
    change as "unhealthy cluster" (for at most ADD_TIMEOUT_S)."""
    deadline = clock.monotonic() + ADD_TIMEOUT_S
    while True:
        try:
            return await request()
        except CLIENT_ERRORS as e:
            if UNHEALTHY not in str(e) or clock.monotonic() >= deadline:
                raise
            log.info("etcd cluster not yet healthy for a membership change; retrying")
            await clock.sleep(ADD_RETRY_S)


async def member_names(client: EtcdClient) -> list[str]:
    """The names of the cluster's members ("" for one added but not started)."""
    try:
        return [m.name async for m in client.members()]
    except CLIENT_ERRORS as e:
        raise EtcdError(f"cannot list etcd members: {e}") from e
