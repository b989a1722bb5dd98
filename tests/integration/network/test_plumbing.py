"""The overlay data path with real kernel objects, without the manager: two "nodes"
(lab namespaces on one bridge), each with its own Plumbing driven by NetworkUpdates
built by hand, tasks in namespaces of their own talking over VXLAN."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from shoal.agent.network import netns
from shoal.agent.network.devices import BRIDGE, VXLAN, mac_of
from shoal.agent.network.plumbing import Plumbing, veth_name
from shoal.agent.network.state import NetworkState
from shoal.types.network import (
    VXLAN_ID_OPTION,
    Driver,
    IPAMConfig,
    IPAMOptions,
    Network,
    NetworkAttachment,
    NetworkPeer,
    NetworkUpdate,
    ServiceEndpoint,
)

from ..cluster_harness import NetnsLab

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def network(subnet: str) -> Network:
    vni = 4200 + secrets.randbelow(100_000)
    return Network(
        id=secrets.token_hex(12),
        driver_state=Driver(name="overlay", options={VXLAN_ID_OPTION: str(vni)}),
        ipam_options=IPAMOptions(configs=[IPAMConfig(subnet=subnet)]),
    )


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=20, check=check)


def in_ns(path: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", f"--net={path}", *argv], capture_output=True, text=True, timeout=20
    )


def reaches(src_ns: str, addr: str) -> bool:
    return in_ns(src_ns, "busybox", "ping", "-c", "1", "-W", "2", addr).returncode == 0


def listing(ns: str | None) -> dict[str, Any]:
    """What the namespace `ns` (None: the host's) holds that the plumbing could leave."""
    pre = ["ip", "netns", "exec", ns] if ns else []
    return {
        "links": sorted(sh(*pre, "ip", "-o", "link", "show").stdout.split("\n")),
        "fdb": sh(*pre, "bridge", "fdb", "show").stdout,
        "nft": sh(*pre, "nft", "-s", "list", "ruleset").stdout,
    }


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, tuple[str, ...]]] = []

    async def task_attached(self, task_id: str, netns: str, network_ids: list[str]) -> None:
        self.events.append(("attached", task_id, (netns, *network_ids)))

    async def task_detached(self, task_id: str) -> None:
        self.events.append(("detached", task_id, ()))


@pytest.fixture
def lab() -> Iterator[tuple[NetnsLab, list[tuple[str, str]]]]:
    lab = NetnsLab()
    try:
        hosts = [lab.add_host(), lab.add_host()]
        yield lab, hosts
    finally:
        assert lab.teardown() == []


def mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if f" {path}" in line]


