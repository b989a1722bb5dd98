"""Hollow nodes: many real agents with the sim runtime in one process (`shoal sim`).

Each hollow node is what a worker daemon is after `docker swarm join`, minus the API
and the runtime: its own key and certificate from the real join (shoal.agent.join, the
path the daemon's swarm_join takes), its own mutual-TLS session to a manager's cluster
port (shoal.agent.session.RemoteSession), and the real Agent sending heartbeats,
applying assignments and reporting statuses in batches; only its executor pretends
(shoal.agent.executor.sim). All nodes share one event loop and one metrics registry;
nothing per node is a thread or a process (docs/sim.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from shoal.agent.agent import Agent
from shoal.agent.executor.sim import SimConfig, SimExecutor
from shoal.agent.join import join, node_tls_info
from shoal.agent.network.state import NetworkState
from shoal.agent.session import RemoteSession
from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.errors import InvalidArgument
from shoal.log import get_logger
from shoal.metrics import Metrics
from shoal.pki import NodeCredentials

# Joins in flight at once: each is a CSR the manager's CA signs; more only queue there.
JOIN_CONCURRENCY = 8
# A join refused for a reason that may pass (the manager busy, not up yet) is retried
# after this long, this many times.
JOIN_RETRY_S = 1.0
JOIN_ATTEMPTS = 30
NODE_STATE_FILE = "node.json"
# On a manager reached over the loopback, hollow node PREFIX-i dials from and advertises
# an address of its own in 127.B.0.0/16, B from the prefix (all of 127/8 is the
# loopback's): the manager sees one peer per node, as it would in a real cluster (its
# per-address join limit, its logs), not a thousand nodes behind one address. Two
# fleets with different prefixes share a /16 only by a 1-in-LOOPBACK_NETS chance, which
# costs nothing but the distinction.
LOOPBACK_FIRST_NET = 100
LOOPBACK_NETS = 150
LOOPBACK_HOSTS = 254
CERTS_DIR = "certificates"

log = get_logger("shoal.agent.hollow")


@dataclass
class HollowNode:
    name: str
    node_id: str
    addr: str
    managers: list[str]
    credentials: NodeCredentials
    agent: Agent | None = None
    session: RemoteSession | None = None

    @property
    def connected(self) -> bool:
        return self.session is not None and self.session.connected_to is not None


@dataclass
class HollowFleet:
    """N hollow nodes joined to the swarm at `remote` with `token`."""

    remote: str
    token: str
    count: int
    name_prefix: str = "hollow"
    sim: SimConfig = field(default_factory=SimConfig)
    data_dir: Path | None = None
    # The address the nodes advertise (and dial from) when the manager is not on the
    # loopback; on the loopback each node has its own (loopback_addr).
    addr: str = "127.0.0.1"
    clock: Clock = SYSTEM_CLOCK
    nodes: list[HollowNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.metrics = Metrics()

    # joining ----------------------------------------------------------------------------------
    async def join_all(self) -> None:
        sem = asyncio.Semaphore(JOIN_CONCURRENCY)

        async def one(i: int) -> HollowNode:
            async with sem:
                return await self._join_one(f"{self.name_prefix}-{i}")

        self.nodes = list(await asyncio.gather(*(one(i) for i in range(self.count))))

    async def _join_one(self, name: str) -> HollowNode:
        saved = self._load(name)
        if saved is not None:
            return saved
        addr, local = self._addr(name)
        for attempt in range(1, JOIN_ATTEMPTS + 1):
            try:
                joined = await join(self.remote, self.token, name, addr, local_addr=local)
                break
            except InvalidArgument:
                raise  # a bad token does not get better
            except Exception as e:
                if attempt == JOIN_ATTEMPTS:
                    raise
                log.warning("join failed; retrying", node=name, error=repr(e))
                await self.clock.sleep(JOIN_RETRY_S)
        node = HollowNode(
            name, joined.node_id, addr, joined.managers or [self.remote], joined.credentials
        )
        self._save(node)
        return node

    def _addr(self, name: str) -> tuple[str, str | None]:
        """(advertised address, source address to dial from) of node `name`."""
        if not self.remote.startswith("127."):
            return self.addr, None
        prefix, _, index = name.rpartition("-")
        addr = loopback_addr(prefix, int(index))
        return addr, addr

    def _node_dir(self, name: str) -> Path | None:
        return None if self.data_dir is None else self.data_dir / name

    def _load(self, name: str) -> HollowNode | None:
        d = self._node_dir(name)
        if d is None or not (d / NODE_STATE_FILE).exists():
            return None
        state = json.loads((d / NODE_STATE_FILE).read_text())
        creds = NodeCredentials.load(d / CERTS_DIR)
        return HollowNode(name, state["node_id"], state["addr"], state["managers"], creds)

    def _save(self, node: HollowNode) -> None:
        d = self._node_dir(node.name)
        if d is None:
            return
        node.credentials.save(d / CERTS_DIR)
        state = {"node_id": node.node_id, "addr": node.addr, "managers": node.managers}
        (d / NODE_STATE_FILE).write_text(json.dumps(state))

    # running ----------------------------------------------------------------------------------
    def start_all(self) -> None:
        for node in self.nodes:
            self._start(node)

    def _start(self, node: HollowNode) -> None:
        creds = node.credentials
        node.session = RemoteSession(
            lambda: node.managers,
            lambda: creds,
            tls_info=lambda: node_tls_info(creds),
            local_addr=node.addr if node.addr.startswith("127.") else None,
        )
        node.agent = Agent(
            node.node_id,
            node.addr,
            SimExecutor(node.name, config=self.sim, clock=self.clock),
            node.session,
            clock=self.clock,
            network=NetworkState(),
            max_starts=0,  # pretend starts cost nothing: no bound
            metrics=self.metrics,
        )
        node.agent.start()

    def connected(self) -> int:
        return sum(1 for n in self.nodes if n.connected)

    def running_tasks(self) -> int:
        return sum(n.agent.task_counts()[0] for n in self.nodes if n.agent is not None)

    async def stop(self) -> None:
        await asyncio.gather(
            *(n.agent.stop() for n in self.nodes if n.agent is not None), return_exceptions=True
        )
        await asyncio.gather(
            *(n.session.close() for n in self.nodes if n.session is not None),
            return_exceptions=True,
        )


def loopback_addr(prefix: str, i: int) -> str:
    """The loopback address of hollow node `prefix`-`i`: 127.B.0.1, ..., 127.B.0.254,
    127.B.1.1, ..., B from the prefix."""
    net = LOOPBACK_FIRST_NET + zlib.crc32(prefix.encode()) % LOOPBACK_NETS
    return f"127.{net}.{i // LOOPBACK_HOSTS}.{i % LOOPBACK_HOSTS + 1}"


def rss_bytes() -> int:
    """This process's resident set size (Linux: /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
