"""From a task to a Docker Engine container: names, labels, templates, the create body.

Pure functions, no I/O: what SwarmKit's container adapter (moby's
daemon/cluster/executor/container/container.go) does when it turns a task's
ContainerSpec into the engine's `Config` + `HostConfig`, and what it reads back from
`docker inspect` (exit code, OOM kill, health).
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from shoal.agent.executor.base import ExecutorError, ExitStatus
from shoal.types.network import PortMapping
from shoal.types.service import ContainerSpec, HealthConfig
from shoal.types.task import Task

# The labels Swarm puts on every task container, so tools that know Swarm recognise them.
LABEL_TASK = "com.docker.swarm.task"
LABEL_TASK_ID = "com.docker.swarm.task.id"
LABEL_TASK_NAME = "com.docker.swarm.task.name"
LABEL_NODE_ID = "com.docker.swarm.node.id"
LABEL_SERVICE_ID = "com.docker.swarm.service.id"
LABEL_SERVICE_NAME = "com.docker.swarm.service.name"
# shoal's own: which agent (data dir) made the container. Several shoal nodes may share
# one engine, and a node's ID changes when it leaves and joins again; this one does not.
LABEL_AGENT = "io.shoal.agent"

DEFAULT_STOP_GRACE_S = 10.0
# Exit codes above this are 128 + the signal that ended the process.
SIGNAL_EXIT_BASE = 128
MAX_SIGNAL = 64

_TEMPLATE_RE = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.DOTALL)
_INDEX_RE = re.compile(r'^index\s+(\.[A-Za-z_.]+)\s+"((?:[^"\\]|\\.)*)"$')
_FIELD_RE = re.compile(r"^(\.[A-Za-z_][A-Za-z0-9_]*)+$")


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What the templates and labels need of the node the task runs on."""

    id: str
    hostname: str
    os: str = "linux"
    architecture: str = ""


def task_slot(task: Task) -> str:
    """The slot part of a task's name: its slot, or for global services its node ID."""
    return str(task.slot) if task.slot else (task.node_id or "")


def task_name(task: Task, service_name: str) -> str:
    """`<service>.<slot>.<task id>` (global: `<service>.<node id>.<task id>`), as
    SwarmKit's naming.Task; this is also the container's name."""
    if task.name:
        return task.name
    return f"{service_name}.{task_slot(task)}.{task.id}"


# --- templates ---------------------------------------------------------------------------


class TemplateContext:
    """The values Swarm's placeholders (`{{.Node.Hostname}}`, `{{.Task.Slot}}`, ...)
    expand to, for one task of the service named `service_name` on one node (SwarmKit's
    template.Context)."""

    def __init__(self, task: Task, node: NodeInfo, service_name: str) -> None:
        self._values: dict[str, Any] = {
            "Service": {"ID": task.service_id, "Name": service_name},
            "Node": {
                "ID": node.id or task.node_id or "",
                "Hostname": node.hostname,
                "Platform": {"OS": node.os, "Architecture": node.architecture},
            },
            "Task": {
                "ID": task.id,
                "Name": task_name(task, service_name),
                "Slot": task_slot(task),
            },
        }

    def _lookup(self, path: str, expr: str) -> Any:
        value: Any = self._values
        for part in path.lstrip(".").split("."):
            if not isinstance(value, dict) or part not in value:
                raise ExecutorError(
                    f"template: expansion error: can't evaluate field {part} in {expr!r}"
                )
            value = value[part]
        return value

    def expand(self, text: str) -> str:
        """`text` with every `{{ ... }}` replaced; ExecutorError for what Swarm would
        refuse (unknown fields, unsupported actions)."""
        if "{{" not in text:
            return text

        def one(match: re.Match[str]) -> str:
            expr = match.group(1)
            index = _INDEX_RE.match(expr)
            if index:
                mapping = self._lookup(index.group(1), expr)
                key = index.group(2).encode().decode("unicode_escape")
                if not isinstance(mapping, dict):
                    raise ExecutorError(f"template: expansion error: cannot index {expr!r}")
                return str(mapping.get(key, ""))
            if not _FIELD_RE.match(expr):
                raise ExecutorError(f"template: expansion error: unsupported action {expr!r}")
            value = self._lookup(expr, expr)
            if isinstance(value, dict):
                raise ExecutorError(f"template: expansion error: {expr!r} is not a value")
            return str(value)

        return _TEMPLATE_RE.sub(one, text)


