"""What each node is told about the networks its tasks attach to (`Assignment.network`).

`NetworkView` keeps, from the store's committed events, indexed by network:

- the allocated networks;
- the peers on each: every live task (assigned to a node, not dead) with an address
  on it, where it runs (that node's Status.Addr) and whether it is running (state and
  desired state RUNNING: DNS answers only those);
- the service endpoints on each: a service's VIP on it, or no VIP (dnsrr) for a service
  attached to it, with the service's aliases there;
- which nodes need each network: how many of a node's live tasks attach to it, plus
  one for every ready node on the `ingress` network: the routing mesh answers on every
  node, so every ready node is told ingress's peers and its endpoints, which carry the
  services' published ports (`ServiceEndpoint.ports`, from `Endpoint.Ports`, both modes).

`apply(events)` updates the indexes and answers, per node, the NetworkUpdate that node
must get: a network it just came to need with all its peers and endpoints, one it no
longer needs removed, and for the networks it keeps only the peers and endpoints that
changed. The work is proportional to what changed times the nodes on the networks it
changed, never a walk over every task. `full(node)` is a session's first view.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import msgspec

from shoal.manager.store import Event, ReadTx
from shoal.types.network import (
    Network,
    NetworkPeer,
    NetworkUpdate,
    PortMapping,
    ServiceEndpoint,
)
from shoal.types.node import Node
from shoal.types.service import Service
from shoal.types.swarm import DEFAULT_DATA_PATH_PORT
from shoal.types.task import Task, TaskState


def _host(cidr: str) -> str:
    return cidr.split("/", 1)[0]


def task_name(service_name: str, t: Task) -> str:
    middle = str(t.slot) if t.slot else (t.node_id or "")
    return f"{service_name}.{middle}.{t.id}"


def _live(t: Task) -> bool:
    return t.node_id is not None and t.state >= TaskState.ASSIGNED and t.state <= TaskState.RUNNING


def task_peers(t: Task, service_name: str, node_addr: str) -> dict[str, NetworkPeer]:
    """The task's peers by network (none unless it is live on a node)."""
    if not _live(t) or not t.networks_attachments:
        return {}
    running = t.state == TaskState.RUNNING and t.desired == TaskState.RUNNING
    out = {}
    for att in t.networks_attachments:
        if att.addresses:
            addr = att.addresses[0]
            out[att.network.id] = NetworkPeer(
                network_id=att.network.id,
                task_id=t.id,
                node_id=t.node_id or "",
                node_addr=node_addr,
                addr=_host(addr),
                service_id=t.service_id,
                service_name=service_name,
                task_name=task_name(service_name, t),
                running=running,
            )
    return out


def port_mappings(s: Service) -> list[PortMapping]:
    """The service's published ports as allocated (`Endpoint.Ports`), both modes; a
    host-mode port without a number has published 0 (its node picks one)."""
    return [
        PortMapping(
            protocol=p.protocol or "tcp",
            target=p.target_port or 0,
            published=p.published_port or 0,
            mode=p.publish_mode or "ingress",
        )
        for p in s.endpoint.ports or ()
    ]


def service_endpoints(s: Service, ingress: str | None = None) -> dict[str, ServiceEndpoint]:
    """The service's endpoints by network; on `ingress` (its ID), one with the service's
    published ports whenever it publishes any (its ingress VIP, or none: host mode)."""
    name = s.spec.name or ""
    tt = s.spec.task_template
    configs = {
        c.target: c for c in ((tt.networks if tt else None) or s.spec.networks or ()) if c.target
    }
    out: dict[str, ServiceEndpoint] = {}
    for v in s.endpoint.virtual_ips or ():
        if v.network_id and v.addr:
            c = configs.get(v.network_id)
            out[v.network_id] = ServiceEndpoint(
                network_id=v.network_id,
                service_id=s.id,
                service_name=name,
                vip=_host(v.addr),
                aliases=list((c.aliases if c else None) or []),
            )
    ep = s.spec.endpoint_spec
    if ep is not None and ep.mode == "dnsrr":
        for net, c in configs.items():
            out[net] = ServiceEndpoint(
                network_id=net,
                service_id=s.id,
                service_name=name,
                vip=None,
                aliases=list(c.aliases or []),
            )
    ports = port_mappings(s)
    if ingress is not None and ports:
        have = out.get(ingress)
        if have is not None:
            out[ingress] = msgspec.structs.replace(have, ports=ports)
        else:
            out[ingress] = ServiceEndpoint(
                network_id=ingress, service_id=s.id, service_name=name, ports=ports
            )
    return out


