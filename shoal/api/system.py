"""`/_ping`, `/version`, `/info`, `/distribution`: what a node says about itself."""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from shoal import __version__
from shoal.api.context import DaemonContext
from shoal.api.encode import json_response, wire
from shoal.api.server import API_VERSION, MIN_API_VERSION, Router, context, reads
from shoal.errors import Internal
from shoal.types.base import format_time, now_ns
from shoal.types.node import Node
from shoal.types.swarm import DEFAULT_DATA_PATH_PORT, DEFAULT_SUBNET_SIZE, Cluster

SERVER_VERSION = f"shoal-{__version__}"
MANAGER_PORT = 2377


def register(r: Router) -> None:
    r.add("GET", "/_ping", ping)
    r.add("HEAD", "/_ping", ping)
    r.add("GET", "/version", version)
    r.add("GET", "/info", info)
    r.add("GET", "/distribution/{name:.+}/json", distribution)


@reads()
async def ping(request: web.Request) -> web.Response:
    resp = web.Response(
        text="OK" if request.method == "GET" else None, content_type="text/plain", charset="utf-8"
    )
    resp.headers["Cache-Control"] = "no-cache, no-store, must-revalidate"
    resp.headers["Pragma"] = "no-cache"
    if request.method == "HEAD":
        resp.headers["Content-Length"] = "0"
    return resp


def _os_release() -> tuple[str, str]:
    name, version = "Linux", ""
    try:
        with open("/etc/os-release") as f:
            for line in f:
                k, _, v = line.strip().partition("=")
                v = v.strip('"')
                if k == "PRETTY_NAME":
                    name = v
                elif k == "VERSION_ID":
                    version = v
    except OSError:
        pass
    return name, version


def _arch() -> str:
    m = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(m, m)


async def version(request: web.Request) -> web.Response:
    d = context(request)
    details = {
        "ApiVersion": API_VERSION,
        "Arch": _arch(),
        "Experimental": "false",
        "GitCommit": "",
        "GoVersion": f"python{platform.python_version()}",
        "KernelVersion": platform.release(),
        "MinAPIVersion": MIN_API_VERSION,
        "Os": "linux",
        "Runtime": d.runtime,
    }
    return json_response(
        {
            "Platform": {"Name": "shoal"},
            "Components": [{"Name": "Engine", "Version": SERVER_VERSION, "Details": details}],
            "Version": SERVER_VERSION,
            "ApiVersion": API_VERSION,
            "MinAPIVersion": MIN_API_VERSION,
            "GitCommit": "",
            "GoVersion": f"python{platform.python_version()}",
            "Os": "linux",
            "Arch": _arch(),
            "KernelVersion": platform.release(),
            "BuildTime": "",
        }
    )


def _mem_total() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def swarm_info(d: DaemonContext, shown: SwarmShown | None) -> dict[str, Any]:
    """`/info`'s Swarm: `shown` is what the manager's store shows (None on a worker)."""
    if d.node_id is None:
        return {
            "NodeID": "",
            "NodeAddr": "",
            "LocalNodeState": "inactive",
            "ControlAvailable": False,
            "Error": "",
            "RemoteManagers": None,
        }
    remote = [{"NodeID": "", "Addr": a} for a in d.remote_managers]
    if d.locked:
        return {
            "NodeID": "",
            "NodeAddr": "",
            "LocalNodeState": "locked",
            "ControlAvailable": False,
            "Error": "",
            "RemoteManagers": None,
        }
    if shown is None:  # a worker
        return {
            "NodeID": d.node_id,
            "NodeAddr": d.node_addr,
            "LocalNodeState": "active",
            "ControlAvailable": False,
            "Error": "",
            "RemoteManagers": remote,
        }
    nodes, cluster = shown
    managers = [{"NodeID": d.node_id, "Addr": d.manager_addr}]
    if d.several_managers:
        managers = [
            {"NodeID": n.id, "Addr": n.manager_status.addr}
            for n in nodes
            if n.spec.role == "manager" and n.manager_status and n.manager_status.addr
        ]
    out: dict[str, Any] = {
        "NodeID": d.node_id,
        "NodeAddr": d.node_addr,
        "LocalNodeState": "active",
        "ControlAvailable": True,
        "Error": "",
        "RemoteManagers": managers,
        "Nodes": len(nodes),
        "Managers": sum(1 for n in nodes if n.spec.role == "manager"),
    }
    if cluster is not None:
        c = wire(cluster)
        c.pop("JoinTokens", None)
        c.setdefault("DataPathPort", DEFAULT_DATA_PATH_PORT)
        c.setdefault("SubnetSize", DEFAULT_SUBNET_SIZE)
        out["Cluster"] = c
    return out


# `docker info` lines (under "Storage Driver") for the agent's dependency counts.
DRIVER_STATUS_KEYS = (
    ("Secrets held", "secrets_held"),
    ("Secrets received", "secrets_received"),
    ("Configs held", "configs_held"),
    ("Configs received", "configs_received"),
)


def _driver_status(counts: dict[str, int]) -> list[list[str]]:
    return [[label, str(counts[key])] for label, key in DRIVER_STATUS_KEYS if key in counts]


@reads("node", "cluster")  # the swarm's nodes and cluster; the rest is this node's own
async def info(request: web.Request) -> web.Response:
    d = context(request)
    m = None if d.locked else d.manager
    shown = None
    if m is not None:
        view = m.store.view()
        shown = (view.nodes(), view.cluster())
    return json_response(info_of(d, shown))


