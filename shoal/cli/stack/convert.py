"""A checked Compose file turned into the Engine API bodies `docker stack deploy` sends
(docker/cli's cli/compose/convert): `NAME_` prefixes, the `com.docker.stack.namespace`
label on every object, each service's short name an alias on its networks, and a
`NAME_default` network for services that name none.

Everything that can be wrong with the file (a duration, a size, a port, a reference to
an undeclared network, an unreadable secret file) is found here, before the first
request, and reported with its path."""

from __future__ import annotations

import base64
import os
import shlex
from dataclasses import dataclass, field
from typing import Any

from shoal.cli.stack import container
from shoal.cli.stack.compose import (
    ComposeError,
    ComposeFile,
    FileObject,
    FileRef,
    Healthcheck,
    Service,
    StrMap,
    UpdateConfig,
)
from shoal.cli.stack.values import _scalar, cpus, duration, memory, port, str_map

LABEL_NAMESPACE = "com.docker.stack.namespace"
LABEL_IMAGE = "com.docker.stack.image"
DEFAULT_NETWORK = "default"
DEFAULT_DRIVER = "overlay"
# A secret's or config's file mode when the file does not say (0444, as the CLI sends).
DEFAULT_FILE_MODE = 0o444


@dataclass
class FileSpec:
    """A secret or config to create (or update) under `name`, or an external one."""

    name: str
    spec: dict[str, Any] | None  # None: external, must exist


@dataclass
class Plan:
    """What a deploy creates, in the order it creates it."""

    stack: str
    networks: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # None: external
    secrets: list[FileSpec] = field(default_factory=list)
    configs: list[FileSpec] = field(default_factory=list)
    services: dict[str, dict[str, Any]] = field(default_factory=dict)


# --------------------------------------------------------------------------- values


def _argv(value: str | list[str] | None) -> list[str] | None:
    if value is None:
        return None
    return shlex.split(value) if isinstance(value, str) else list(value)


def environment(value: StrMap | None, path: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, list):
        # `KEY=VALUE` or a bare `KEY`; the last of a repeated key wins.
        value = {k: (v if sep else None) for k, sep, v in (item.partition("=") for item in value)}
    # `KEY:` (or a bare `KEY`) with no value: taken from the deploying shell, as the
    # CLI does; left out if unset there.
    out = []
    for k, v in sorted(value.items()):
        if v is None:
            if k in os.environ:
                out.append(f"{k}={os.environ[k]}")
        else:
            out.append(f"{k}={_scalar(v)}")
    return out


# --------------------------------------------------------------------------- objects


def scoped(stack: str, name: str) -> str:
    return f"{stack}_{name}"


def plan(stack: str, f: ComposeFile) -> Plan:
    """The whole deploy, or a ComposeError before anything is sent."""
    p = Plan(stack)
    ns = {LABEL_NAMESPACE: stack}
    # Only the networks some service uses are created (or checked, if external), as
    # the CLI does; every declared secret and config is.
    used_networks = {n for svc in f.services.values() for n in _service_networks(svc)}
    for name in sorted(used_networks):
        net = f.networks.get(name)
        path = f"networks.{name}"
        if net is None:
            if name != DEFAULT_NETWORK:
                continue  # reported against the service below
            p.networks[scoped(stack, name)] = _network_body(scoped(stack, name), ns)
            continue
        if net.external:
            p.networks[net.name or name] = None
            continue
        body = _network_body(net.name or scoped(stack, name), ns)
        body["Driver"] = net.driver or DEFAULT_DRIVER
        body["Labels"] = {**str_map(net.labels, f"{path}.labels"), **ns}
        if net.driver_opts:
            body["Options"] = {k: _scalar(v) for k, v in net.driver_opts.items()}
        if net.attachable:
            body["Attachable"] = True
        if net.internal:
            body["Internal"] = True
        if net.ipam:
            ipam: dict[str, Any] = {"Driver": net.ipam.driver or "default"}
            if net.ipam.config:
                ipam["Config"] = [{"Subnet": c.subnet} for c in net.ipam.config]
            body["IPAM"] = ipam
        p.networks[body["Name"]] = body
    p.secrets = [_file_object(stack, "secrets", n, o, f, ns) for n, o in f.secrets.items()]
    p.configs = [_file_object(stack, "configs", n, o, f, ns) for n, o in f.configs.items()]
    for name, svc in f.services.items():
        p.services[scoped(stack, name)] = _service(stack, name, svc, f, ns)
    return p