def expand_env(ctx: TemplateContext, env: list[str]) -> list[str]:
    out = []
    for entry in env:
        key, sep, value = entry.partition("=")
        if not sep:
            # SwarmKit refuses it too (template.expandEnv).
            raise ExecutorError(f"invalid environment variable: {entry!r}")
        out.append(f"{key}={ctx.expand(value)}")
    return out


def expand_mount(ctx: TemplateContext, mount: dict[str, Any]) -> dict[str, Any]:
    """Source and Target, and a volume's labels and driver options, expanded."""
    out = dict(mount)
    for key in ("Source", "Target"):
        if isinstance(out.get(key), str):
            out[key] = ctx.expand(out[key])
    vo = out.get("VolumeOptions")
    if isinstance(vo, dict):
        vo = dict(vo)
        if isinstance(vo.get("Labels"), dict):
            vo["Labels"] = {k: ctx.expand(str(v)) for k, v in vo["Labels"].items()}
        dc = vo.get("DriverConfig")
        if isinstance(dc, dict) and isinstance(dc.get("Options"), dict):
            vo["DriverConfig"] = {
                **dc,
                "Options": {k: ctx.expand(str(v)) for k, v in dc["Options"].items()},
            }
        out["VolumeOptions"] = vo
    return out


# --- the create body ------------------------------------------------------------------


def container_labels(
    task: Task, node: NodeInfo, agent_id: str, service_name: str
) -> dict[str, str]:
    """The spec's labels, then the task's, then Swarm's own (which win), as moby does."""
    spec = task.spec.container_spec or ContainerSpec()
    labels = dict(spec.labels or {})
    labels.update(task.labels or {})
    labels.update(
        {
            LABEL_TASK: "",
            LABEL_TASK_ID: task.id,
            LABEL_TASK_NAME: task_name(task, service_name),
            LABEL_NODE_ID: node.id or task.node_id or "",
            LABEL_SERVICE_ID: task.service_id,
            LABEL_SERVICE_NAME: service_name,
            LABEL_AGENT: agent_id,
        }
    )
    return labels


def _duration_s(ns: int | None, default_s: float) -> float:
    return ns / 1e9 if ns is not None else default_s


def stop_grace_s(spec: ContainerSpec) -> float:
    return max(0.0, _duration_s(spec.stop_grace_period, DEFAULT_STOP_GRACE_S))


def engine_stop_timeout(grace_s: float) -> int:
    """The engine takes whole seconds: round up, so the task gets at least its grace."""
    return max(0, math.ceil(grace_s))


