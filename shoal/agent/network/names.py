"""The names the node's DNS resolver answers, per network, kept from NetworkState.

On each network the table holds, as Docker's embedded resolver does:

- `<service>` and each of its aliases → the service's VIP on that network, or, with no
  VIP (`--endpoint-mode dnsrr`), the address of every running task of the service;
- `tasks.<service>` (and `tasks.<alias>`) → the address of every running task;
- `<task name>` (`web.1.<task id>`) → that task's address while it runs, and the
  reverse (PTR) of that address → `<task name>.<network name>`;
- any of those names followed by `.<network name>` → its answer on that network.

The ingress network (published ports' routing network) answers no names, as in Docker.

Names are lower case without the trailing dot (`key()` makes one from a query). A lookup
is a dict hit per network the asker attaches to: the table is kept materialised and
changed incrementally by each NetworkUpdate (only the services an update touches are
recomputed), never rebuilt from the whole state except on a `full` update.

A name that exists with no address now (a dnsrr service scaled to 0, `tasks.web` while
no task runs) is kept with an empty answer: the resolver says NOERROR with no records
at once rather than forwarding a swarm name upstream.

Two services claiming one name on one network (an alias equal to another service's
name): the last one to claim it answers; when it lets go, the other answers again.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from shoal.agent.network.state import NetworkState
from shoal.types.network import Network, NetworkPeer, NetworkUpdate, ServiceEndpoint

TASKS_PREFIX = "tasks."


def reverse_name(addr: str) -> str:
    """`10.0.1.10` -> `10.1.0.10.in-addr.arpa` (the PTR query's name, `key()` form)."""
    try:
        return ipaddress.ip_address(addr).reverse_pointer
    except ValueError:
        return ""


def _new_net(n: Network) -> _Net:
    return _Net(name=n.spec.name or "", ingress=bool(n.spec.ingress))


def _ptr_target(net: _Net, p: NetworkPeer) -> str:
    return f"{p.task_name}.{net.name}" if net.name else p.task_name


def key(name: str) -> str:
    """The table's form of a name: lower case, no trailing dot."""
    return name.rstrip(".").lower()


@dataclass
class _Service:
    """One service on one network: its endpoint (if sent) and its running tasks."""

    name: str = ""  # from the endpoint, else from a peer
    endpoint: ServiceEndpoint | None = None
    tasks: dict[str, str] = field(default_factory=dict)  # task id -> addr, running only
    owned: set[str] = field(default_factory=set)  # names this service wrote


@dataclass
class _Net:
    name: str = ""  # the network's name, for the names PTR answers
    # The ingress network routes published ports only: no names on it (Docker's
    # addSvcRecords skips it the same way).
    ingress: bool = False
    names: dict[str, tuple[str, ...]] = field(default_factory=dict)
    ptr: dict[str, str] = field(default_factory=dict)  # reverse name -> task name
    # name -> {claimant (service id or "task:<id>") -> its answer}; the last one answers
    claims: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    services: dict[str, _Service] = field(default_factory=dict)


class NameTable:
    """Answers `lookup(name, network_ids)`; follows a NetworkState it subscribes to."""

    def __init__(self, state: NetworkState | None = None) -> None:
        self._nets: dict[str, _Net] = {}
        # Bumped by every change: what was derived from the table (the resolver's
        # cached answers) is good while it has not moved.
        self.version = 0
        # Our own copies: a listener runs after the state dropped what an update removed.
        self._peers: dict[str, NetworkPeer] = {}
        self._endpoints: dict[str, ServiceEndpoint] = {}
        if state is not None:
            self.load(state)
            state.subscribe(self.on_update)

    # ---- queries ----

    def lookup(self, name: str, network_ids: Iterable[str]) -> tuple[str, ...] | None:
        """The addresses `name` (in `key()` form) has on the first of `network_ids` that
        knows it; None when none does (the resolver then forwards)."""
        for nid in network_ids:
            net = self._nets.get(nid)
            if net is not None:
                found = net.names.get(name)
                if found is not None:
                    return found
        # `<name>.<network name>` (`web.appnet`, `tasks.web.appnet`): on that network
        # only, if the asker is on it. Network names may hold dots too: `a.b.c` is tried
        # as `a.b` on network `c`, then `a` on network `b.c`, as Docker's sandbox does.
        if "." in name:
            by_name: dict[str, _Net] = {}
            for nid in network_ids:
                net = self._nets.get(nid)
                if net is not None and net.name:
                    by_name.setdefault(net.name.lower(), net)
            dot = name.rfind(".")
            while dot > 0:
                net = by_name.get(name[dot + 1 :])
                if net is not None and name[:dot] in net.names:
                    return net.names[name[:dot]]
                dot = name.rfind(".", 0, dot)
        return None

    def lookup_ptr(self, name: str, network_ids: Iterable[str]) -> str | None:
        """The task name (`<task name>.<network name>`, as Docker answers) of the reverse
        name `name` (`10.1.0.10.in-addr.arpa`, `key()` form) on the asker's networks."""
        for nid in network_ids:
            net = self._nets.get(nid)
            if net is not None:
                found = net.ptr.get(name)
                if found is not None:
                    return found
        return None

    def names_on(self, network_id: str) -> dict[str, tuple[str, ...]]:
        net = self._nets.get(network_id)
        return dict(net.names) if net else {}

    def statistics(self) -> dict[str, int]:
        return {
            "networks": len(self._nets),
            "names": sum(len(n.names) for n in self._nets.values()),
        }

    # ---- following the state ----

    def load(self, state: NetworkState) -> None:
        self.version += 1
        self._nets.clear()
        self._peers.clear()
        self._endpoints.clear()
        for nid, n in state.networks.items():
            self._nets[nid] = _new_net(n)
        touched: set[tuple[str, str]] = set()
        for e in state.endpoints.values():
            touched |= self._add_endpoint(e)
        for p in state.peers.values():
            touched |= self._add_peer(p)
        self._recompute(touched)

    def on_update(self, state: NetworkState, update: NetworkUpdate) -> None:
        self.version += 1
        if update.full:
            self.load(state)
            return
        touched: set[tuple[str, str]] = set()
        for k in update.removed_peers:
            touched |= self._remove_peer(k)
        for k in update.removed_endpoints:
            touched |= self._remove_endpoint(k)
        for nid in update.removed_networks:
            self._nets.pop(nid, None)
            self._peers = {k: p for k, p in self._peers.items() if p.network_id != nid}
            self._endpoints = {k: e for k, e in self._endpoints.items() if e.network_id != nid}
        for n in update.networks:
            if n.id not in self._nets:
                touched |= self._add_network(n)
        for e in update.endpoints:
            touched |= self._remove_endpoint(e.key) | self._add_endpoint(e)
        for p in update.peers:
            touched |= self._remove_peer(p.key) | self._add_peer(p)
        self._recompute({t for t in touched if t[0] in self._nets})

    # ---- the incremental steps: each returns the (network, service) pairs it touched ----

    def _add_network(self, n: Network) -> set[tuple[str, str]]:
        # Names sent before their network (kept aside in our copies) count from now.
        nid = n.id
        self._nets[nid] = _new_net(n)
        touched: set[tuple[str, str]] = set()
        for e in [e for e in self._endpoints.values() if e.network_id == nid]:
            touched |= self._add_endpoint(e)
        for p in [p for p in self._peers.values() if p.network_id == nid]:
            touched |= self._add_peer(p)
        return touched

    def _add_endpoint(self, e: ServiceEndpoint) -> set[tuple[str, str]]:
        self._endpoints[e.key] = e
        net = self._nets.get(e.network_id)
        if net is None or net.ingress:
            return set()
        svc = net.services.setdefault(e.service_id, _Service())
        svc.endpoint = e
        svc.name = e.service_name
        return {(e.network_id, e.service_id)}

    def _remove_endpoint(self, k: str) -> set[tuple[str, str]]:
        e = self._endpoints.pop(k, None)
        if e is None:
            return set()
        net = self._nets.get(e.network_id)
        svc = net.services.get(e.service_id) if net is not None else None
        if svc is not None:
            svc.endpoint = None
        return {(e.network_id, e.service_id)}

    def _add_peer(self, p: NetworkPeer) -> set[tuple[str, str]]:
        self._peers[p.key] = p
        net = self._nets.get(p.network_id)
        if net is None or net.ingress:
            return set()
        if p.running and p.task_name:
            self._write(net, key(p.task_name), (p.addr,), f"task:{p.task_id}")
            net.ptr[reverse_name(p.addr)] = _ptr_target(net, p)
        if not p.service_id:
            return set()
        svc = net.services.setdefault(p.service_id, _Service())
        if not svc.name and p.service_name:
            svc.name = p.service_name
        if p.running:
            svc.tasks[p.task_id] = p.addr
        return {(p.network_id, p.service_id)}

    def _remove_peer(self, k: str) -> set[tuple[str, str]]:
        p = self._peers.pop(k, None)
        if p is None:
            return set()
        net = self._nets.get(p.network_id)
        if net is None:
            return set()
        if p.task_name:
            self._erase(net, key(p.task_name), f"task:{p.task_id}")
            rev = reverse_name(p.addr)
            if net.ptr.get(rev) == _ptr_target(net, p):
                del net.ptr[rev]
        svc = net.services.get(p.service_id)
        if svc is None:
            return set()
        svc.tasks.pop(p.task_id, None)
        return {(p.network_id, p.service_id)}

    def _recompute(self, touched: set[tuple[str, str]]) -> None:
        for nid, sid in touched:
            net = self._nets[nid]
            svc = net.services.get(sid)
            if svc is None:
                continue
            wanted = self._service_names(svc)
            for name in svc.owned - wanted.keys():
                self._erase(net, name, sid)
            for name, addrs in wanted.items():
                self._write(net, name, addrs, sid)
            svc.owned = set(wanted)
            if svc.endpoint is None and not svc.tasks:
                del net.services[sid]

    @staticmethod
    def _service_names(svc: _Service) -> dict[str, tuple[str, ...]]:
        tasks = tuple(svc.tasks.values())
        names = [svc.name] if svc.name else []
        out: dict[str, tuple[str, ...]] = {}
        e = svc.endpoint
        if e is not None:
            names += e.aliases
            answer = (e.vip,) if e.vip else tasks
            for n in names:
                out[key(n)] = answer
        elif not tasks:
            return out  # no endpoint, no running task: the service has no names here
        for n in names:
            out[TASKS_PREFIX + key(n)] = tasks
        return out

    @staticmethod
    def _write(net: _Net, name: str, addrs: tuple[str, ...], owner: str) -> None:
        claims = net.claims.setdefault(name, {})
        claims[owner] = addrs  # a new claim goes last; a claimant's update keeps its place
        net.names[name] = claims[next(reversed(claims))]

    @staticmethod
    def _erase(net: _Net, name: str, owner: str) -> None:
        claims = net.claims.get(name)
        if claims is None or claims.pop(owner, None) is None:
            return
        if claims:
            net.names[name] = claims[next(reversed(claims))]
        else:
            del net.claims[name]
            del net.names[name]