def test_tasks_on_two_nodes_reach_each_other_over_vxlan_and_only_on_their_network(
    lab: tuple[NetnsLab, list[tuple[str, str]]], tmp_path: Path
) -> None:
    _lab, [(ns_a, addr_a), (ns_b, addr_b)] = lab
    before = {ns: listing(ns) for ns in (ns_a, ns_b)}
    net = f"10.210.{secrets.randbelow(250)}"
    n1 = network(f"{net}.0/24")
    n2 = network(f"10.211.{secrets.randbelow(250)}.0/24")
    att = lambda n, a: NetworkAttachment(network=n, addresses=[a])  # noqa: E731
    peers = [
        NetworkPeer(network_id=n1.id, task_id="ta1", node_id="A", node_addr=addr_a, addr=f"{net}.2"),
        NetworkPeer(network_id=n1.id, task_id="tb1", node_id="B", node_addr=addr_b, addr=f"{net}.3"),
        NetworkPeer(network_id=n1.id, task_id="ta2", node_id="A", node_addr=addr_a, addr=f"{net}.4"),
        # On network 2 but with an address in network 1's subnet: only L2 isolation
        # (a different bridge, a different VNI) keeps it from network 1's tasks.
        NetworkPeer(network_id=n2.id, task_id="tb2", node_id="B", node_addr=addr_b, addr=f"{net}.9"),
    ]  # fmt: skip
    # A task on two networks (an interface on each) reaches both.
    third = f"10.217.{secrets.randbelow(250)}"
    n3 = network(f"{third}.0/24")
    peers += [
        NetworkPeer(network_id=n1.id, task_id="ta3", node_id="A", node_addr=addr_a, addr=f"{net}.5"),
        NetworkPeer(network_id=n3.id, task_id="ta3", node_id="A", node_addr=addr_a, addr=f"{third}.2"),
        NetworkPeer(network_id=n3.id, task_id="tb3", node_id="B", node_addr=addr_b, addr=f"{third}.3"),
    ]  # fmt: skip
    update = NetworkUpdate(full=True, networks=[n1, n2, n3], peers=peers)

    async def run() -> None:
        plumbings, recorders = [], []
        for name, (ns, addr) in (("a", (ns_a, addr_a)), ("b", (ns_b, addr_b))):
            p = Plumbing(
                tmp_path / name / "data", tmp_path / name / "run", addr, f"/run/netns/{ns}"
            )
            rec = Recorder()
            p.add_listener(rec)
            state = NetworkState()
            p.watch(state)
            state.apply(update)
            plumbings.append(p)
            recorders.append(rec)
        pa, pb = plumbings
        try:
            ta1 = await pa.attach("ta1", [att(n1, f"{net}.2/24")])
            ta2 = await pa.attach("ta2", [att(n1, f"{net}.4/24")])
            tb1 = await pb.attach("tb1", [att(n1, f"{net}.3/24")])
            tb2 = await pb.attach("tb2", [att(n2, f"{net}.9/24")])
            ta3 = await pa.attach("ta3", [att(n1, f"{net}.5/24"), att(n3, f"{third}.2/24")])
            await pb.attach("tb3", [att(n3, f"{third}.3/24")])
            await asyncio.sleep(0)  # the state's sync task
            await pa._sync_task if pa._sync_task else None
            await pb._sync_task if pb._sync_task else None
            assert recorders[0].events == [
                ("attached", "ta1", (ta1, n1.id)),
                ("attached", "ta2", (ta2, n1.id)),
                ("attached", "ta3", (ta3, n1.id, n3.id)),
            ]
            link = in_ns(ta1, "ip", "-o", "link", "show", "eth0").stdout
            assert mac_of(f"{net}.2") in link
            # across nodes over VXLAN, and on one node through the bridge
            sb = pa.record.networks[n1.id]["netns"]
            # the task's end on the bridge: enslaved, overlay-sized and up as it is made
            end = in_ns(sb, "ip", "-o", "link", "show", pa.record.tasks["ta1"]["links"][n1.id])
            assert "master br0" in end.stdout and "mtu 1450" in end.stdout, end
            assert "state UP" in end.stdout or ",UP" in end.stdout, end
            fdb = in_ns(sb, "bridge", "fdb", "show", "dev", "vxlan0").stdout
            assert f"{mac_of(f'{net}.3')} dst {addr_b} " in fdb
            neigh = in_ns(sb, "ip", "neigh", "show", "dev", "vxlan0").stdout
            assert f"{net}.3 lladdr {mac_of(f'{net}.3')} PERMANENT" in neigh
            assert reaches(ta1, f"{net}.3")
            assert reaches(tb1, f"{net}.2")
            assert reaches(ta2, f"{net}.2")
            assert reaches(tb1, f"{net}.4")
            # network 2's task reaches nobody on network 1, on its node or another
            assert not reaches(tb2, f"{net}.3")
            assert not reaches(tb2, f"{net}.2")
            assert not reaches(ta1, f"{net}.9")
            shown = in_ns(ta3, "ip", "-o", "addr", "show").stdout
            assert f"eth0    inet {net}.5/24" in shown and f"eth1    inet {third}.2/24" in shown
            assert reaches(ta3, f"{net}.3") and reaches(ta3, f"{third}.3")
            # a TCP connection across nodes
            server = subprocess.Popen(  # noqa: ASYNC220 - a test driving real tools
                ["nsenter", f"--net={tb1}", "busybox", "nc", "-l", "-p", "8080"],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            try:
                for _ in range(50):
                    sent = subprocess.run(  # noqa: ASYNC221
                        ["nsenter", f"--net={ta1}", "busybox", "nc", "-w", "2", f"{net}.3", "8080"],
                        input="hello over vxlan\n", capture_output=True, text=True, timeout=10,
                    )  # fmt: skip
                    if sent.returncode == 0:
                        break
                    await asyncio.sleep(0.1)
                assert server.communicate(timeout=10)[0] == "hello over vxlan\n"
            finally:
                server.kill()
                server.wait()
            # a peer leaves: its entries go on the other node, and it is unreachable
            gone = NetworkUpdate(removed_peers=[peers[1].key])
            for p in plumbings:
                assert p.state is not None
                p.state.apply(gone)
                await asyncio.sleep(0)
                await p._sync_task if p._sync_task else None
            fdb = in_ns(sb, "bridge", "fdb", "show", "dev", "vxlan0").stdout
            assert f"dst {addr_b}" not in fdb
            assert f"{net}.3" not in in_ns(sb, "ip", "neigh", "show", "dev", "vxlan0").stdout
            assert not reaches(ta1, f"{net}.3")
            await pb.detach("tb1")
            assert recorders[1].events[-1] == ("detached", "tb1", ())
            assert not netns.exists(Path(tb1))
        finally:
            for p in plumbings:
                await p.close()
        for p in plumbings:
            assert not p.record.path.exists()
            assert not p.netns_dir.exists()
            assert mounts_under(p.netns_dir) == []

    asyncio.run(run())
    assert {ns: listing(ns) for ns in (ns_a, ns_b)} == before
    # The host is shared with other test runs: only look for what ours would be named.
    host_links = sh("ip", "-o", "link", "show").stdout
    for name in [veth_name(t) for t in ("ta1", "ta2", "ta3", "tb1", "tb2", "tb3")] + [
        VXLAN,
        BRIDGE,
    ]:
        assert f" {name}:" not in host_links and f" {name}@" not in host_links


def test_a_vxlan_id_given_again_while_the_old_sandbox_stays(
    lab: tuple[NetnsLab, list[tuple[str, str]]], tmp_path: Path
) -> None:
    """The manager gives a removed network's VXLAN ID to a new one while this node still
    has the old network's sandbox (a task of it still stopping): the kernel refuses a
    second VXLAN device with that ID, so the old one goes first, and the new sandbox is
    whole (never a bridge without its VXLAN device, taken for a whole sandbox)."""
    _lab, [(ns_a, addr_a), _] = lab
    o_net, n_net = (f"10.{n}.{secrets.randbelow(250)}" for n in (212, 213))
    old = network(f"{o_net}.0/24")
    new = Network(
        id=secrets.token_hex(12), driver_state=old.driver_state,
        ipam_options=IPAMOptions(configs=[IPAMConfig(subnet=f"{n_net}.0/24")]),
    )  # fmt: skip

    async def run() -> None:
        p = Plumbing(tmp_path / "data", tmp_path / "run", addr_a, f"/run/netns/{ns_a}")
        state = NetworkState()
        p.watch(state)
        state.apply(NetworkUpdate(full=True, networks=[old]))
        try:
            await p.attach("told", [NetworkAttachment(network=old, addresses=[f"{o_net}.2/24"])])
            # the old network leaves the cluster, its task still on this node; a new one
            # comes with the same VXLAN ID
            state.apply(NetworkUpdate(full=True, networks=[new]))
            tnew = await p.attach(
                "tnew", [NetworkAttachment(network=new, addresses=[f"{n_net}.2/24"])]
            )
            sandbox = p.record.networks[new.id]["netns"]
            assert p.record.networks[new.id]["ready"] is True
            assert (
                f"vxlan id {new.vxlan_id}"
                in in_ns(sandbox, "ip", "-d", "link", "show", VXLAN).stdout
            )
            assert (
                in_ns(p.record.networks[old.id]["netns"], "ip", "link", "show", VXLAN).returncode
                != 0
            )
            assert "eth0" in in_ns(tnew, "ip", "-o", "link").stdout
            await p.detach("told")
            await p.detach("tnew")
        finally:
            await p.close()

    asyncio.run(run())


def test_tasks_attached_at_once_are_each_whole_with_their_vip_table_and_leave_nothing(
    lab: tuple[NetnsLab, list[tuple[str, str]]], tmp_path: Path
) -> None:
    """Eight attaches asked for at once while a sync pass runs (a backend change, its
    VIP tables applied from several threads): each task ends with its interface, its
    address and its VIP table (created outright, the namespace being new) up to date,
    the record names each namespace's inode, they reach each other over the bridge, and
    detaching them all at once leaves nothing."""
    _lab, [(ns_a, addr_a), _] = lab
    net = f"10.214.{secrets.randbelow(250)}"
    n = network(f"{net}.0/24")
    vip = f"{net}.250"
    endpoint = ServiceEndpoint(network_id=n.id, service_id="svc", service_name="web", vip=vip)
    tasks = [f"tc{i}{secrets.token_hex(2)}" for i in range(8)]
    peers = [
        NetworkPeer(
            network_id=n.id, task_id=t, node_id="A", node_addr=addr_a, addr=f"{net}.{i + 2}",
            service_id="svc", running=i < 2,
        )
        for i, t in enumerate(tasks)
    ]  # fmt: skip

    async def run() -> None:
        p = Plumbing(tmp_path / "data", tmp_path / "run", addr_a, f"/run/netns/{ns_a}")
        state = NetworkState()
        p.watch(state)
        state.apply(NetworkUpdate(full=True, networks=[n], peers=peers, endpoints=[endpoint]))
        try:
            attaching = [
                p.attach(t, [NetworkAttachment(network=n, addresses=[f"{net}.{i + 2}/24"])])
                for i, t in enumerate(tasks)
            ]
            # a backend comes up while they attach: a sync pass runs among them
            state.apply(NetworkUpdate(peers=[msgspec.structs.replace(peers[2], running=True)]))
            paths = await asyncio.gather(*attaching)
            await asyncio.sleep(0)
            while p._sync_task is not None and not p._sync_task.done():
                await p._sync_task
            backends = ", ".join(f"{i} : {net}.{i + 2}" for i in range(3))
            for i, (task, path) in enumerate(zip(tasks, paths, strict=True)):
                shown = in_ns(path, "ip", "-o", "addr", "show", "eth0").stdout
                assert f"inet {net}.{i + 2}/24" in shown, shown
                assert p.record.tasks[task]["ino"] == netns.inode(path)
                table = in_ns(path, "nft", "list", "table", "ip", "shoal-vip").stdout
                assert f"ip daddr {vip} dnat to numgen inc mod 3 map {{ {backends} }}" in table
            assert p.vips.failures == 0
            assert reaches(paths[0], f"{net}.9") and reaches(paths[7], f"{net}.2")
            await asyncio.gather(*(p.detach(t) for t in tasks))
            assert not any(netns.exists(Path(path)) for path in paths)
            assert p.record.tasks == {}
        finally:
            await p.close()
        assert not p.record.path.exists()
        assert mounts_under(p.netns_dir) == []

    asyncio.run(run())


def test_a_callers_namespace_keeps_living_without_its_vip_table_after_detach(
    lab: tuple[NetnsLab, list[tuple[str, str]]], tmp_path: Path
) -> None:
    """A namespace the caller has (a container's) may outlive the attachment: its VIP
    table is deleted before the plumbing's file naming it goes; one the plumbing made
    goes whole, table and all."""
    _lab, [(ns_a, addr_a), _] = lab
    net = f"10.215.{secrets.randbelow(250)}"
    n = network(f"{net}.0/24")
    endpoint = ServiceEndpoint(
        network_id=n.id, service_id="svc", service_name="web", vip=f"{net}.250"
    )
    theirs = tmp_path / f"container-{secrets.token_hex(3)}"
    netns.create(theirs)

    async def run() -> None:
        p = Plumbing(tmp_path / "data", tmp_path / "run", addr_a, f"/run/netns/{ns_a}")
        state = NetworkState()
        p.watch(state)
        state.apply(NetworkUpdate(full=True, networks=[n], endpoints=[endpoint]))
        try:
            att = lambda a: [NetworkAttachment(network=n, addresses=[a])]  # noqa: E731
            path = await p.attach("tcontainer", att(f"{net}.2/24"), netns_path=str(theirs))
            made = await p.attach("tmade", att(f"{net}.3/24"))
            for ns in (str(theirs), made):
                assert "chain vip_refuse" in in_ns(ns, "nft", "list", "ruleset").stdout
            await p.detach("tcontainer")
            await p.detach("tmade")
            assert not netns.exists(Path(path)) and not netns.exists(Path(made))
            assert netns.exists(theirs)
            assert in_ns(str(theirs), "nft", "list", "ruleset").stdout.strip() == ""
        finally:
            await p.close()

    try:
        asyncio.run(run())
    finally:
        netns.remove(theirs)
