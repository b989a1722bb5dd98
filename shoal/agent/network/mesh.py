"""North-south: the routing mesh. A port a service publishes in ingress mode answers on
every node, on the node's addresses and on its loopback, and reaches a backend task on
any node (docs/networking.md, "Load balancing: VIPs and the routing mesh").

Per node, while any service publishes an ingress port, a gateway namespace (Docker's
`ingress-sbox`): `gw0` (LINK_GW) on a veth pair with the node's namespace (LINK_NODE on
the node's end, a name with a random suffix, recorded), and `ing0` on the ingress
network's bridge with the network's gateway address (`.1`, which the allocator keeps for
the node side). The node's namespace gets one nftables table of shoal's own (`ip
shoal-mesh-<random>`, recorded by name): a published port to any local address is
DNATed to the gateway, from outside (prerouting) and from the node itself (output,
127.0.0.1 included: `route_localnet` on the node's end of the veth, then masquerade).
The gateway's table (`ip shoal-mesh`) picks a backend round robin (`numgen inc`):

- a backend on this node: DNAT to its ingress address and target port, masquerade to
  `.1` (so the task replies to this node's gateway);
- a backend on another node: DNAT to that node's address and the published port, out
  through the node's namespace (masquerade to the node's address), marked with DSCP
  HOP_DSCP; that node's gateway serves a marked connection from its own backends only.

Every node has `.1` on its own ingress bridge, so a task on node B replying to `.1`
would reach B's gateway, not A's: that is why a remote backend is reached through its
node rather than across the overlay from A (Docker gives each node's ingress-sbox an
address of its own on the ingress network, allocated by the manager; shoal does not
allocate those yet).

A port with no backend is not DNATed in the gateway: the connection reaches the
gateway's own address, where nothing listens, and is refused (RST, or ICMP port
unreachable for UDP).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoal.agent.network import devices, dockerfw, netns, nft
from shoal.agent.network.state import NetworkState
from shoal.agent.network.vip import dnat_map
from shoal.log import get_logger

if TYPE_CHECKING:
    from shoal.agent.network.plumbing import Plumbing

LINK_NODE = "169.254.119.1"
LINK_GW = "169.254.119.2"
LINK_PREFIX = 30
GW_UPLINK = "gw0"
GW_INGRESS = "ing0"
SANDBOX_END = "vgw0"  # the gateway's veth end on the ingress sandbox's bridge
GW_NETNS = "mesh-gw"
GW_TABLE = "shoal-mesh"
FAMILY = "ip"
# Marks a connection one node hands to another (unassigned DSCP code point).
HOP_DSCP = 45

log = get_logger("shoal.agent.network.mesh")


@dataclass(frozen=True, order=True)
class Port:
    protocol: str
    published: int
    target: int
    service_id: str


def ingress_network(state: NetworkState) -> str | None:
    for nid, net in state.networks.items():
        if net.spec.ingress:
            return nid
    return None


def mesh_ports(state: NetworkState, ingress: str) -> list[Port]:
    """The ingress-mode published ports of the services on the ingress network."""
    out = {
        Port(pm.protocol or "tcp", pm.published, pm.target, ep.service_id)
        for ep in state.endpoints_of(ingress)
        for pm in ep.ports
        if pm.mode in ("ingress", "") and pm.published
    }
    return sorted(out)


def backends(
    state: NetworkState, ingress: str, service_id: str, local_addr: str | None
) -> tuple[list[str], list[str]]:
    """(addresses of the service's running tasks on this node, the node address of each
    of its running tasks on other nodes), sorted."""
    local, remote = [], []
    for p in state.peers_of(ingress):
        if p.service_id != service_id or not p.running or not p.addr:
            continue
        if p.node_addr == local_addr:
            local.append(p.addr)
        else:
            remote.append(p.node_addr)
    return sorted(local), sorted(remote)


def _match(proto: str, port: int) -> str:
    return f"meta l4proto {proto} th dport {port}"


def render_node(ports: list[Port], node_veth: str) -> str:
    """The node namespace's table: published ports to the gateway."""
    to_gw = "".join(
        f"\t\tfib daddr type local {_match(p.protocol, p.published)} counter dnat to {LINK_GW}\n"
        for p in ports
    )
    return (
        "\tchain mesh_pre {\n"
        "\t\ttype nat hook prerouting priority dstnat; policy accept;\n"
        f"{to_gw}"
        "\t}\n"
        "\tchain mesh_out {\n"
        "\t\ttype nat hook output priority -100; policy accept;\n"
        f"{to_gw}"
        "\t}\n"
        "\tchain mesh_post {\n"
        "\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
        f'\t\toifname "{node_veth}" counter masquerade\n'
        # (no input device in postrouting: the gateway's hops are known by their source)
        f'\t\tip saddr {LINK_GW} oifname != "{node_veth}" counter masquerade\n'
        "\t}\n"
    )