def _network_body(name: str, ns: dict[str, str]) -> dict[str, Any]:
    return {"Name": name, "Driver": DEFAULT_DRIVER, "Labels": dict(ns), "CheckDuplicate": True}


def _service_networks(svc: Service) -> list[str]:
    if svc.networks is None:
        return [DEFAULT_NETWORK]
    return list(svc.networks)


def _file_object(
    stack: str, kind: str, name: str, obj: FileObject, f: ComposeFile, ns: dict[str, str]
) -> FileSpec:
    path = f"{kind}.{name}"
    if obj.external:
        return FileSpec(obj.name or name, None)
    if obj.file is None:
        raise ComposeError(path, "needs `file:` (or `external: true`)")
    source = f.base_dir / obj.file
    try:
        data = source.read_bytes()
    except OSError as e:
        raise ComposeError(f"{path}.file", f"cannot read {source}: {e.strerror}") from None
    full = obj.name or scoped(stack, name)
    spec: dict[str, Any] = {
        "Name": full,
        "Labels": {**str_map(obj.labels, f"{path}.labels"), **ns},
        "Data": base64.b64encode(data).decode(),
    }
    if obj.template_driver:
        spec["Templating"] = {"Name": obj.template_driver}
    return FileSpec(full, spec)


def _object_name(stack: str, obj: FileObject | None, name: str) -> str:
    if obj is None:
        return scoped(stack, name)
    return obj.name or (name if obj.external else scoped(stack, name))


def _file_refs(
    stack: str, kind: str, refs: list[str | FileRef], f: ComposeFile, path: str
) -> list[dict[str, Any]]:
    declared = f.secrets if kind == "secrets" else f.configs
    out = []
    for i, ref in enumerate(refs):
        r = FileRef(source=ref) if isinstance(ref, str) else ref
        if r.source not in declared:
            raise ComposeError(f"{path}[{i}]", f"{kind[:-1]} {r.source!r} is not declared")
        file = {
            "Name": r.target or r.source,
            "UID": r.uid or "0",
            "GID": r.gid or "0",
            "Mode": DEFAULT_FILE_MODE if r.mode is None else r.mode,
        }
        key = "SecretName" if kind == "secrets" else "ConfigName"
        out.append({"File": file, key: _object_name(stack, declared[r.source], r.source)})
    return out


def _healthcheck(h: Healthcheck, path: str) -> dict[str, Any]:
    if h.disable:
        return {"Test": ["NONE"]}
    out: dict[str, Any] = {}
    if h.test is not None:
        out["Test"] = ["CMD-SHELL", h.test] if isinstance(h.test, str) else list(h.test)
    for key, value in (("Interval", h.interval), ("Timeout", h.timeout)):
        if value is not None:
            out[key] = duration(value, f"{path}.{key.lower()}")
    if h.start_period is not None:
        out["StartPeriod"] = duration(h.start_period, f"{path}.start_period")
    if h.retries is not None:
        out["Retries"] = h.retries
    return out


def _update_config(u: UpdateConfig, path: str) -> dict[str, Any]:
    out: dict[str, Any] = {"Parallelism": 1 if u.parallelism is None else u.parallelism}
    if u.delay is not None:
        out["Delay"] = duration(u.delay, f"{path}.delay")
    if u.failure_action is not None:
        out["FailureAction"] = u.failure_action
    if u.monitor is not None:
        out["Monitor"] = duration(u.monitor, f"{path}.monitor")
    out["MaxFailureRatio"] = u.max_failure_ratio or 0
    out["Order"] = u.order or ""  # sent empty when unset, as the CLI does
    return out


