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
`nft -f` transaction, only when its rendering changed, many namespaces at once, and is
driven by the plumbing's sync (one pass per burst of updates, coalesced there).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from shoal.agent.network import nft
from shoal.agent.network.state import NetworkState
from shoal.log import get_logger

FAMILY = "ip"
TABLE = "shoal-vip"
# Namespaces whose tables are applied at once by one sync pass: each transaction is
# mostly the kernel waiting (~13 ms) for an RCU grace period, which concurrent
# transactions share; their CPU (~0.6 ms each) is small.
APPLY_WORKERS = 16

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


@dataclass(frozen=True)
class Change:
    """One task's table to be made equal to `body` (None: no table) by `script`."""

    task_id: str
    ns: str
    body: str | None
    script: str


class VipTables:
    """The `ip shoal-vip` table of each task namespace, kept equal to its rendering.
    `applied` holds what each namespace has now (None: no table).

    A change is planned (`plan`: pure, cheap), applied (`apply`, `apply_all`: the kernel
    work, many namespaces at once from a pool of threads: most of a transaction is the
    kernel's RCU wait, nft.py) and then recorded (`done`); the caller serialises planning
    and recording per task (plumbing.py)."""

    def __init__(self, workers: int = APPLY_WORKERS) -> None:
        self.applied: dict[str, str | None] = {}
        self.transactions = 0
        self.failures = 0
        self.workers = workers
        self._pool: ThreadPoolExecutor | None = None

    def plan(
        self,
        task_id: str,
        ns: str,
        state: NetworkState,
        networks: list[str],
        rendered: dict[tuple[str, ...], str | None] | None = None,
        fresh: bool = False,
    ) -> Change | None:
        """The transaction that makes the task's table match the state; None when it
        does already (or needs none). `rendered`: bodies already rendered in this pass,
        by the networks they are for (tasks on the same networks share one). `fresh`:
        the namespace was just made, so it has no table yet."""
        key = tuple(networks)
        if rendered is not None and key in rendered:
            body = rendered[key]
        else:
            body = render(vips_of(state, networks))
            if rendered is not None:
                rendered[key] = body
        if task_id in self.applied and self.applied[task_id] == body:
            return None
        if body is None:
            if task_id not in self.applied:  # a fresh namespace has no table
                self.applied[task_id] = None
                return None
            script = nft.delete_table(FAMILY, TABLE)
        elif fresh and task_id not in self.applied:
            script = nft.create_table(FAMILY, TABLE, body)
        else:
            script = nft.replace_table(FAMILY, TABLE, body)
        return Change(task_id, ns, body, script)

    def apply(self, change: Change) -> bool:
        """Run the change's transaction in its namespace; False (logged) if it failed."""
        try:
            nft.run(change.ns, change.script)
        except Exception:
            log.exception("VIP rules not applied", task=change.task_id)
            return False
        return True

    def apply_all(self, changes: list[Change]) -> list[bool]:
        """`apply` each change, up to `workers` at once; results in the same order."""
        if len(changes) <= 1 or self.workers <= 1:
            return [self.apply(c) for c in changes]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="shoal-vip")
        return list(self._pool.map(self.apply, changes))

    def done(self, change: Change, ok: bool) -> None:
        """Record the outcome of an applied change."""
        if ok:
            self.transactions += 1
            self.applied[change.task_id] = change.body
        else:
            self.failures += 1
            self.applied.pop(change.task_id, None)  # tried again on the next sync

    def forget(self, task_id: str) -> str | None:
        """Stop following the task; returns the script that drops its table, None when
        it has none (or cannot have one any more: `ns` gone)."""
        had = self.applied.pop(task_id, "unknown")
        return None if had is None else nft.delete_table(FAMILY, TABLE)

    def remove(self, task_id: str, ns: str, script: str) -> None:
        """Drop the task's table (a container's namespace may outlive the attachment)."""
        try:
            nft.run(ns, script)
        except Exception:
            log.warning("VIP rules not removed", task=task_id)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