def _healthcheck(hc: HealthConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (
        ("Test", hc.test),
        ("Interval", hc.interval),
        ("Timeout", hc.timeout),
        ("Retries", hc.retries),
        ("StartPeriod", hc.start_period),
    ):
        if value is not None:
            out[key] = value
    return out


def _extra_hosts(hosts: list[str]) -> list[str]:
    """Swarm keeps hosts(5) lines (`IP name [aliases...]`); the engine wants `name:IP`."""
    out: list[str] = []
    for entry in hosts:
        parts = entry.split()
        if len(parts) >= 2:
            out.extend(f"{name}:{parts[0]}" for name in parts[1:])
        elif ":" in entry:  # already in the engine's form
            out.append(entry)
    return out


_MOUNT_KEYS = (
    "Type",
    "Source",
    "Target",
    "ReadOnly",
    "Consistency",
    "BindOptions",
    "VolumeOptions",
    "TmpfsOptions",
)


def _mount(mount: dict[str, Any]) -> dict[str, Any]:
    out = {k: mount[k] for k in _MOUNT_KEYS if mount.get(k) is not None}
    if out.get("Type") not in ("bind", "volume", "tmpfs", "npipe"):
        raise ExecutorError(f"invalid mount type: {out.get('Type')!r}")
    if not out.get("Target"):
        raise ExecutorError("invalid mount config: Target must not be empty")
    if out["Type"] == "bind" and not out.get("Source"):
        raise ExecutorError('invalid mount config for type "bind": field Source must not be empty')
    return out


def _profile_json(profile: Any) -> str:
    """A custom seccomp profile: bytes in the API, so base64 in JSON."""
    try:
        return base64.b64decode(str(profile), validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        raise ExecutorError("invalid seccomp profile: not base64-encoded JSON") from None


def _security_opts(privileges: dict[str, Any] | None) -> list[str]:
    """Privileges → HostConfig.SecurityOpt, as moby's applyPrivileges."""
    if not privileges:
        return []
    out = []
    se = privileges.get("SELinuxContext") or {}
    if se.get("Disable"):
        out.append("label=disable")
    for key, opt in (("User", "user"), ("Role", "role"), ("Type", "type"), ("Level", "level")):
        if se.get(key):
            out.append(f"label={opt}:{se[key]}")
    seccomp = privileges.get("Seccomp") or {}
    if seccomp.get("Mode") == "unconfined":
        out.append("seccomp=unconfined")
    elif seccomp.get("Mode") == "custom" and seccomp.get("Profile"):
        out.append(f"seccomp={_profile_json(seccomp['Profile'])}")
    apparmor = privileges.get("AppArmor") or {}
    if apparmor.get("Mode") == "disabled":
        out.append("apparmor=unconfined")
    if privileges.get("NoNewPrivileges"):
        out.append("no-new-privileges=true")
    return out


def create_body(
    task: Task,
    node: NodeInfo,
    agent_id: str,
    service_name: str,
    default_log_driver: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The body of `POST /containers/create` for `task` of the service named
    `service_name` (Config with HostConfig)."""
    spec = task.spec.container_spec
    if spec is None or not spec.image:
        raise ExecutorError("task has no container spec (image) to run")
    ctx = TemplateContext(task, node, service_name)
    body: dict[str, Any] = {
        "Image": spec.image,
        "Labels": container_labels(task, node, agent_id, service_name),
        "Env": expand_env(ctx, spec.env or []),
        "Tty": bool(spec.tty),
        "OpenStdin": bool(spec.open_stdin),
        "StopTimeout": engine_stop_timeout(stop_grace_s(spec)),
    }
    if spec.hostname:
        body["Hostname"] = ctx.expand(spec.hostname)
    if spec.user:
        body["User"] = spec.user
    if spec.dir:
        body["WorkingDir"] = spec.dir
    if spec.stop_signal:
        body["StopSignal"] = spec.stop_signal
    # Command replaces the whole invocation (entrypoint and args); Args alone are the
    # arguments of the image's entrypoint (moby's container adapter).
    if spec.command:
        body["Entrypoint"] = list(spec.command)
        body["Cmd"] = list(spec.args or [])
    elif spec.args:
        body["Cmd"] = list(spec.args)
    if spec.health_check is not None:
        body["Healthcheck"] = _healthcheck(spec.health_check)

    host: dict[str, Any] = {
        "Mounts": [_mount(expand_mount(ctx, m)) for m in spec.mounts or []],
        "ReadonlyRootfs": bool(spec.read_only),
    }
    if spec.init is not None:
        host["Init"] = spec.init
    if spec.groups:
        host["GroupAdd"] = list(spec.groups)
    if spec.sysctls:
        host["Sysctls"] = dict(spec.sysctls)
    if spec.capability_add:
        host["CapAdd"] = list(spec.capability_add)
    if spec.capability_drop:
        host["CapDrop"] = list(spec.capability_drop)
    if spec.ulimits:
        host["Ulimits"] = [
            {"Name": u.get("Name"), "Soft": u.get("Soft", 0), "Hard": u.get("Hard", 0)}
            for u in spec.ulimits
        ]
    if spec.hosts:
        host["ExtraHosts"] = _extra_hosts(spec.hosts)
    dns = spec.dns_config or {}
    if dns.get("Nameservers"):
        host["Dns"] = list(dns["Nameservers"])
    if dns.get("Search"):
        host["DnsSearch"] = list(dns["Search"])
    if dns.get("Options"):
        host["DnsOptions"] = list(dns["Options"])
    security = _security_opts(msgspec.to_builtins(spec.privileges) if spec.privileges else None)
    if security:
        host["SecurityOpt"] = security
    resources = task.spec.resources
    limits = resources.limits if resources else None
    if limits is not None:
        if limits.nano_cpus:
            host["NanoCpus"] = limits.nano_cpus
        if limits.memory_bytes:
            host["Memory"] = limits.memory_bytes
        if limits.pids:
            host["PidsLimit"] = limits.pids
    reservations = resources.reservations if resources else None
    if reservations is not None and reservations.memory_bytes:
        host["MemoryReservation"] = reservations.memory_bytes
    # The service's, else the cluster's TaskDefaults.LogDriver when the task was made.
    log_driver = task.spec.log_driver or default_log_driver
    if log_driver and log_driver.get("Name"):
        host["LogConfig"] = {
            "Type": log_driver["Name"],
            "Config": dict(log_driver.get("Options") or {}),
        }
    body["HostConfig"] = host
    return body


# --- image references -------------------------------------------------------------------


def split_reference(image: str) -> tuple[str, str, str]:
    """(repository, tag, digest) of an image reference; tag and digest may be empty."""
    name, _, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = ""
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
    return name, tag, digest


def pull_reference(image: str) -> tuple[str, str]:
    """(fromImage, tag) for `POST /images/create`: a digest when pinned, else the tag
    (`latest` when none; an empty tag would pull every tag)."""
    name, tag, digest = split_reference(image)
    if digest:
        return name, digest
    return name, tag or "latest"


# --- reading the container back -----------------------------------------------------------


def exit_status(state: dict[str, Any]) -> ExitStatus:
    """ExitStatus of an exited container from its inspect `State`."""
    code = int(state.get("ExitCode") or 0)
    sig = (
        code - SIGNAL_EXIT_BASE
        if SIGNAL_EXIT_BASE < code <= SIGNAL_EXIT_BASE + MAX_SIGNAL
        else None
    )
    return ExitStatus(exit_code=code, signal=sig, oom_killed=bool(state.get("OOMKilled")))


def health_status(state: dict[str, Any]) -> str | None:
    """ "starting", "healthy", "unhealthy", or None for a container without healthcheck."""
    health = state.get("Health")
    if not isinstance(health, dict):
        return None
    status = health.get("Status")
    return status if status in ("starting", "healthy", "unhealthy") else None


def has_healthcheck(info: dict[str, Any]) -> bool:
    """True when the container runs a healthcheck (its own or its image's)."""
    hc = (info.get("Config") or {}).get("Healthcheck") or {}
    test = hc.get("Test") or []
    return bool(test) and test[0] != "NONE"


# The embedded resolver every task on a swarm network asks (agent/network/dns.py serves
# it inside the task's namespace), as dockerd's is.
EMBEDDED_DNS = "127.0.0.11"


def on_swarm_networks(body: dict[str, Any], task: Task) -> dict[str, Any]:
    """`body` for a task attached to swarm networks by the node's plumbing: the engine
    gives the container no network of its own (`none`: only `lo`); once it runs, the
    agent moves an interface per attached network into its namespace, as a CNI plugin
    would. Its resolver is the embedded one, and its hostname resolves to its first
    address, as on a dockerd overlay network."""
    host = body["HostConfig"]
    host["NetworkMode"] = "none"
    host["Dns"] = [EMBEDDED_DNS]
    hostname = body.get("Hostname") or task.id[:12]
    body["Hostname"] = hostname
    first = (task.networks_attachments or [])[0]
    addr = (first.addresses or [""])[0].split("/")[0]
    if addr:
        host["ExtraHosts"] = [*host.get("ExtraHosts", []), f"{hostname}:{addr}"]
    return body


def with_host_ports(body: dict[str, Any], host_ports: Sequence[PortMapping]) -> dict[str, Any]:
    """`body` for a task that publishes ports in host mode and runs on the engine's own
    network (no swarm network): each port exposed and bound on the node, as dockerd's
    executor does (`ExposedPorts`, `HostConfig.PortBindings`; a port with no number is
    bound to one the engine picks)."""
    exposed: dict[str, dict[str, Any]] = {}
    bindings: dict[str, list[dict[str, str]]] = {}
    for p in host_ports:
        key = f"{p.target}/{p.protocol}"
        exposed[key] = {}
        bindings.setdefault(key, []).append(
            {"HostIp": "", "HostPort": str(p.published) if p.published else ""}
        )
    if exposed:
        body["ExposedPorts"] = {**body.get("ExposedPorts", {}), **exposed}
        body["HostConfig"]["PortBindings"] = bindings
    return body


def bound_host_ports(
    info: dict[str, Any], host_ports: Sequence[PortMapping]
) -> tuple[PortMapping, ...] | None:
    """The task's host-mode ports as the engine bound them (`NetworkSettings.Ports` of a
    running container: the number it picked for a port that asked none), as SwarmKit's
    executor reads them for PortStatus; None when the task publishes none."""
    if not host_ports:
        return None
    bound = (info.get("NetworkSettings") or {}).get("Ports") or {}
    out = []
    for p in host_ports:
        published = p.published
        for b in bound.get(f"{p.target}/{p.protocol}") or ():
            if b.get("HostPort", "").isdigit():
                published = int(b["HostPort"])
                break
        out.append(msgspec.structs.replace(p, published=published))
    return tuple(out)