def _service(
    stack: str, name: str, svc: Service, f: ComposeFile, ns: dict[str, str]
) -> dict[str, Any]:
    path = f"services.{name}"
    d = svc.deploy
    dpath = f"{path}.deploy"
    labels = str_map(d.labels if d else None, f"{dpath}.labels")
    labels.update({LABEL_IMAGE: svc.image, **ns})
    cs: dict[str, Any] = {
        "Image": tagged(svc.image),
        "Labels": {**str_map(svc.labels, f"{path}.labels"), **ns},
        # What the docker CLI sends (its zero value), so both deploys store one spec.
        "Privileges": {"CredentialSpec": None, "SELinuxContext": None, "NoNewPrivileges": False},
    }
    if (entry := _argv(svc.entrypoint)) is not None:
        cs["Command"] = entry
    if (args := _argv(svc.command)) is not None:
        cs["Args"] = args
    if (env := environment(svc.environment, f"{path}.environment")) is not None:
        cs["Env"] = env
    for key, value in (
        ("Hostname", svc.hostname),
        ("User", svc.user),
        ("Dir", svc.working_dir),
        ("StopSignal", svc.stop_signal),
        ("Init", svc.init),  # a pointer in Go: sent when set, false too
    ):
        if value is not None:
            cs[key] = value
    for key, flag in (("ReadOnly", svc.read_only), ("TTY", svc.tty), ("OpenStdin", svc.stdin_open)):
        if flag:  # Go's omitempty: false is not sent
            cs[key] = True
    if svc.volumes:
        cs["Mounts"] = container.mounts(stack, svc, f, f"{path}.volumes", ns)
    if (dns := container.dns_config(svc)) is not None:
        cs["DNSConfig"] = dns
    if svc.cap_add is not None:
        cs["CapabilityAdd"] = container.capabilities(svc.cap_add)
    if svc.cap_drop is not None:
        cs["CapabilityDrop"] = container.capabilities(svc.cap_drop)
    if svc.ulimits:
        cs["Ulimits"] = container.ulimits(svc.ulimits, f"{path}.ulimits")
    if svc.extra_hosts is not None:
        cs["Hosts"] = [_host_entry(h) for h in svc.extra_hosts]
    if svc.sysctls is not None:
        cs["Sysctls"] = str_map(svc.sysctls, f"{path}.sysctls")
    if svc.stop_grace_period is not None:
        cs["StopGracePeriod"] = duration(svc.stop_grace_period, f"{path}.stop_grace_period")
    if svc.healthcheck is not None:
        cs["Healthcheck"] = _healthcheck(svc.healthcheck, f"{path}.healthcheck")
    if svc.secrets:
        cs["Secrets"] = _file_refs(stack, "secrets", svc.secrets, f, f"{path}.secrets")
    if svc.configs:
        cs["Configs"] = _file_refs(stack, "configs", svc.configs, f, f"{path}.configs")
    # Resources, Placement and ForceUpdate are sent empty (zero) as the docker CLI sends
    # them, so the spec stored is the same whichever deployed the file.
    task: dict[str, Any] = {
        "ContainerSpec": cs,
        "Resources": {},
        "Placement": {},
        "Networks": _networks(stack, name, svc, f),
        "ForceUpdate": 0,
    }
    spec: dict[str, Any] = {"Name": scoped(stack, name), "Labels": labels, "TaskTemplate": task}
    if (logging := container.log_driver(svc)) is not None:
        task["LogDriver"] = logging
    mode = (d.mode if d else None) or "replicated"
    if mode in ("global", "global-job"):
        if d is not None and d.replicas is not None:
            raise ComposeError(f"{dpath}.replicas", f"not allowed with mode {mode}")
        spec["Mode"] = {"Global": {}} if mode == "global" else {"GlobalJob": {}}
    else:
        replicas = 1 if d is None or d.replicas is None else d.replicas
        if mode == "replicated":
            spec["Mode"] = {"Replicated": {"Replicas": replicas}}
        else:  # a job runs `replicas` tasks to completion, all at once
            spec["Mode"] = {
                "ReplicatedJob": {"MaxConcurrent": replicas, "TotalCompletions": replicas}
            }
    endpoint: dict[str, Any] = {}
    if d is not None and d.endpoint_mode is not None:
        endpoint["Mode"] = d.endpoint_mode
    if svc.ports:
        endpoint["Ports"] = [port(v, f"{path}.ports[{i}]") for i, v in enumerate(svc.ports)]
    spec["EndpointSpec"] = endpoint
    if svc.restart is not None and (d is None or d.restart_policy is None):
        if (policy := _restart(svc.restart, f"{path}.restart")) is not None:
            task["RestartPolicy"] = policy
    if d is None:
        return spec
    if d.resources is not None:
        task["Resources"] = _resources(d, f"{dpath}.resources")
    if d.restart_policy is not None:
        rp = d.restart_policy
        rpath = f"{dpath}.restart_policy"
        restart: dict[str, Any] = {"Condition": rp.condition or "any"}
        if rp.delay is not None:
            restart["Delay"] = duration(rp.delay, f"{rpath}.delay")
        if rp.max_attempts is not None:
            restart["MaxAttempts"] = rp.max_attempts
        if rp.window is not None:
            restart["Window"] = duration(rp.window, f"{rpath}.window")
        task["RestartPolicy"] = restart
    if d.placement is not None:
        pl = d.placement
        placement: dict[str, Any] = {}
        if pl.constraints:
            placement["Constraints"] = list(pl.constraints)
        if pl.preferences:
            placement["Preferences"] = [
                {"Spread": {"SpreadDescriptor": pr.spread}} for pr in pl.preferences
            ]
        if pl.max_replicas_per_node is not None:
            placement["MaxReplicas"] = pl.max_replicas_per_node
        task["Placement"] = placement
    if d.update_config is not None:
        spec["UpdateConfig"] = _update_config(d.update_config, f"{dpath}.update_config")
    if d.rollback_config is not None:
        spec["RollbackConfig"] = _update_config(d.rollback_config, f"{dpath}.rollback_config")
    return spec


