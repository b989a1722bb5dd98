"""The node's kernel data path for swarm overlay networks (docs/networking.md).

Per network, a sandbox: a network namespace of its own holding a bridge (`br0`) and the
network's VXLAN device (`vxlan0`), created in the node's namespace (its UDP socket is
bound there, on the node's underlay address) and moved into the sandbox in the same
request, as Docker's overlay driver does. Per task, a network namespace (or one the
caller already has, e.g. a container's) with one veth per attached network: `eth<i>`
inside the task, the other end on the network's bridge.

Remote task addresses are programmed from NetworkState, never learned (devices.py:
the netlink work). Nothing is multicast, learned or gossiped.

Every object is written in the record (record.py) before it is created and dropped from
it after it is removed. The kernel work is synchronous (pyroute2) and runs in threads,
one operation at a time (`_lock`), but for the VIP tables of many namespaces, applied
at once (vip.py).
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

from shoal.agent.network import devices, netns, vip
from shoal.agent.network.hostports import HostPorts
from shoal.agent.network.mesh import Mesh, sysctl
from shoal.agent.network.record import Record
from shoal.agent.network.state import NetworkState, TaskNetworkListener
from shoal.agent.network.vip import VipTables
from shoal.batching import LeadingEdge
from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.log import get_logger
from shoal.types.network import Network, NetworkAttachment, NetworkUpdate, PortMapping

NETNS_DIR = "netns"
# At most one sync pass per this long while updates keep coming (leading-edge: a lone
# update is applied at once). A pass gives every local task namespace whose VIP table
# changed one nft transaction (~0.6 ms of CPU each): while a hundred tasks start, each
# one a backend change, a pass per change would cost the node O(tasks²) transactions.
SYNC_INTERVAL_S = 0.2

log = get_logger("shoal.agent.network")


def plumbing_for(executor: object, run_dir: Path, state: NetworkState) -> Plumbing | None:
    """The plumbing of a process or docker runtime run by root, following `state`; None
    otherwise (a daemon that is not root cannot make namespaces: its process tasks share
    the node's network). Process tasks get namespaces of their own; containers, started
    by the engine with no network, get their interfaces in theirs."""
    if getattr(executor, "name", None) not in ("process", "docker") or os.geteuid() != 0:
        return None
    plumbing = Plumbing(run_dir, run_dir)
    plumbing.watch(state)
    executor.plumbing = plumbing  # type: ignore[attr-defined]
    return plumbing


def sandbox_name(network_id: str) -> str:
    return f"net-{network_id[:12]}"


def task_ns_name(task_id: str) -> str:
    return f"task-{task_id}"


def veth_name(task_id: str) -> str:
    """The task's veth end on a network's bridge (one per task per network sandbox)."""
    return f"vt{task_id[:12]}"


class Plumbing:
    """`run_dir` holds the namespace files; `node_netns` names the namespace whose
    address is the underlay (None: the daemon's own, as in production; tests drive two
    "nodes" from one process)."""

    def __init__(
        self,
        data_dir: Path,
        run_dir: Path,
        underlay_addr: str | None = None,
        node_netns: str | None = None,
        vxlan_port: int = devices.VXLAN_PORT,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.record = Record(Path(data_dir))
        self.netns_dir = Path(run_dir).resolve() / NETNS_DIR
        self.underlay_addr = underlay_addr
        self.node_netns = node_netns
        self.vxlan_port = vxlan_port
        self.state: NetworkState | None = None
        self._listeners: list[TaskNetworkListener] = []
        self._lock = threading.RLock()
        # The VIP tables' own lock (taken after `_lock`, never before it): re-rendering
        # every task's table on a backend change must not hold up attaches. Held only
        # to plan and record changes; the transactions run without it, and a task whose
        # change is in flight (`_applying`) is not planned again, nor detached, before
        # it is recorded (`_vip_done` is notified then).
        self._vip_lock = threading.Lock()
        self._vip_done = threading.Condition(self._vip_lock)
        self._applying: set[str] = set()
        self._detaching: set[str] = set()
        # What each sandbox's VXLAN entries were last programmed to ({task address: node
        # address}): an update that leaves them as they are (a local task came or went)
        # costs no netlink dump. Dropped with the sandbox.
        self._programmed: dict[str, dict[str, str]] = {}
        # Each sandbox's bridge index (a task's veth is enslaved to it as it is made).
        self._bridges: dict[str, int] = {}
        # The namespace directory is recorded and a shared mount (`_ensure_netns_dir`).
        self._dir_shared = False
        self._dirty = asyncio.Event()
        self._pace = LeadingEdge(clock, SYNC_INTERVAL_S)
        self._sync_task: asyncio.Task[None] | None = None
        # updates seen, and how many of them the last finished sync pass covered: the
        # agent acknowledges an update only once it is in the kernel (`synced`)
        self._generation = 0
        self._synced_generation = 0
        self._synced_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.vips = VipTables()
        self.mesh = Mesh(self)
        self.hostports = HostPorts(self)

    # --- wiring ---------------------------------------------------------------------------

    def add_listener(self, listener: TaskNetworkListener) -> None:
        self._listeners.append(listener)

    def watch(self, state: NetworkState) -> None:
        """Follow `state`: peers and networks are programmed as updates are applied."""
        self.state = state
        state.subscribe(self._on_update)
        state.add_barrier(self.synced)

    async def synced(self) -> None:
        """Once a sync pass begun after every update so far has ended (draining: the
        node's backends are in the kernel before it acknowledges)."""
        target = self._generation
        if self._synced_generation >= target:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._synced_waiters.append((target, fut))
        await fut

    def _mark_synced(self, generation: int) -> None:
        self._synced_generation = max(self._synced_generation, generation)
        keep = []
        for target, fut in self._synced_waiters:
            if target <= self._synced_generation:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((target, fut))
        self._synced_waiters = keep

    def _on_update(self, _state: NetworkState, update: NetworkUpdate) -> None:
        if update.full and update.data_path_port:
            # The swarm's `--data-path-port`, fixed at init: sandboxes made from now on.
            self.vxlan_port = update.data_path_port
        self._generation += 1
        self._dirty.set()
        if self._sync_task is None or self._sync_task.done():
            self._sync_task = asyncio.get_running_loop().create_task(
                self._sync_loop(), name="network-plumbing-sync"
            )

    async def _sync_loop(self) -> None:
        while self._dirty.is_set():
            # Leading-edge: the first pass after a quiet spell goes at once; in a burst
            # (a hundred tasks starting, each a backend change) passes go SYNC_INTERVAL_S
            # apart and what arrives between joins the next one.
            await self._pace.wait()
            self._pace.sent()
            self._dirty.clear()
            generation = self._generation
            try:
                await asyncio.to_thread(self.sync)
            except Exception:
                log.exception("network plumbing sync failed")
            self._mark_synced(generation)
        self._mark_synced(self._generation)

    async def start(
        self, known_tasks: set[str] | None = None, holder_pids: list[int] | None = None
    ) -> None:
        """Adopt what an earlier daemon left (see `adopt`) and tell the listeners about
        the task namespaces kept."""
        kept = await asyncio.to_thread(self.adopt, known_tasks, holder_pids)
        for task_id, (path, networks) in kept.items():
            await self._notify_attached(task_id, path, networks)

    async def close(self, remove_all: bool = True) -> None:
        """Stop following; with `remove_all`, remove every object in the record."""
        if self._sync_task is not None:
            self._dirty.clear()
            await self._sync_task
        await asyncio.to_thread(self.vips.close)
        if remove_all:
            for task_id in list(self.record.tasks):
                await self.detach(task_id)
            await asyncio.to_thread(self.remove_all)

    # --- tasks (async face) ---------------------------------------------------------------

    async def attach(
        self,
        task_id: str,
        attachments: list[NetworkAttachment],
        netns_path: str | None = None,
        host_ports: list[PortMapping] | None = None,
    ) -> str:
        """Give the task its interfaces; returns the path naming its namespace (a new one,
        unless `netns_path` names one the caller has, e.g. /proc/<pid>/ns/net). Its
        host-mode `host_ports` answer on this node (hostports.py)."""
        path = await asyncio.to_thread(
            self.attach_sync, task_id, attachments, netns_path, host_ports
        )
        networks = [a.network.id for a in attachments]
        await self._notify_attached(task_id, path, networks)
        return path

    async def detach(self, task_id: str) -> None:
        if task_id not in self.record.tasks:
            return
        for listener in self._listeners:
            try:
                await listener.task_detached(task_id)
            except Exception:
                log.exception("network listener failed", task=task_id)
        await asyncio.to_thread(self.detach_sync, task_id)

    async def _notify_attached(self, task_id: str, path: str, networks: list[str]) -> None:
        for listener in self._listeners:
            try:
                await listener.task_attached(task_id, path, networks)
            except Exception:
                log.exception("network listener failed", task=task_id)

    def task_netns(self, task_id: str) -> str | None:
        entry = self.record.tasks.get(task_id)
        return entry["netns"] if entry else None

    # --- kernel work (in threads) ---------------------------------------------------------

    def _save(self) -> None:
        self.record.save()

    def _ensure_netns_dir(self) -> None:
        if self._dir_shared:  # made (or found) shared by this plumbing, not released
            return
        if self.record.netns_dir is None:
            self.record.netns_dir = str(self.netns_dir)
            self._save()
        self.netns_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # (reads the whole mount table, which grows by a mount per namespace: once)
        if not netns.is_mountpoint(self.netns_dir):
            netns.share_dir(self.netns_dir)
        self._dir_shared = True

    def ensure_network(self, network: Network) -> str:
        """The network's sandbox, created if missing; returns its namespace file."""
        with self._lock:
            entry = self.record.networks.get(network.id)
            # (a record without "ready" was written by a daemon that recorded only
            # whole sandboxes)
            if (
                entry is not None
                and entry.get("ready", True)
                and netns.exists(Path(entry["netns"]))
            ):
                return str(entry["netns"])
            vni = network.vxlan_id
            if vni is None:
                raise ValueError(f"network {network.id} has no VXLAN ID")
            if not self.underlay_addr:
                raise ValueError("this node's underlay address is not known yet")
            self._ensure_netns_dir()
            path = self.netns_dir / sandbox_name(network.id)
            if entry is not None:  # left half-made: start again
                self._remove_network_locked(network.id)
            self._programmed.pop(network.id, None)
            self._bridges.pop(network.id, None)
            self._release_vni_locked(vni, network.id)
            self.record.networks[network.id] = {"netns": str(path), "vni": vni, "ready": False}
            self._save()
            try:
                netns.create(path)
                self.record.networks[network.id]["ino"] = netns.inode(path)
                self._save()
                devices.make_sandbox(
                    path, self.node_netns, vni, self.underlay_addr, self.vxlan_port
                )
            except BaseException:
                # Never left half-made (a bridge without its VXLAN device would be
                # taken for a whole sandbox): removed, the next attach starts again.
                self._remove_network_locked(network.id)
                raise
            self.record.networks[network.id]["ready"] = True
            self._save()
            log.info("network sandbox created", network=network.id, vni=vni, netns=str(path))
            self._sync_network_locked(network.id)
            return str(path)

    def attach_sync(
        self,
        task_id: str,
        attachments: list[NetworkAttachment],
        netns_path: str | None = None,
        host_ports: list[PortMapping] | None = None,
    ) -> str:
        with self._lock:
            if task_id in self.record.tasks:
                self._detach_locked(task_id)
            sandboxes = [self.ensure_network(a.network) for a in attachments]
            # Always named by a file of ours: a namespace the caller has (a container's
            # /proc/<pid>/ns/net) is bound to it, so the name outlives the pid and is
            # found again after a restart; removing the file lets the namespace go.
            self._ensure_netns_dir()
            path = str(self.netns_dir / task_ns_name(task_id))
            veth = veth_name(task_id)
            links = {a.network.id: veth for a in attachments}
            entry: dict[str, Any] = {
                "netns": path,
                "own_netns": True,  # the file naming it is ours
                "made": netns_path is None,  # and so is the namespace
                "links": links,
                "nft": [f"{vip.FAMILY} {vip.TABLE}"],
            }
            self.record.tasks[task_id] = entry

            def recorded(ino: int) -> None:
                # written once, with the namespace's inode, before the file names it
                entry["ino"] = ino
                self._save()

            if netns_path is None:
                netns.create(Path(path), recorded)
            else:
                recorded(netns.inode(netns_path))
                netns.bind(netns_path, Path(path))
            addresses = [(a.addresses or [""])[0] for a in attachments]
            bridges = [
                self._bridge_locked(a.network.id, s)
                for a, s in zip(attachments, sandboxes, strict=True)
            ]
            ends = list(zip(sandboxes, addresses, bridges, strict=True))
            devices.add_interfaces(path, veth, ends)
            if host_ports:
                self.hostports.add_task_locked(task_id, host_ports)
        # Its VIP table before its process starts (created: the namespace is new).
        self._sync_vips([task_id], fresh=netns_path is None)
        return path

    def _bridge_locked(self, network_id: str, sandbox: str) -> int:
        if network_id not in self._bridges:
            self._bridges[network_id] = devices.bridge_index(sandbox)
        return self._bridges[network_id]

    def detach_sync(self, task_id: str) -> None:
        with self._lock:
            self._detach_locked(task_id)
            self._node_rules_locked()
            self._gc_networks_locked()

    def _node_rules_locked(self) -> None:
        """The host-port table equal to the tasks' links; ip_forward put back when
        nothing of ours forwards in the node's namespace any more."""
        self.hostports.sync_locked()
        self.forwarding_restore_locked()

    def forwarding_on_locked(self) -> None:
        """ip_forward on in the node's namespace (the mesh and host ports forward), its
        value before recorded first."""
        if self.record.forwarding is None:
            old = sysctl(self.node_netns, "net.ipv4.ip_forward")
            if old == "1":
                return
            self.record.forwarding = old
            self._save()
        sysctl(self.node_netns, "net.ipv4.ip_forward", "1")

    def forwarding_restore_locked(self) -> None:
        if self.record.forwarding is None or self.record.mesh or self.record.hostports:
            return
        sysctl(self.node_netns, "net.ipv4.ip_forward", self.record.forwarding)
        self.record.forwarding = None
        self._save()

    def _detach_locked(self, task_id: str) -> None:
        entry = self.record.tasks.get(task_id)
        if entry is None:
            return
        with self._vip_lock:  # no VIP sync touches the task from here on
            self._detaching.add(task_id)
            self._wait_applied_locked(task_id)
            drop = self.vips.forget(task_id)
        # A namespace we made goes with its table: nothing to delete first (a
        # container's may outlive the attachment).
        if drop is not None and entry.get("nft") and not entry.get("made"):
            if netns.exists(Path(entry["netns"])):
                self.vips.remove(task_id, entry["netns"], drop)
        self.hostports.remove_task_locked(task_id)
        for network_id, veth in (entry.get("links") or {}).items():
            net = self.record.networks.get(network_id)
            if net is None or not netns.exists(Path(net["netns"])):
                continue
            devices.delete_links(net["netns"], [veth])  # its peer in the task goes too
        if entry.get("own_netns"):
            netns.remove(Path(entry["netns"]))
        with self._vip_lock:
            del self.record.tasks[task_id]
            self._detaching.discard(task_id)
        self._save()

    def _gc_networks_locked(self) -> None:
        """Remove sandboxes no task uses and the node's state no longer lists."""
        used = {nid for t in self.record.tasks.values() for nid in t.get("links") or {}}
        if self.record.mesh is not None:
            used.add(self.record.mesh["network"])
        wanted = set(self.state.networks) if self.state is not None else set()
        for network_id in list(self.record.networks):
            if network_id not in used and network_id not in wanted:
                self._remove_network_locked(network_id)

    def _release_vni_locked(self, vni: int, network_id: str) -> None:
        """The VXLAN ID of a network removed from the cluster can be given to a new one
        while this node still has the old sandbox (its tasks still stopping): the
        kernel then refuses a second VXLAN device with that ID (EEXIST). The old
        network is gone, so its VXLAN device goes now; its sandbox follows when no task
        uses it."""
        wanted = set(self.state.networks) if self.state is not None else set()
        for other_id, other in list(self.record.networks.items()):
            if other_id == network_id or other.get("vni") != vni or other_id in wanted:
                continue
            path = Path(other["netns"])
            if netns.exists(path):
                devices.delete_links(str(path), [devices.VXLAN])
            log.info("stale VXLAN device removed", network=other_id, vni=vni)

    def _remove_network_locked(self, network_id: str) -> None:
        entry = self.record.networks.get(network_id)
        if entry is None:
            return
        path = Path(entry["netns"])
        if netns.exists(path):
            devices.delete_links(str(path), [devices.VXLAN, devices.BRIDGE])
        netns.remove(path)
        self._programmed.pop(network_id, None)
        self._bridges.pop(network_id, None)
        del self.record.networks[network_id]
        self._save()
        log.info("network sandbox removed", network=network_id)

    def sync(self) -> None:
        """Program every sandbox's forwarding and neighbour entries from the state, the
        routing mesh, then every task's VIP table (those that changed, many at once:
        vip.py; an attach waits only for a change of its own task's in flight)."""
        with self._lock:
            for network_id in list(self.record.networks):
                self._sync_network_locked(network_id)
            try:
                self.mesh.sync_locked()
            except Exception:
                log.exception("routing mesh not synced")
            self._gc_networks_locked()
            tasks = list(self.record.tasks)
        self._sync_vips(tasks)

    def _wait_applied_locked(self, task_id: str) -> None:
        """Until no change of the task's VIP table is in flight (the VIP lock held)."""
        while task_id in self._applying:
            self._vip_done.wait()

    def _sync_vips(self, task_ids: list[str], fresh: bool = False) -> None:
        """The tasks' VIP tables (vip.py; named in their record entries when they were
        made): planned under the VIP lock, applied without it, many at once, recorded
        under it again. A task whose change is in flight from another thread is waited
        for, then planned from the state as it is now."""
        rendered: dict[tuple[str, ...], str | None] = {}
        changes: list[vip.Change] = []
        with self._vip_lock:
            for task_id in task_ids:
                self._wait_applied_locked(task_id)
                entry = self.record.tasks.get(task_id)
                if self.state is None or entry is None or task_id in self._detaching:
                    continue
                links = list(entry.get("links") or {})
                change = self.vips.plan(
                    task_id, entry["netns"], self.state, links, rendered, fresh=fresh
                )
                if change is not None:
                    changes.append(change)
                    self._applying.add(task_id)
        if not changes:
            return
        try:
            results = self.vips.apply_all(changes)
        except BaseException:
            results = [False] * len(changes)
            raise
        finally:
            with self._vip_lock:
                for change, ok in zip(changes, results, strict=True):
                    self.vips.done(change, ok)
                    self._applying.discard(change.task_id)
                self._vip_done.notify_all()

    def _sync_network_locked(self, network_id: str) -> None:
        if self.state is None:
            return
        entry = self.record.networks[network_id]
        want = {
            p.addr: p.node_addr
            for p in self.state.peers_of(network_id)
            if p.node_addr and p.node_addr != self.underlay_addr
        }
        if self._programmed.get(network_id) == want:
            return
        devices.program_peers(entry["netns"], want)
        self._programmed[network_id] = want

    # --- adoption and removal -------------------------------------------------------------

    def adopt(
        self, known_tasks: set[str] | None, holder_pids: list[int] | None = None
    ) -> dict[str, tuple[str, list[str]]]:
        """After a restart: keep the task namespaces of tasks still known (`known_tasks`,
        the executor's; None keeps every one still alive) and remove the rest, then the
        sandboxes no kept task uses. Returns the kept tasks (namespace, networks).

        A namespace file not mounted here (the previous daemon ran in a mount namespace
        of its own, gone with it) is mounted again from a process that still holds that
        namespace, found by the inode recorded (`holder_pids`: the tasks' processes and
        their shims)."""
        kept: dict[str, tuple[str, list[str]]] = {}
        with self._lock:
            entries = [*self.record.networks.values(), *self.record.tasks.values()]
            for entry in entries:
                self._recover_locked(entry, holder_pids or [])
            for task_id, entry in list(self.record.tasks.items()):
                alive = netns.exists(Path(entry["netns"]))
                wanted = known_tasks is None or task_id in known_tasks
                if alive and wanted:
                    kept[task_id] = (entry["netns"], list(entry.get("links") or {}))
                else:
                    self._detach_locked(task_id)
            mesh = self.record.mesh
            if mesh is not None:
                sandbox = self.record.networks.get(mesh["network"])
                if (
                    not netns.exists(Path(mesh["netns"]))
                    or sandbox is None
                    or not netns.exists(Path(sandbox["netns"]))
                ):
                    self.mesh.remove_locked()  # rebuilt by the next sync if still wanted
            for network_id, entry in list(self.record.networks.items()):
                if not netns.exists(Path(entry["netns"])):
                    self._remove_network_locked(network_id)
            self.hostports.applied = None  # re-applied whole from the record
            self._node_rules_locked()
            self._gc_networks_locked()
            if not self.record.tasks and not self.record.networks and not self.record.mesh:
                self._release_dir_locked()
        if kept:
            log.info("network namespaces adopted", tasks=sorted(kept))
        return kept

    def _recover_locked(self, entry: dict[str, Any], pids: list[int]) -> None:
        path = Path(entry["netns"])
        if (
            netns.exists(path)
            or "ino" not in entry
            or not str(path).startswith(str(self.netns_dir))
        ):
            return
        holder = netns.find_holder(int(entry["ino"]), pids)
        if holder is None:
            return
        self._ensure_netns_dir()
        try:
            netns.bind(holder, path)
        except OSError as e:
            log.warning("namespace not recovered", netns=str(path), error=str(e))
            return
        log.info("namespace file mounted again", netns=str(path), holder=holder)

    def sandboxes_of(self, task_id: str) -> list[str]:
        """The sandbox namespace files of the networks the task is attached to (its shim
        holds them open, so they outlive a daemon whose mount namespace goes)."""
        entry = self.record.tasks.get(task_id) or {}
        nets = [self.record.networks.get(n) for n in entry.get("links") or {}]
        return [str(n["netns"]) for n in nets if n is not None]

    def remove_all(self) -> None:
        with self._lock:
            self.mesh.remove_locked()
            for task_id in list(self.record.tasks):
                self._detach_locked(task_id)
            self._node_rules_locked()
            for network_id in list(self.record.networks):
                self._remove_network_locked(network_id)
            self._release_dir_locked()

    def _release_dir_locked(self) -> None:
        self._dir_shared = False
        if self.record.netns_dir is not None:
            d = Path(self.record.netns_dir)
            netns.unshare_dir(d)
            try:
                d.rmdir()
            except OSError:
                pass
            self.record.netns_dir = None
            self._save()
        self.record.discard_file()
