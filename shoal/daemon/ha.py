"""The daemon's side of several managers on one etcd store (docs/ha.md).

`SharedStore` is what a manager daemon started with `--datastore-endpoint` holds
beside its `Manager`: the etcd datastore (backend and election) and the
`Leadership` that starts the leader's loops when this manager is elected and stops
them when it loses. It answers the API's "where do writes go" (`write_leader`) and
who leads (`leader_id`). `fetch_shared_keys` is how a manager that joins gets what
it needs to open the shared store: the DEK it is sealed with (and the cluster's root
key), from a manager's cluster port, with its new manager certificate.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import Awaitable, Callable

import aiohttp

from shoal.api.forward import LEADER_WAIT_S
from shoal.errors import JoinFailed, NoLeader
from shoal.log import get_logger
from shoal.manager.clusterport.server import JOIN_PEER_HEADER
from shoal.manager.etcd.datastore import ClientConfig, EtcdDatastore
from shoal.manager.leadership import Candidate, Leadership
from shoal.manager.manager import Manager
from shoal.manager.store import Tx
from shoal.pki import MANAGER_SERVER_NAME, NodeCredentials

KEYS_TIMEOUT_S = 10.0
# `swarm init` on a shared store waits this long to lead its new cluster.
INIT_LEAD_TIMEOUT_S = 30.0
JOIN_VIA_TIMEOUT_S = 30.0

log = get_logger("shoal.daemon")


class SharedStore:
    def __init__(self, datastore: EtcdDatastore) -> None:
        self.datastore = datastore
        self.backend = datastore.backend
        self.leadership: Leadership | None = None

    @classmethod
    async def open(cls, config: ClientConfig, cluster_id: str, node_id: str) -> SharedStore:
        # the candidate's address is set once the cluster port is bound (start())
        return cls(await EtcdDatastore.open(config, cluster_id, Candidate(node_id, "").encode()))

    async def start(
        self,
        manager: Manager,
        addr: str,
        on_elected: list[Callable[[Tx], None]],
        wait: bool = False,
    ) -> None:
        """Follow, and campaign as the manager at cluster port `addr`; when elected,
        lead `manager` and write `on_elected` (pure transactions: at `swarm init` the
        first objects, then what each new leader checks; a transaction that changes
        nothing writes nothing). `wait`: return once elected and written (init)."""
        election = self.datastore.election
        me = Candidate.decode(election.candidate)
        assert me is not None
        election.candidate = Candidate(me.node_id, addr).encode()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        first = [True]

        async def elected() -> None:
            manager.lead()
            try:
                for fn in on_elected if first[0] else on_elected[-1:]:
                    await manager.store.update(fn)
                first[0] = False
            except BaseException as e:
                if not done.done():
                    done.set_exception(e)
                raise
            if not done.done():
                done.set_result(None)

        manager.start(lead=False)
        self.leadership = Leadership(election, self.backend, manager.store, elected, manager.follow)
        self.leadership.start()
        if wait:
            await asyncio.wait_for(done, INIT_LEAD_TIMEOUT_S)

    @property
    def leading(self) -> bool:
        return self.leadership is not None and self.leadership.leading

    @property
    def leader_id(self) -> str | None:
        lead = self.leadership
        if lead is None:
            return None
        if lead.leading:
            return lead.me.node_id if lead.me else None
        return lead.leader.node_id if lead.leader else None

    async def wait_led(self, timeout_s: float, by_me: bool = False) -> bool:
        """Wait until a manager leads (this one or another; `by_me`: this one), up
        to `timeout_s` (through the clock): after etcd's quorum came back, an election
        follows."""
        lead = self.leadership
        if lead is None:
            return False
        clock = lead.clock
        deadline = clock.monotonic() + timeout_s
        while not lead.leading and (by_me or lead.leader is None or lead.is_me(lead.leader)):
            left = deadline - clock.monotonic()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await clock.wait_for(lead.changed.wait(), left)
        return True

    async def write_leader(self, wait_s: float) -> str | None:
        """None: this manager leads (it takes the write); else the leader's cluster
        port, once there is one (NoLeader past `wait_s`)."""
        lead = self.leadership
        if lead is None:
            raise NoLeader()
        if lead.leading:
            return None
        leader = await lead.wait_leader(wait_s)
        if leader is None:
            raise NoLeader()
        if lead.is_me(leader):
            if not lead.leading:
                raise NoLeader()
            return None
        if not leader.addr:
            raise NoLeader()
        return leader.addr

    def join_via_leader(
        self, credentials: Callable[[], NodeCredentials]
    ) -> Callable[[bytes, str], Awaitable[tuple[int, bytes]]]:
        """The cluster port's hand-off of a join this follower took: to the leader's
        `/manager/join`, with the joining node's address."""

        async def via(body: bytes, peer: str) -> tuple[int, bytes]:
            leader = await self.write_leader(LEADER_WAIT_S)
            if leader is None:  # this manager leads now after all
                raise NoLeader()
            timeout = aiohttp.ClientTimeout(total=JOIN_VIA_TIMEOUT_S)
            try:
                async with aiohttp.ClientSession(timeout=timeout) as http:
                    async with http.post(
                        f"https://{leader}/manager/join",
                        data=body,
                        ssl=credentials().client_context(),
                        server_hostname=MANAGER_SERVER_NAME,
                        headers={"Content-Type": "application/json", JOIN_PEER_HEADER: peer},
                    ) as r:
                        return r.status, await r.read()
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                log.warning("handing a join to the leader failed", leader=leader, error=repr(e))
                raise NoLeader() from e

        return via

    async def stop(self) -> None:
        if self.leadership is not None:
            await self.leadership.stop()
            self.leadership = None
        await self.datastore.close()


def shared_keys(dek: bytes, root_key: bytes) -> bytes:
    """`GET /manager/keys`: the store's DEK and the root CA key, for a manager."""
    return json.dumps(
        {"dek": base64.b64encode(dek).decode(), "root_key": root_key.decode()}
    ).encode()


async def fetch_shared_keys(manager: str, creds: NodeCredentials) -> tuple[bytes, bytes]:
    """(DEK, root key PEM) from the manager at `manager`, with this node's manager
    certificate."""
    timeout = aiohttp.ClientTimeout(total=KEYS_TIMEOUT_S)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            async with http.get(
                f"https://{manager}/manager/keys",
                ssl=creds.client_context(),
                server_hostname=MANAGER_SERVER_NAME,
            ) as r:
                body = await r.read()
                if r.status != 200:
                    raise JoinFailed(f"the manager at {manager} refused its keys: {body!r}")
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        raise JoinFailed(f"cannot reach the manager at {manager}: {e}") from e
    data = json.loads(body)
    return base64.b64decode(data["dek"]), str(data["root_key"]).encode()