@dataclass(slots=True)
class _Changes:
    """What one batch of events changed, by network."""

    peers: dict[str, dict[str, NetworkPeer | None]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    endpoints: dict[str, dict[str, ServiceEndpoint | None]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    networks: set[str] = field(default_factory=set)  # a network object that changed
    # (node, network) -> whether the node needed the network before this batch
    before: dict[tuple[str, str], bool] = field(default_factory=dict)


class NetworkView:
    def __init__(self) -> None:
        self.networks: dict[str, Network] = {}
        self.peers: dict[str, dict[str, NetworkPeer]] = defaultdict(dict)  # net -> task -> peer
        self.endpoints: dict[str, dict[str, ServiceEndpoint]] = defaultdict(dict)
        self.node_nets: dict[str, Counter[str]] = defaultdict(Counter)  # node -> net -> tasks
        self.nodes_on: dict[str, set[str]] = defaultdict(set)  # net -> nodes needing it
        self.node_addr: dict[str, str] = {}
        self._task_nets: dict[str, tuple[str, tuple[str, ...]]] = {}  # task -> (node, nets)
        self._task_service_name: dict[str, str] = {}
        self._service_eps: dict[str, dict[str, ServiceEndpoint]] = {}
        self.data_path_port = DEFAULT_DATA_PATH_PORT
        # the allocated ingress network, the ready nodes, and which of them hold it
        # (node -> ingress network ID) for being ready, beside their tasks' count
        self.ingress: str | None = None
        self.ready: set[str] = set()
        self._holds_ingress: dict[str, str] = {}
        self._publishing: dict[str, Service] = {}  # services with published ports

    # ---- building ---------------------------------------------------------------------
    @classmethod
    def build(cls, view: ReadTx) -> NetworkView:
        v = cls()
        cluster = view.cluster()
        if cluster is not None and cluster.data_path_port:
            v.data_path_port = cluster.data_path_port
        ch = _Changes()
        for n in view.networks():
            v._network(n, ch)
        for node in view.nodes():
            v._node(node, False, ch)
        for s in view.services():
            v._service(s, None, ch)
        for t in view.tasks():
            if t.networks_attachments:
                v._task(t, view.task_meta(t.id).service_name, ch)
        return v

    # ---- events -----------------------------------------------------------------------
    def apply(self, events: list[Event]) -> dict[str, NetworkUpdate]:
        ch = _Changes()
        for ev in events:
            if ev.kind == "network":
                if ev.action == "remove":
                    self.networks.pop(ev.obj.id, None)
                    if ev.obj.id == self.ingress:
                        self._set_ingress(None, ch)
                else:
                    self._network(ev.obj, ch)
            elif ev.kind == "node":
                self._node(ev.obj, ev.action == "remove", ch)
            elif ev.kind == "service":
                self._service(ev.obj, None if ev.action != "remove" else "remove", ch)
            elif ev.kind == "task":
                t: Task = ev.obj
                if ev.action == "remove":
                    self._drop_task(t.id, ch)
                elif t.networks_attachments or t.id in self._task_nets:
                    name = ev.meta.service_name if ev.meta is not None else ""
                    self._task(t, name, ch)
        return self._updates(ch)

    def _network(self, n: Network, ch: _Changes) -> None:
        if n.subnet is None:
            return  # not allocated yet: nodes learn it with its first task
        if self.networks.get(n.id) != n:
            self.networks[n.id] = n
            ch.networks.add(n.id)
        if n.spec.ingress and self.ingress != n.id:
            self._set_ingress(n.id, ch)

    def _set_ingress(self, network_id: str | None, ch: _Changes) -> None:
        """The ingress network is (now) `network_id`: every ready node holds it, and
        publishing services' endpoints move to it."""
        self.ingress = network_id
        for node in list(self.ready | self._holds_ingress.keys()):
            self._sync_ingress(node, ch)
        for s in list(self._publishing.values()):
            self._service(s, None, ch)

    def _sync_ingress(self, node: str, ch: _Changes) -> None:
        want = self.ingress if node in self.ready else None
        held = self._holds_ingress.get(node)
        if held == want:
            return
        if held is not None:
            del self._holds_ingress[node]
            self._count(node, held, -1, ch)
        if want is not None:
            self._holds_ingress[node] = want
            self._count(node, want, +1, ch)

    def _node(self, node: Node, removed: bool, ch: _Changes) -> None:
        if not removed and node.status.state == "ready":
            self.ready.add(node.id)
        else:
            self.ready.discard(node.id)
        self._sync_ingress(node.id, ch)
        addr = "" if removed else node.status.addr or ""
        if removed:
            self.node_addr.pop(node.id, None)
        elif self.node_addr.get(node.id) == addr:
            return
        else:
            self.node_addr[node.id] = addr
        for net, peers in self.peers.items():  # rare: a node's address changed
            for task_id, p in list(peers.items()):
                if p.node_id == node.id and p.node_addr != addr:
                    peers[task_id] = _replace_addr(p, addr)
                    ch.peers[net][task_id] = peers[task_id]

    def _service(self, s: Service, action: str | None, ch: _Changes) -> None:
        if action != "remove" and s.endpoint.ports:
            self._publishing[s.id] = s
        else:
            self._publishing.pop(s.id, None)
        new = {} if action == "remove" else service_endpoints(s, self.ingress)
        old = self._service_eps.get(s.id, {})
        if new == old:
            return
        for net in old.keys() - new.keys():
            self.endpoints[net].pop(s.id, None)
            ch.endpoints[net][s.id] = None
        for net, ep in new.items():
            if old.get(net) != ep:
                self.endpoints[net][s.id] = ep
                ch.endpoints[net][s.id] = ep
        if new:
            self._service_eps[s.id] = new
        else:
            self._service_eps.pop(s.id, None)

    def _task(self, t: Task, service_name: str, ch: _Changes) -> None:
        if service_name:
            self._task_service_name[t.id] = service_name
        name = service_name or self._task_service_name.get(t.id, "")
        new = task_peers(t, name, self.node_addr.get(t.node_id or "", ""))
        if not new:
            self._drop_task(t.id, ch)
            return
        for att in t.networks_attachments or ():
            if att.network.id not in self.networks:  # known by the task's copy until then
                self.networks[att.network.id] = att.network
        node = t.node_id or ""
        was = self._task_nets.get(t.id)
        if was is not None and was[0] != node:
            self._drop_task(t.id, ch)
            was = None
        old_nets = set(was[1]) if was else set()
        for net in old_nets - new.keys():
            self._unpeer(node, net, t.id, ch)
        for net, p in new.items():
            if self.peers[net].get(t.id) != p:
                self.peers[net][t.id] = p
                ch.peers[net][t.id] = p
            if net not in old_nets:
                self._count(node, net, +1, ch)
        self._task_nets[t.id] = (node, tuple(new))

    def _drop_task(self, task_id: str, ch: _Changes) -> None:
        self._task_service_name.pop(task_id, None)
        was = self._task_nets.pop(task_id, None)
        if was is None:
            return
        node, nets = was
        for net in nets:
            self._unpeer(node, net, task_id, ch)

    def _unpeer(self, node: str, net: str, task_id: str, ch: _Changes) -> None:
        if self.peers[net].pop(task_id, None) is not None:
            ch.peers[net][task_id] = None
        self._count(node, net, -1, ch)

    def _count(self, node: str, net: str, delta: int, ch: _Changes) -> None:
        counts = self.node_nets[node]
        ch.before.setdefault((node, net), counts.get(net, 0) > 0)
        counts[net] += delta
        if counts[net] <= 0:
            del counts[net]
            self.nodes_on[net].discard(node)
        else:
            self.nodes_on[net].add(node)

    def statistics(self) -> dict[str, int]:
        return {
            "networks": len(self.networks),
            "peers": sum(len(p) for p in self.peers.values()),
            "endpoints": sum(len(e) for e in self.endpoints.values()),
        }

    # ---- what nodes are told ----------------------------------------------------------
    def full(self, node_id: str) -> NetworkUpdate:
        nets = sorted(self.node_nets.get(node_id, ()))
        return NetworkUpdate(full=True, data_path_port=self.data_path_port, **self._whole(nets))

    def _whole(self, nets: list[str]) -> dict[str, Any]:
        return {
            "networks": [self.networks[n] for n in nets if n in self.networks],
            "peers": [p for n in nets for p in self.peers.get(n, {}).values()],
            "endpoints": [e for n in nets for e in self.endpoints.get(n, {}).values()],
        }

    def _updates(self, ch: _Changes) -> dict[str, NetworkUpdate]:
        touched = set(ch.peers) | set(ch.endpoints) | ch.networks
        # which nodes came to need, or no longer need, which networks over the batch
        joined_by: dict[str, set[str]] = defaultdict(set)
        left_by: dict[str, set[str]] = defaultdict(set)
        for (node, net), had in ch.before.items():
            has = net in self.node_nets.get(node, ())
            if has and not had:
                joined_by[node].add(net)
            elif had and not has:
                left_by[node].add(net)
        nodes: set[str] = set(joined_by) | set(left_by)
        for net in touched:
            nodes |= self.nodes_on.get(net, set())
        out: dict[str, NetworkUpdate] = {}
        for node in nodes:
            joined = sorted(joined_by.get(node, ()))
            whole = self._whole(joined)
            kept = [n for n in touched if n in self.node_nets.get(node, ()) and n not in joined]
            networks = whole["networks"] + [
                self.networks[n] for n in kept if n in ch.networks and n in self.networks
            ]
            peers = list(whole["peers"])
            removed_peers: list[str] = []
            endpoints = list(whole["endpoints"])
            removed_endpoints: list[str] = []
            for net in [*kept, *joined]:
                # a network it just came to need is sent whole (above), but may have
                # been held before this batch too: what left it meanwhile is removed
                whole_sent = net not in kept
                for task_id, p in ch.peers.get(net, {}).items():
                    if p is None:
                        removed_peers.append(f"{net}/{task_id}")
                    elif not whole_sent:
                        peers.append(p)
                for service_id, e in ch.endpoints.get(net, {}).items():
                    if e is None:
                        removed_endpoints.append(f"{net}/{service_id}")
                    elif not whole_sent:
                        endpoints.append(e)
            left = sorted(left_by.get(node, ()))
            for net in left:  # the node's table drops what it held of the network
                removed_peers += [f"{net}/{t}" for t in self.peers.get(net, {})]
                removed_peers += [
                    f"{net}/{t}" for t, p in ch.peers.get(net, {}).items() if p is None
                ]
                removed_endpoints += [f"{net}/{s}" for s in self.endpoints.get(net, {})]
                removed_endpoints += [
                    f"{net}/{s}" for s, e in ch.endpoints.get(net, {}).items() if e is None
                ]
            update = NetworkUpdate(
                networks=networks,
                removed_networks=left,
                peers=peers,
                removed_peers=list(dict.fromkeys(removed_peers)),
                endpoints=endpoints,
                removed_endpoints=list(dict.fromkeys(removed_endpoints)),
            )
            if not update.empty():
                out[node] = update
        return out


def _replace_addr(p: NetworkPeer, addr: str) -> NetworkPeer:
    return msgspec.structs.replace(p, node_addr=addr)