def render_gw(state: NetworkState, ingress: str, ports: list[Port], local_addr: str | None) -> str:
    """The gateway's table: a backend per connection, here or on another node."""
    hop, pick = [], []
    for p in ports:
        local, remote = backends(state, ingress, p.service_id, local_addr)
        match = f'iifname "{GW_UPLINK}" {_match(p.protocol, p.published)}'
        # A connection another node handed over: this node's backends, or refused.
        if local:
            targets = [f"{a} . {p.target}" for a in local]
            hop.append(f"\t\t{match} ip dscp {HOP_DSCP} counter dnat ip to {dnat_map(targets)}\n")
        else:
            hop.append(f"\t\t{match} ip dscp {HOP_DSCP} accept\n")
        targets = [f"{a} . {p.target}" for a in local] + [f"{n} . {p.published}" for n in remote]
        if targets:
            pick.append(f"\t\t{match} counter dnat ip to {dnat_map(targets)}\n")
    return (
        "\tchain mesh_pre {\n"
        "\t\ttype nat hook prerouting priority dstnat; policy accept;\n"
        f"{''.join(hop)}{''.join(pick)}"
        "\t}\n"
        "\tchain mesh_hop {\n"
        "\t\ttype filter hook forward priority 0; policy accept;\n"
        f'\t\toifname "{GW_UPLINK}" ct direction original counter ip dscp set {HOP_DSCP}\n'
        "\t}\n"
        "\tchain mesh_post {\n"
        "\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
        f'\t\toifname "{GW_INGRESS}" counter masquerade\n'
        f'\t\toifname "{GW_UPLINK}" ct status dnat counter masquerade\n'
        "\t}\n"
    )


def sysctl(ns: str | None, key: str, value: str | None = None) -> str:
    """Read (and with `value`, write) /proc/sys/<key> in the namespace `ns`; returns the
    value it had."""
    path = "/proc/sys/" + key.replace(".", "/")

    def rw() -> str:
        with open(path) as f:
            old = f.read().strip()
        if value is not None and old != value:
            with open(path, "w") as f:
                f.write(value)
        return old

    if ns:
        with netns.Entered(ns):
            return rw()
    return rw()