def _restart(value: str, path: str) -> dict[str, Any] | None:
    """A service's `restart:` as the docker CLI turns it into a restart policy."""
    name, _, count = value.partition(":")
    if name == "no" and not count:
        return None
    if name in ("always", "unless-stopped") and not count:
        return {"Condition": "any"}
    if name == "on-failure":
        policy: dict[str, Any] = {"Condition": "on-failure"}
        if count:
            if not count.isdigit():
                raise ComposeError(path, f"invalid maximum retry count {count!r}")
            policy["MaxAttempts"] = int(count)
        return policy
    raise ComposeError(
        path, f"invalid restart policy {value!r} (no, always, unless-stopped, on-failure[:N])"
    )


def tagged(image: str) -> str:
    """The image with `:latest` when it names no tag or digest, as the docker CLI sends
    it when it cannot reach a registry to pin the digest."""
    last = image.rsplit("/", 1)[-1]
    return image if "@" in image or ":" in last else f"{image}:latest"


def _host_entry(entry: str) -> str:
    """`host:ip` (Compose) → `ip host` (the Engine API's /etc/hosts order)."""
    host, sep, ip = entry.partition(":")
    return f"{ip} {host}" if sep else entry


def _resources(d: Any, path: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    lim, res = d.resources.limits, d.resources.reservations
    if lim is not None:
        limits: dict[str, Any] = {}
        if lim.cpus is not None:
            limits["NanoCPUs"] = cpus(lim.cpus, f"{path}.limits.cpus")
        if lim.memory is not None:
            limits["MemoryBytes"] = memory(lim.memory, f"{path}.limits.memory")
        if lim.pids is not None:
            limits["Pids"] = lim.pids
        out["Limits"] = limits
    if res is not None:
        reservations: dict[str, Any] = {}
        if res.cpus is not None:
            reservations["NanoCPUs"] = cpus(res.cpus, f"{path}.reservations.cpus")
        if res.memory is not None:
            reservations["MemoryBytes"] = memory(res.memory, f"{path}.reservations.memory")
        if res.generic_resources:
            reservations["GenericResources"] = [
                {
                    "DiscreteResourceSpec": {
                        "Kind": g.discrete_resource_spec.kind,
                        "Value": g.discrete_resource_spec.value,
                    }
                }
                for g in res.generic_resources
            ]
        out["Reservations"] = reservations
    return out


def _networks(stack: str, name: str, svc: Service, f: ComposeFile) -> list[dict[str, Any]]:
    out = []
    attachments: dict[str, Any] = (
        {DEFAULT_NETWORK: None}
        if svc.networks is None
        else (dict.fromkeys(svc.networks) if isinstance(svc.networks, list) else svc.networks)
    )
    for net, att in attachments.items():
        declared = f.networks.get(net)
        if declared is None and net != DEFAULT_NETWORK:
            raise ComposeError(f"services.{name}.networks.{net}", "network is not declared")
        if declared is not None and declared.external:
            target = declared.name or net
        elif declared is not None and declared.name:
            target = declared.name
        else:
            target = scoped(stack, net)
        aliases = [*((att or {}).get("aliases") or []), name]
        out.append({"Target": target, "Aliases": aliases})
    return sorted(out, key=lambda n: n["Target"])