# What `/info` shows of the swarm from a manager's store: its nodes and its cluster.
SwarmShown = tuple[Sequence[Node], Cluster | None]


def info_of(d: DaemonContext, shown: SwarmShown | None) -> dict[str, Any]:
    """What `/info` answers; `shown`: what the manager's store shows (None when this
    node runs no manager, or it is locked). The API's front door answers it too, from
    the store's snapshot (fastreads.py)."""
    running, total = d.running_tasks()
    os_name, os_version = _os_release()
    return {
        "ID": d.node_id or "",
        "Containers": total,
        "ContainersRunning": running,
        "ContainersPaused": 0,
        "ContainersStopped": total - running,
        "Images": 0,
        "Driver": d.runtime,
        # shown by `docker info` under the storage driver: what this node holds
        "DriverStatus": _driver_status(d.dependency_counts()),
        "Plugins": _plugins(d, shown),
        "MemoryLimit": True,
        "SwapLimit": False,
        "CpuCfsPeriod": True,
        "CpuCfsQuota": True,
        "CPUShares": True,
        "CPUSet": True,
        "PidsLimit": True,
        "IPv4Forwarding": True,
        "Debug": False,
        "NFd": len(os.listdir("/proc/self/fd")),
        "NGoroutines": 0,
        "SystemTime": format_time(now_ns()),
        "LoggingDriver": "json-file",
        "CgroupDriver": "cgroupfs",
        "NEventsListener": 0,
        "KernelVersion": platform.release(),
        "OperatingSystem": os_name,
        "OSVersion": os_version,
        "OSType": "linux",
        "Architecture": platform.machine(),
        "IndexServerAddress": "https://index.docker.io/v1/",
        "RegistryConfig": REGISTRY_CONFIG,
        "NCPU": os.cpu_count() or 1,
        "MemTotal": _mem_total(),
        "GenericResources": None,
        "DockerRootDir": str(d.data_dir),
        "Name": d.node_name,
        "Labels": [f"{k}={v}" for k, v in d.engine_labels.items()],
        "ExperimentalBuild": False,
        "ServerVersion": SERVER_VERSION,
        "Runtimes": {d.runtime: {"path": d.runtime}},
        "DefaultRuntime": d.runtime,
        "Swarm": swarm_info(d, shown),
        "LiveRestoreEnabled": False,
        "Isolation": "",
        "InitBinary": "",
        "SecurityOptions": [],
        "Warnings": None,
        **_engine_fields(),
    }


def _plugins(d: DaemonContext, shown: SwarmShown | None) -> dict[str, Any]:
    """The plugins this node reports to the cluster (its log drivers; under the docker
    runtime, the engine's volume and network plugins too), as dockerd lists them."""
    out: dict[str, Any] = {"Volume": [], "Network": [], "Authorization": None, "Log": []}
    nodes = shown[0] if shown is not None else ()
    node = next((n for n in nodes if n.id == d.node_id), None) if d.node_id else None
    for p in (node.description.engine.plugins or []) if node else []:
        if isinstance(out.get(p.type), list):
            out[p.type].append(p.name)
    return out


# What dockerd 20.10 always sends (`docker info` reads them), at their values for a
# daemon with no registry options.
REGISTRY_CONFIG = {
    "AllowNondistributableArtifactsCIDRs": [],
    "AllowNondistributableArtifactsHostnames": [],
    "InsecureRegistryCIDRs": ["127.0.0.0/8"],
    "IndexConfigs": {
        "docker.io": {"Name": "docker.io", "Mirrors": [], "Secure": True, "Official": True}
    },
    "Mirrors": [],
}
NO_COMMIT = {"ID": "", "Expected": ""}


def _engine_fields() -> dict[str, Any]:
    """The rest of what dockerd's /info always holds, as this host has it (shoal runs
    no containerd, runc or init of its own: their commits are empty)."""
    return {
        "KernelMemory": False,
        "KernelMemoryTCP": False,
        "OomKillDisable": False,
        "BridgeNfIptables": _sysctl_on("net/bridge/bridge-nf-call-iptables"),
        "BridgeNfIp6tables": _sysctl_on("net/bridge/bridge-nf-call-ip6tables"),
        "CgroupVersion": "2" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "1",
        "HttpProxy": _proxy("HTTP_PROXY"),
        "HttpsProxy": _proxy("HTTPS_PROXY"),
        "NoProxy": _proxy("NO_PROXY"),
        "ContainerdCommit": NO_COMMIT,
        "RuncCommit": NO_COMMIT,
        "InitCommit": NO_COMMIT,
    }


def _proxy(name: str) -> str:
    """The daemon's proxy setting, its credentials masked as dockerd masks them."""
    value = os.environ.get(name, os.environ.get(name.lower(), ""))
    return re.sub(r"(?<=://)[^/@]+@", "xxxxx:xxxxx@", value)


def _sysctl_on(name: str) -> bool:
    try:
        with open(f"/proc/sys/{name}") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


async def distribution(request: web.Request) -> web.StreamResponse:
    """Under the docker runtime the engine resolves the image (the CLI then pins its
    digest in the spec); without an engine there is no registry access."""
    from shoal.api.engine import proxy_of

    proxy = proxy_of(request)
    if proxy is not None:
        return await proxy.forward(request)
    d = context(request)
    name = request.match_info["name"]
    raise Internal(f"cannot resolve image {name}: the {d.runtime} runtime has no registry access")