class Mesh:
    """The node's routing mesh, kept by the plumbing (under its lock, in its threads)."""

    def __init__(self, plumbing: Plumbing) -> None:
        self.p = plumbing
        self.applied: dict[str, str] = {}  # "node" / "gw" → body applied
        self.transactions = 0

    @property
    def entry(self) -> dict[str, Any] | None:
        return self.p.record.mesh

    def network(self) -> str | None:
        return self.entry["network"] if self.entry else None

    def sync_locked(self) -> None:
        state = self.p.state
        ingress = ingress_network(state) if state is not None else None
        ports = mesh_ports(state, ingress) if state is not None and ingress else []
        if state is None or ingress is None or not ports:
            self.remove_locked()
            return
        entry = self.entry
        if entry is not None and (
            entry["network"] != ingress or not netns.exists(Path(entry["netns"]))
        ):
            self.remove_locked()
            entry = None
        if entry is None:
            entry = self._make_locked(ingress)
        node_body = render_node(ports, entry["node_veth"])
        gw_body = render_gw(state, ingress, ports, self.p.underlay_addr)
        if self.applied.get("gw") != gw_body:
            nft.run(entry["netns"], nft.replace_table(FAMILY, GW_TABLE, gw_body))
            self.applied["gw"] = gw_body
            self.transactions += 1
        if self.applied.get("node") != node_body:
            nft.run(self.p.node_netns, nft.replace_table(FAMILY, entry["table"], node_body))
            self.applied["node"] = node_body
            self.transactions += 1

    def _make_locked(self, ingress: str) -> dict[str, Any]:
        """The gateway namespace and its links, each recorded before it is made."""
        net = self.p.state.networks[ingress] if self.p.state else None
        if net is None or not net.subnet:
            raise ValueError("the ingress network has no subnet yet")
        subnet = ipaddress.IPv4Network(net.subnet)
        gateway = net.gateway or str(subnet.network_address + 1)
        sandbox = self.p.ensure_network(net)
        self.p._ensure_netns_dir()
        suffix = secrets.token_hex(4)
        entry: dict[str, Any] = {
            "network": ingress,
            "netns": str(self.p.netns_dir / GW_NETNS),
            "node_veth": f"shm{suffix}",
            "table": f"shoal-mesh-{suffix}",
        }
        self.p.record.mesh = entry
        self.p._save()
        path = Path(entry["netns"])
        if netns.exists(path) or path.exists():
            netns.remove(path)  # left half-made by a crash: the record named it
        netns.create(path)
        entry["ino"] = netns.inode(path)
        self.p._save()
        node_ns = self.p.node_netns
        self.p.forwarding_on_locked()
        self._links(str(path), sandbox, entry["node_veth"], gateway, subnet.prefixlen)
        sysctl(node_ns, f"net.ipv4.conf.{entry['node_veth']}.route_localnet", "1")
        entry["iptables"] = dockerfw.rules_for(node_ns, entry["node_veth"])
        self.p._save()
        for rule in entry["iptables"]:
            dockerfw.insert(node_ns, rule)
        sysctl(str(path), "net.ipv4.ip_forward", "1")
        self.applied.clear()
        log.info("routing mesh gateway made", netns=str(path), table=entry["table"])
        return entry

    def _links(self, gw: str, sandbox: str, node_veth: str, gateway: str, prefix: int) -> None:
        node_ns = self.p.node_netns
        gw_fd = os.open(gw, os.O_RDONLY)
        sb_fd = os.open(sandbox, os.O_RDONLY)
        try:
            with devices.ipr(node_ns) as node:
                node.link(
                    "add", ifname=node_veth, kind="veth",
                    peer={"ifname": GW_UPLINK, "net_ns_fd": gw_fd},
                )  # fmt: skip
                idx = devices.index(node, node_veth)
                node.addr("add", index=idx, address=LINK_NODE, prefixlen=LINK_PREFIX)
                node.link("set", index=idx, state="up")
                node.link(
                    "add", ifname=SANDBOX_END, kind="veth", net_ns_fd=sb_fd,
                    peer={
                        "ifname": GW_INGRESS, "net_ns_fd": gw_fd,
                        "address": devices.mac_of(gateway), "mtu": devices.OVERLAY_MTU,
                    },
                )  # fmt: skip
        finally:
            os.close(gw_fd)
            os.close(sb_fd)
        with devices.ipr(sandbox) as sb:
            sb.link(
                "set", index=devices.index(sb, SANDBOX_END),
                master=devices.index(sb, devices.BRIDGE), mtu=devices.OVERLAY_MTU, state="up",
            )  # fmt: skip
        with devices.ipr(gw) as g:
            g.link("set", index=devices.index(g, "lo"), state="up")
            up = devices.index(g, GW_UPLINK)
            g.addr("add", index=up, address=LINK_GW, prefixlen=LINK_PREFIX)
            g.link("set", index=up, state="up")
            ing = devices.index(g, GW_INGRESS)
            g.addr("add", index=ing, address=gateway, prefixlen=prefix)
            g.link("set", index=ing, state="up")
            g.route("add", dst="0.0.0.0/0", gateway=LINK_NODE)

    def remove_locked(self) -> None:
        """Remove what the record names: the node's table, the node's veth (its peer in
        the gateway goes with it), the gateway's end on the ingress bridge, the gateway
        namespace; ip_forward put back if nothing else needs it."""
        entry = self.entry
        if entry is None:
            return
        node_ns = self.p.node_netns
        try:
            nft.run(node_ns, nft.delete_table(FAMILY, entry["table"]))
        except nft.NftError:
            log.exception("routing mesh table not removed", table=entry["table"])
        for rule in entry.get("iptables") or []:
            dockerfw.delete(node_ns, rule)
        devices.delete_links(node_ns, [entry["node_veth"]])
        sb = self.p.record.networks.get(entry["network"])
        if sb is not None and netns.exists(Path(sb["netns"])):
            devices.delete_links(sb["netns"], [SANDBOX_END])
        netns.remove(Path(entry["netns"]))
        self.p.record.mesh = None
        self.p._save()
        self.p.forwarding_restore_locked()
        self.applied.clear()
        log.info("routing mesh gateway removed", table=entry["table"])
