"""Host-mode published ports (`--publish mode=host,published=8081,target=80`) of a task
in a namespace of its own: the port answers on this node only, on its addresses and its
loopback, and leads to the task (docs/networking.md, "Load balancing").

The node's namespace has no route to a task's overlay addresses, so such a task gets
one more veth pair: `hp0` in the task (LINK_BASE + 4i + 2, /30) and `shh<task id>` in the
node's namespace (+1), i the lowest index no other task of the node holds. The node's
table of shoal's own, `ip shoal-hp-<random>` (recorded by name), DNATs each port to the
task's end and target port, from outside (prerouting) and from the node itself (output:
`route_localnet` on the node's end, then masquerade). A task with no attachment has no
namespace: it listens on the node's network itself, nothing to do.

A task's ports are those it was made with (`TaskMeta.host_ports`, sent with the task).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from typing import TYPE_CHECKING, Any

from shoal.agent.network import devices, dockerfw, nft
from shoal.log import get_logger
from shoal.types.network import PortMapping

if TYPE_CHECKING:
    from shoal.agent.network.plumbing import Plumbing

LINK_BASE = ipaddress.IPv4Address("169.254.128.0")  # /17: 8192 tasks with host ports
LINK_PREFIX = 30
MAX_LINKS = 8192
TASK_END = "hp0"
FAMILY = "ip"

log = get_logger("shoal.agent.network.hostports")


def link_addrs(i: int) -> tuple[str, str]:
    """(node end, task end) of link `i`."""
    base = LINK_BASE + 4 * i
    return str(base + 1), str(base + 2)


def node_end(task_id: str) -> str:
    return f"shh{task_id[:11]}"


def render(tasks: list[tuple[str, str, list[dict[str, Any]]]]) -> str:
    """The node table for [(node end, task end address, ports)]."""
    dnat = []
    post = []
    for veth, addr, ports in tasks:
        for p in ports:
            proto, published, target = p.get("protocol") or "tcp", p["published"], p["target"]
            dnat.append(
                f"\t\tfib daddr type local meta l4proto {proto} th dport {published} "
                f"counter dnat to {addr}:{target}\n"
            )
        post.append(f'\t\toifname "{veth}" counter masquerade\n')
    rules = "".join(dnat)
    return (
        "\tchain hp_pre {\n"
        "\t\ttype nat hook prerouting priority dstnat; policy accept;\n"
        f"{rules}"
        "\t}\n"
        "\tchain hp_out {\n"
        "\t\ttype nat hook output priority -100; policy accept;\n"
        f"{rules}"
        "\t}\n"
        "\tchain hp_post {\n"
        "\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
        f"{''.join(post)}"
        "\t}\n"
    )


class HostPorts:
    """Kept by the plumbing, under its lock, in its threads."""

    def __init__(self, plumbing: Plumbing) -> None:
        self.p = plumbing
        self.applied: str | None = None

    def add_task_locked(self, task_id: str, ports: list[PortMapping]) -> None:
        """The task's link (recorded first), then the table."""
        wanted = [
            {"protocol": p.protocol, "published": p.published, "target": p.target}
            for p in ports
            if p.mode == "host" and p.published and p.target
        ]
        entry = self.p.record.tasks.get(task_id)
        if not wanted or entry is None:
            return
        used = {t["hostport"]["index"] for t in self.p.record.tasks.values() if t.get("hostport")}
        index = next(i for i in range(MAX_LINKS) if i not in used)
        veth = node_end(task_id)
        entry["hostport"] = {"veth": veth, "index": index, "ports": wanted}
        self.p._save()
        self.p.forwarding_on_locked()
        node_addr, task_addr = link_addrs(index)
        fd = os.open(entry["netns"], os.O_RDONLY)
        try:
            with devices.ipr(self.p.node_netns) as node:
                node.link(
                    "add", ifname=veth, kind="veth",
                    peer={"ifname": TASK_END, "net_ns_fd": fd},
                )  # fmt: skip
                idx = devices.index(node, veth)
                node.addr("add", index=idx, address=node_addr, prefixlen=LINK_PREFIX)
                node.link("set", index=idx, state="up")
        finally:
            os.close(fd)
        with devices.ipr(entry["netns"]) as t:
            idx = devices.index(t, TASK_END)
            t.addr("add", index=idx, address=task_addr, prefixlen=LINK_PREFIX)
            t.link("set", index=idx, state="up")
        from shoal.agent.network.mesh import sysctl  # one helper for both

        sysctl(self.p.node_netns, f"net.ipv4.conf.{veth}.route_localnet", "1")
        entry["hostport"]["iptables"] = dockerfw.rules_for(self.p.node_netns, veth)
        self.p._save()
        for rule in entry["hostport"]["iptables"]:
            dockerfw.insert(self.p.node_netns, rule)
        self.sync_locked()

    def remove_task_locked(self, task_id: str) -> None:
        """Before the task's entry goes: its link (by the recorded name)."""
        entry = self.p.record.tasks.get(task_id) or {}
        link = entry.get("hostport")
        if not link:
            return
        for rule in link.get("iptables") or []:
            dockerfw.delete(self.p.node_netns, rule)
        devices.delete_links(self.p.node_netns, [link["veth"]])
        del entry["hostport"]
        self.p._save()

    def sync_locked(self) -> None:
        """The node's table equal to the tasks' links; removed when there are none."""
        tasks = [
            (t["hostport"]["veth"], link_addrs(t["hostport"]["index"])[1], t["hostport"]["ports"])
            for _, t in sorted(self.p.record.tasks.items())
            if t.get("hostport")
        ]
        rec = self.p.record
        if not tasks:
            if rec.hostports is not None:
                nft.run(self.p.node_netns, nft.delete_table(FAMILY, rec.hostports["table"]))
                rec.hostports = None
                self.p._save()
                self.applied = None
            return
        if rec.hostports is None:
            rec.hostports = {"table": f"shoal-hp-{secrets.token_hex(4)}"}
            self.p._save()
            self.applied = None
        body = render(tasks)
        if body != self.applied:
            nft.run(self.p.node_netns, nft.replace_table(FAMILY, rec.hostports["table"], body))
            self.applied = body
