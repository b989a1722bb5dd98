"""The netlink work of the overlay plumbing (pyroute2, no shell-outs): a network's
sandbox devices (bridge and VXLAN device), a task's veths into them, and the remote
tasks' forwarding and neighbour entries. Synchronous: plumbing.py runs it in threads.

For each task on another node, the VXLAN device holds a forwarding entry (the task's MAC
→ its node's address, `self`: the device's own table) and a permanent neighbour entry
(its address → its MAC), which the device's ARP proxy answers from. MACs are derived
from the addresses (02:42 + the IPv4 bytes), so both ends agree without asking.
"""

from __future__ import annotations

import errno
import ipaddress
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from shoal.agent.network import netns

VXLAN_PORT = 4789
BRIDGE = "br0"
VXLAN = "vxlan0"
# VXLAN's 50 bytes of headers inside a 1500-byte underlay.
OVERLAY_MTU = 1450
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
# The loopback device's index in every network namespace (LOOPBACK_IFINDEX, net/core).
LOOPBACK_INDEX = 1


def mac_of(addr: str) -> str:
    """The MAC of the interface holding IPv4 `addr`: 02:42 and the address's bytes."""
    return "02:42:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(addr).packed)


@contextmanager
def ipr(ns: str | None) -> Iterator[IPRoute]:
    """A netlink socket in the namespace named by `ns` (None: the caller's)."""
    if ns:
        with netns.Entered(ns):
            sock = IPRoute()
    else:
        sock = IPRoute()
    try:
        yield sock
    finally:
        sock.close()


def index(sock: IPRoute, name: str) -> int | None:
    found = sock.link_lookup(ifname=name)
    return found[0] if found else None


def _quiet(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Run a removal; a thing already gone is not an error."""
    try:
        fn(*args, **kwargs)
    except NetlinkError as e:
        if e.code not in (errno.ENODEV, errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL):
            raise


def make_sandbox(path: Path, node_netns: str | None, vni: int, local: str, port: int) -> None:
    """In the sandbox `path`: `lo` up, the bridge, and the VXLAN device, created from the
    node's namespace (where its UDP socket is bound, on `local`) directly into the
    sandbox, then enslaved to the bridge."""
    with ipr(str(path)) as sb:
        sb.link("set", index=index(sb, "lo"), state="up")
        sb.link("add", ifname=BRIDGE, kind="bridge", br_stp_state=0)
        br = index(sb, BRIDGE)
        sb.link("set", index=br, mtu=OVERLAY_MTU, state="up")
        fd = os.open(path, os.O_RDONLY)
        try:
            with ipr(node_netns) as node:
                node.link(
                    "add",
                    ifname=VXLAN,
                    kind="vxlan",
                    vxlan_id=vni,
                    vxlan_local=local,
                    vxlan_port=port,
                    vxlan_learning=0,
                    vxlan_proxy=1,
                    net_ns_fd=fd,
                )
        finally:
            os.close(fd)
        sb.link("set", index=index(sb, VXLAN), master=br, mtu=OVERLAY_MTU, state="up")


def add_interfaces(task_ns: str, veth: str, links: list[tuple[str, str, int]]) -> None:
    """In the task's namespace: `lo` up and, for each (sandbox, "addr/prefix", bridge
    index), a veth `eth<i>` with that address and its derived MAC, whose other end
    (`veth`) is on the sandbox's bridge: enslaved, sized and up in the request that
    creates it (the kernel resolves the master in the sandbox the end is created in),
    so no socket in the sandbox is needed. `bridge_index` gives the bridge's index."""
    task_fd = os.open(task_ns, os.O_RDONLY)
    try:
        # One socket, in the task's namespace: the veth is asked for from there too (both
        # its ends name their namespace, so where the request comes from does not
        # matter), and `lo` has the same index in every namespace.
        with ipr(task_ns) as t:
            t.link("set", index=LOOPBACK_INDEX, state="up")
            for i, (sandbox, address, bridge) in enumerate(links):
                ifname = f"eth{i}"
                iface = ipaddress.IPv4Interface(address)
                sb_fd = os.open(sandbox, os.O_RDONLY)
                try:
                    t.link(
                        "add",
                        ifname=veth,
                        kind="veth",
                        net_ns_fd=sb_fd,
                        master=bridge,
                        mtu=OVERLAY_MTU,
                        state="up",
                        peer={
                            "ifname": ifname,
                            "net_ns_fd": task_fd,
                            "address": mac_of(str(iface.ip)),
                            "mtu": OVERLAY_MTU,
                        },
                    )
                finally:
                    os.close(sb_fd)
                idx = index(t, ifname)
                t.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
                t.link("set", index=idx, state="up")
    finally:
        os.close(task_fd)


def bridge_index(sandbox: str) -> int:
    """The index of the sandbox's bridge (stable for the sandbox's life)."""
    with ipr(sandbox) as sb:
        br = index(sb, BRIDGE)
    if br is None:
        raise OSError(errno.ENODEV, f"no {BRIDGE} in {sandbox}")
    return br


def delete_links(ns: str | None, names: list[str]) -> None:
    """Delete the devices named in namespace `ns` (None: the caller's) that are there."""
    with ipr(ns) as sock:
        for name in names:
            idx = index(sock, name)
            if idx is not None:
                _quiet(sock.link, "del", index=idx)


def program_peers(sandbox: str, want: dict[str, str]) -> None:
    """Make the sandbox's VXLAN entries exactly `want` ({task address: node address}):
    entries of tasks gone or moved are removed, new ones added."""
    with ipr(sandbox) as sb:
        vx = index(sb, VXLAN)
        if vx is None:
            return
        have_fdb: dict[str, str] = {}
        for msg in sb.fdb("dump", ifindex=vx):
            mac, dst = msg.get("NDA_LLADDR"), msg.get("NDA_DST")
            if mac and dst and msg.get("ifindex") == vx and mac != "00:00:00:00:00:00":
                have_fdb[mac] = dst
        have_neigh: dict[str, str] = {}
        for msg in sb.neigh("dump", ifindex=vx):
            if msg.get("ifindex") == vx and msg.get("NDA_DST"):
                have_neigh[msg.get("NDA_DST")] = msg.get("NDA_LLADDR") or ""
        want_fdb = {mac_of(a): n for a, n in want.items()}
        for mac, dst in have_fdb.items():
            if want_fdb.get(mac) != dst:
                _quiet(sb.fdb, "del", ifindex=vx, lladdr=mac, dst=dst, flags=NTF_SELF)
        for mac, dst in want_fdb.items():
            if have_fdb.get(mac) != dst:
                sb.fdb(
                    "replace", ifindex=vx, lladdr=mac, dst=dst, state=NUD_PERMANENT,
                    flags=NTF_SELF,
                )  # fmt: skip
        for addr in have_neigh:
            if addr not in want:
                _quiet(sb.neigh, "del", ifindex=vx, dst=addr)
        for addr in want:
            if have_neigh.get(addr) != mac_of(addr):
                sb.neigh("replace", ifindex=vx, dst=addr, lladdr=mac_of(addr), state=NUD_PERMANENT)
