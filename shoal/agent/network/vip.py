"""East-west load balancing: a connection from a task to a service's VIP goes to one of
the service's backends, in the kernel (docs/networking.md, "Load balancing").

As Docker does its VIP balancing in the container's own namespace, each task namespace
gets one nftables table, `ip shoal-vip`: in the `output` nat hook every VIP of the
networks the task is on is DNATed to `numgen inc mod N` over its backends (round robin,
per namespace, what kube-proxy does without IPVS); conntrack un-NATs the replies in the
same namespace, so nothing is needed on the way back and the backend sees the client's
own address. A VIP with no backend is refused at once in the `output` filter hook
(`reject with tcp reset`, ICMP port unreachable for the rest): by then every VIP with a
backend has been rewritten, so only those without one are still addressed to a VIP.

Backends of a service on a network: its NetworkPeers there with `running` true
(NetworkState). The ingress network has no VIP balancing here (mesh.py serves it).

Rendering is pure (`render`, `vips_of`); `VipTables` applies each task's table with one
`nft -f` transaction, only when its rendering changed, and is driven by the plumbing's
sync (one pass per burst of updates, coalesced there).
"""

from __future__ import annotations

from shoal.agent.network import nft
from shoal.agent.network.state import NetworkState
from shoal.log import get_logger

FAMILY = "ip"
TABLE = "shoal-vip"

log = get_logger("shoal.agent.network.vip")


def backends_of(state: NetworkState, network_id: str, service_id: str) -> list[str]:
    """The addresses of the service's running tasks on the network, sorted."""
    return sorted(
        p.addr
        for p in state.peers_of(network_id)
        if p.service_id == service_id and p.running and p.addr
    )


def vips_of(state: NetworkState, network_ids: list[str]) -> dict[str, list[str]]:
    """VIP → backends, for every service endpoint with a VIP on the given networks
    (the ingress network left out)."""
    out: dict[str, list[str]] = {}
    for nid in network_ids:
        net = state.networks.get(nid)
        if net is None or net.spec.ingress:
            continue
        for ep in state.endpoints_of(nid):
            if ep.vip:
                out[ep.vip] = backends_of(state, nid, ep.service_id)
    return out


def dnat_map(backends: list[str]) -> str:
    """`numgen inc mod N map { 0 : a, ... }`: the round-robin choice among backends
    (a caller that rewrites the port too appends `: port`)."""
    items = ", ".join(f"{i} : {b}" for i, b in enumerate(backends))
    return f"numgen inc mod {len(backends)} map {{ {items} }}"


def render(vips: dict[str, list[str]]) -> str | None:
    """The body of table `ip shoal-vip` for these VIPs; None when there are none."""
    if not vips:
        return None
    nat = []
    for vip, backends in sorted(vips.items()):
        if backends:
            nat.append(f"\t\tip daddr {vip} dnat to {dnat_map(backends)}\n")
    all_vips = ", ".join(sorted(vips))
    return (
        "\tchain vip_nat {\n"
        "\t\ttype nat hook output priority -100; policy accept;\n"
        f"{''.join(nat)}"
        "\t}\n"
        "\tchain vip_refuse {\n"
        "\t\ttype filter hook output priority 0; policy accept;\n"
        f"\t\tip daddr {{ {all_vips} }} meta l4proto tcp reject with tcp reset\n"
        f"\t\tip daddr {{ {all_vips} }} reject\n"
        "\t}\n"
    )


class VipTables:
    """The `ip shoal-vip` table of each task namespace, kept equal to its rendering.
    `applied` holds what each namespace has now (None: no table)."""

    def __init__(self) -> None:
        self.applied: dict[str, str | None] = {}
        self.transactions = 0
        self.failures = 0

    def sync_task(self, task_id: str, ns: str, state: NetworkState, networks: list[str]) -> bool:
        """Make the task's table match the state; True when a transaction was run."""
        body = render(vips_of(state, networks))
        if task_id in self.applied and self.applied[task_id] == body:
            return False
        if body is None:
            script = nft.delete_table(FAMILY, TABLE)
            if task_id not in self.applied:  # a fresh namespace has no table
                self.applied[task_id] = None
                return False
        else:
            script = nft.replace_table(FAMILY, TABLE, body)
        try:
            nft.run(ns, script)
        except Exception:
            self.failures += 1
            self.applied.pop(task_id, None)  # tried again on the next sync
            log.exception("VIP rules not applied", task=task_id)
            return False
        self.transactions += 1
        self.applied[task_id] = body
        return True

    def remove_task(self, task_id: str, ns: str | None) -> None:
        """Drop the task's table (a container's namespace may outlive the attachment)."""
        had = self.applied.pop(task_id, "unknown")
        if ns is None or had is None:
            return
        try:
            nft.run(ns, nft.delete_table(FAMILY, TABLE))
        except Exception:
            log.warning("VIP rules not removed", task=task_id)
