"""The node's view of the swarm networks its tasks attach to, kept from the
`NetworkUpdate`s the dispatcher sends (types/network.py): the networks, every task address
on them with the node that hosts it, and every service's names on them.

Consumers (the kernel plumbing, the DNS resolver) subscribe; each gets the update as
applied, after the table has changed, so it may read the table whole or act on the delta.
A listener that fails is logged and the others still run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

import msgspec

from shoal.log import get_logger
from shoal.types.network import Network, NetworkPeer, NetworkUpdate, ServiceEndpoint

log = get_logger("agent.network")

Listener = Callable[["NetworkState", NetworkUpdate], None]


class NetworkState:
    def __init__(self) -> None:
        self.networks: dict[str, Network] = {}
        self.peers: dict[str, NetworkPeer] = {}  # by NetworkPeer.key
        self.endpoints: dict[str, ServiceEndpoint] = {}  # by ServiceEndpoint.key
        self._listeners: list[Listener] = []
        # This node's own tasks: whether they are backends here is the agent's word,
        # not the manager's (docs/networking.md, "Draining"). `_up`: running, since the
        # agent saw them start, before the manager knows (the node that hosts a task
        # serves it before any other node sends it connections) and while they drain
        # (other nodes stop sending first). `_down`: stopped being backends (draining
        # done, unhealthy, exited), whatever an update still in flight says. Both are
        # forgotten with the task's peers.
        self._up: set[str] = set()
        self._down: set[str] = set()
        self._barriers: list[Callable[[], Awaitable[None]]] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def add_barrier(self, barrier: Callable[[], Awaitable[None]]) -> None:
        """A consumer that applies updates asynchronously (the kernel's backends)
        gives a coroutine that returns once what it was told so far is in place: the
        agent awaits every barrier before it acknowledges an update (draining)."""
        self._barriers.append(barrier)

    async def applied(self) -> None:
        """Once every consumer has put in place what the updates so far say."""
        for barrier in self._barriers:
            try:
                await barrier()
            except Exception:
                log.exception("network barrier failed", barrier=repr(barrier))

    def apply(self, update: NetworkUpdate) -> None:
        if update.full:
            self.networks.clear()
            self.peers.clear()
            self.endpoints.clear()
        for key in update.removed_peers:
            self.peers.pop(key, None)
        for key in update.removed_endpoints:
            self.endpoints.pop(key, None)
        for nid in update.removed_networks:
            self.networks.pop(nid, None)
        for n in update.networks:
            self.networks[n.id] = n
        if (self._down or self._up) and any(self._own(p) != p for p in update.peers):
            update = msgspec.structs.replace(update, peers=[self._own(p) for p in update.peers])
        for p in update.peers:
            self.peers[p.key] = p
        if self._down or self._up:
            present = {p.task_id for p in self.peers.values()}
            self._down &= present
            self._up &= present
        for e in update.endpoints:
            self.endpoints[e.key] = e
        for listener in self._listeners:
            try:
                listener(self, update)
            except Exception:
                log.exception("network listener failed", listener=repr(listener))

    def _own(self, p: NetworkPeer) -> NetworkPeer:
        """The peer as this node has it: the agent's word for its own tasks."""
        if p.running and p.task_id in self._down:
            return msgspec.structs.replace(p, running=False)
        if not p.running and p.task_id in self._up:
            return msgspec.structs.replace(p, running=True)
        return p

    def set_up(self, task_id: str) -> None:
        """A task of this node runs (and is healthy): a backend here at once, before
        the manager hears of it and tells the other nodes; and it stays one here until
        `set_down`, even once the manager says it is leaving (it drains first)."""
        self._down.discard(task_id)
        self._up.add(task_id)
        self._republish(task_id)

    def set_down(self, task_id: str) -> None:
        """A task of this node is no longer a backend (drained, unhealthy, or its
        process died): out of the table's running peers at once, before the manager's
        round trip; listeners get the changed peers as an update."""
        self._up.discard(task_id)
        self._down.add(task_id)
        self._republish(task_id)

    def _republish(self, task_id: str) -> None:
        changed = [
            self._own(p) for p in self.peers.values() if p.task_id == task_id and self._own(p) != p
        ]
        if changed:
            log.info(
                "task's backend state set by its node", task=task_id, running=changed[0].running
            )
            self.apply(NetworkUpdate(peers=changed))

    def peers_of(self, network_id: str) -> list[NetworkPeer]:
        return [p for p in self.peers.values() if p.network_id == network_id]

    def endpoints_of(self, network_id: str) -> list[ServiceEndpoint]:
        return [e for e in self.endpoints.values() if e.network_id == network_id]


class TaskNetworkListener(Protocol):
    """Told by the plumbing when a task's network namespace is ready (`netns`: a path
    that names it, e.g. /run/shoal/netns/<task id> or /proc/<pid>/ns/net) and when it is
    gone. The DNS resolver is one: it serves each task inside that task's namespace."""

    async def task_attached(self, task_id: str, netns: str, network_ids: list[str]) -> None: ...

    async def task_detached(self, task_id: str) -> None: ...
