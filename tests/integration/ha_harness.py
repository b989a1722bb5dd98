"""Where the managers of an HA cluster in network namespaces keep their state, as one
switch (`manager_stores(mode, ...)`), for the fail-over acceptance test
(tests/integration/cluster/test_ha_failover.py) and bench/ha.py.

- `"external"`: an etcd of three members, one per manager namespace, started here
  (each inside its namespace, `ip netns exec`, on the manager's address), and the
  daemons run with `--datastore-endpoint` on all three. A crash of a manager is its
  daemon *and* its member killed with SIGKILL (a machine gone), a restart both started
  again (the member on its data).
- `"embedded"`: the daemon's own member (no flag; the member dies with the daemon):
  nothing to start or kill beside the daemon.

Every member is stopped by its own handle and its directory removed, whatever
happens; the namespaces are the caller's (NetnsLab)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import threading
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from shoal.manager.ca.root import RootCA
from shoal.manager.etcd.certs import member_tls, write_tls
from shoal.manager.etcd.member import EtcdMember, MemberAddress

T = TypeVar("T")
THREAD_WAIT_S = 90.0
# Ports inside a manager's namespace (nothing else listens there; shoal's cluster
# port is 2377).
CLIENT_PORT = 2379
PEER_PORT = 2380
STORE_MODES = ("external", "embedded")


class ManagerStores(Protocol):
    """What a manager's daemon needs for its state, and what a crash does to it."""

    def daemon_args(self, index: int) -> list[str]: ...

    def crash(self, index: int) -> None:
        """The state's side of manager `index`'s machine crashing (after its daemon
        was killed)."""

    def restart(self, index: int) -> None:
        """Started again before its daemon is."""

    def close(self) -> None: ...


class EmbeddedStores:
    """The daemon's own embedded member: nothing beside the daemon."""

    def daemon_args(self, index: int) -> list[str]:
        return []

    def crash(self, index: int) -> None:
        pass

    def restart(self, index: int) -> None:
        pass

    def close(self) -> None:
        pass


class NetnsMember(EtcdMember):
    """An etcd member run inside network namespace `netns` (`ip netns exec` execs etcd,
    so the process's pid is etcd's own)."""

    def __init__(self, netns: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.netns = netns

    def command(self, *args: Any, **kwargs: Any) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *super().command(*args, **kwargs)]


class NetnsEtcd:
    """Three (or more) etcd members, one per (namespace, address), bootstrapped
    together (static `--initial-cluster`), on an event loop of their own thread."""

    def __init__(self, base: Path, hosts: Sequence[tuple[str, str]]) -> None:
        self.base = base
        self.root = RootCA.create()
        self.cluster_id = "cluster-" + secrets.token_hex(4)
        ips = [addr for _, addr in hosts]
        # gRPC checks every member as the first endpoint's host: every member's
        # certificate names all the members' addresses.
        self.members = [
            NetnsMember(
                ns,
                f"etcd-{i + 1}-{secrets.token_hex(3)}",
                base / f"etcd-{i + 1}",
                MemberAddress(addr, CLIENT_PORT, PEER_PORT),
                member_tls(self.root, f"etcd-{i + 1}", self.cluster_id, ips),
            )
            for i, (ns, addr) in enumerate(hosts)
        ]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._tls = write_tls(
            member_tls(self.root, "shoal-managers", self.cluster_id, []), base / "client-tls"
        )

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(THREAD_WAIT_S)

    def start(self) -> None:
        initial = {m.name: m.address.peer_url for m in self.members}

        async def all_started() -> None:
            await asyncio.gather(*(m.start(initial, state="new") for m in self.members))

        self._run(all_started())

    def daemon_args(self, index: int) -> list[str]:
        """`shoal daemon`'s flags: every member as an endpoint, a client certificate."""
        args = [a for m in self.members for a in ("--datastore-endpoint", m.address.client_url)]
        return [
            *args,
            "--datastore-cafile", str(self._tls.ca),
            "--datastore-certfile", str(self._tls.cert),
            "--datastore-keyfile", str(self._tls.key),
        ]  # fmt: skip

    def crash(self, index: int) -> None:
        self._run(self.members[index].kill())

    def restart(self, index: int) -> None:
        """On its data: etcd finds the member it was, and serves once it rejoined."""
        self._run(self.members[index].start())

    def pid(self, index: int) -> int | None:
        return self.members[index].pid

    def etcd_leader(self) -> int | None:
        """The index of the member etcd's Raft leader is (None: no answer), asked with
        `etcdctl endpoint status`: a shoal leader killed with the etcd leader's member
        waits for etcd's election too (and the new etcd leader extends every lease)."""
        running = [m for m in self.members if m.running]
        if not running:
            return None
        # from a member's namespace: the lab's addresses are not the host's
        urls = [m.address.client_url for m in running]
        tls = self._tls
        statuses = endpoint_statuses(urls, tls.ca, tls.cert, tls.key, running[0].netns)
        url = leader_url(statuses)
        return next((self.members.index(m) for m in running if m.address.client_url == url), None)

    def close(self) -> None:
        try:
            for member in self.members:
                with contextlib.suppress(Exception):
                    self._run(member.kill())
                member.remove_data()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(THREAD_WAIT_S)
            self._loop.close()


def manager_stores(mode: str, base: Path, hosts: Sequence[tuple[str, str]]) -> ManagerStores:
    """The managers' state for `mode` ("external": an etcd started here, one member per
    manager namespace in `hosts` ((namespace, address) each); "embedded": the
    daemons' own members), started. Close it after the daemons are stopped."""
    if mode == "embedded":
        return EmbeddedStores()
    if mode != "external":
        raise ValueError(f"store mode {mode!r}: one of {STORE_MODES}")
    etcd = NetnsEtcd(base, hosts)
    try:
        etcd.start()
    except BaseException:
        etcd.close()
        raise
    return etcd


def endpoint_statuses(
    urls: Sequence[str], ca: Path, cert: Path, key: Path, netns: str | None = None
) -> list[dict[str, Any]] | None:
    """`etcdctl endpoint status` of every member at `urls` (from inside `netns` if
    given), as etcdctl's JSON; None unless every one answered."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    result = subprocess.run(
        [
            *prefix,
            "etcdctl",
            "--command-timeout=3s",
            "endpoint",
            "status",
            "-w",
            "json",
            "--endpoints=" + ",".join(urls),
            f"--cacert={ca}",
            f"--cert={cert}",
            f"--key={key}",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=10,
        env={**os.environ, "ETCDCTL_API": "3"},
        stdin=subprocess.DEVNULL,
    )
    try:
        answers = json.loads(result.stdout)
    except ValueError:
        return None
    if result.returncode != 0 or len(answers) != len(urls):
        return None
    return list(answers)


def leader_url(statuses: list[dict[str, Any]] | None) -> str | None:
    """The client URL of the member that leads, among `endpoint_statuses`' answers."""
    for answer in statuses or []:
        status = answer["Status"]
        if status["header"]["member_id"] == status["leader"]:
            return str(answer["Endpoint"])
    return None


def member_pids(data_dir: Path) -> list[int]:
    """The etcd processes running on the embedded member of the daemon at `data_dir`
    (from /proc)."""
    flag = f"--data-dir={data_dir / 'swarm' / 'etcd' / 'data'}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if flag in argv:
                pids.append(int(proc.name))
    return pids
