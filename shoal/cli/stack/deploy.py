"""`shoal stack deploy|rm|ls`: the requests `docker stack deploy|rm|ls` sends
(reference/docker-cli-transcripts INDEX.md §14), made through the Engine API, so a
stack deployed by either is seen and removed by the other.

Deploy: external networks, secrets and configs are checked first (a missing one stops
the deploy before anything is created); then networks are created when missing,
secrets and configs created (or updated, as the CLI does, which Swarm allows only when
the data is unchanged), and each service created or updated at its current version.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shoal.cli.client import APIError, Client
from shoal.cli.stack.convert import LABEL_NAMESPACE, FileSpec, Plan


class StackError(Exception):
    """The deploy or removal could not go on (what the daemon refused, and why)."""


Say = Callable[[str], None]


def _by_label(stack: str) -> dict[str, Any]:
    return {"filters": {"label": {f"{LABEL_NAMESPACE}={stack}": True}}}


def _write(
    client: Client, what: str, method: str, path: str, body: Any = None, **query: Any
) -> Any:
    """A write the deploy makes; a refusal names what was being done, as the CLI's
    "failed to create service web: ..." does."""
    try:
        return client.request(method, path, body, query=query or None)
    except APIError as e:
        raise StackError(f"failed to {what}: {e.message}") from None


def _check_externals(client: Client, plan: Plan) -> None:
    """Every external object the file names must exist: checked before any write."""
    for name, body in plan.networks.items():
        if body is None:
            found = client.request("GET", "/networks", query={"filters": {"name": {name: True}}})
            if not any(n.get("Name") == name for n in found or []):
                raise StackError(
                    f"network {name!r} is declared as external, but could not be found"
                )
    for kind, objects in (("secret", plan.secrets), ("config", plan.configs)):
        for obj in objects:
            if obj.spec is None:
                try:
                    client.request("GET", f"/{kind}s/{obj.name}")
                except APIError as e:
                    if e.status != 404:
                        raise
                    raise StackError(
                        f"{kind} {obj.name!r} is declared as external, but could not be found"
                    ) from None


def deploy(client: Client, plan: Plan, say: Say, prune: bool = False) -> None:
    """Create or update everything the plan names; with `prune`, also remove the
    stack's services the file no longer names (as `docker stack deploy --prune`)."""
    _check_externals(client, plan)
    existing = {
        n["Name"] for n in client.request("GET", "/networks", query=_by_label(plan.stack)) or []
    }
    for name, body in plan.networks.items():
        if body is None or name in existing:
            continue
        say(f"Creating network {name}")
        _write(client, f"create network {name}", "POST", "/networks/create", body)
    ids = {
        "secret": _file_objects(client, "secret", plan.secrets, say),
        "config": _file_objects(client, "config", plan.configs, say),
    }
    services = {
        s["Spec"]["Name"]: s
        for s in client.request("GET", "/services", query=_by_label(plan.stack)) or []
    }
    for name, spec in plan.services.items():
        spec = _resolve_refs(client, spec, ids)
        current = services.get(name)
        if current is None:
            say(f"Creating service {name}")
            _write(client, f"create service {name}", "POST", "/services/create", spec)
        else:
            say(f"Updating service {name} (id: {current['ID']})")
            version = current["Version"]["Index"]
            path = f"/services/{current['ID']}/update"
            _write(client, f"update service {name}", "POST", path, spec, version=version)
    if prune:
        for name in sorted(set(services) - set(plan.services)):
            say(f"Removing service {name}")
            _write(client, f"remove service {name}", "DELETE", f"/services/{services[name]['ID']}")


def _file_objects(client: Client, kind: str, objects: list[FileSpec], say: Say) -> dict[str, str]:
    """Create or update each secret (config); {name: ID} of every one the file names."""
    ids: dict[str, str] = {}
    for obj in objects:
        try:
            current = client.request("GET", f"/{kind}s/{obj.name}")
        except APIError as e:
            if e.status != 404:
                raise
            current = None
        if obj.spec is None:
            if current is None:
                raise StackError(f"{kind} {obj.name!r} is declared as external, but is gone")
            ids[obj.name] = current["ID"]
        elif current is None:
            say(f"Creating {kind} {obj.name}")
            what = f"create {kind} {obj.name}"
            ids[obj.name] = _write(client, what, "POST", f"/{kind}s/create", obj.spec)["ID"]
        else:
            say(f"Updating {kind} {obj.name}")
            _write(
                client,
                f"update {kind} {obj.name}",
                "POST",
                f"/{kind}s/{current['ID']}/update",
                obj.spec,
                version=current["Version"]["Index"],
            )
            ids[obj.name] = current["ID"]
    return ids


def _resolve_refs(client: Client, spec: dict[str, Any], ids: dict[str, dict[str, str]]) -> Any:
    """The service's secret and config references with their IDs."""
    cs = spec["TaskTemplate"]["ContainerSpec"]
    for kind, key in (("secret", "Secrets"), ("config", "Configs")):
        name_key, id_key = f"{kind.capitalize()}Name", f"{kind.capitalize()}ID"
        for ref in cs.get(key, []):
            ref[id_key] = ids[kind][ref[name_key]]
    return spec


def remove(client: Client, stack: str, say: Say) -> bool:
    """Remove the stack's services, secrets, configs and networks, in the CLI's order.
    False if nothing carried the stack's label."""
    q = _by_label(stack)
    services = client.request("GET", "/services", query=q) or []
    networks = client.request("GET", "/networks", query=q) or []
    secrets = client.request("GET", "/secrets", query=q) or []
    configs = client.request("GET", "/configs", query=q) or []
    if not (services or networks or secrets or configs):
        return False
    failed: list[str] = []
    for kind, objects, path in (
        ("service", services, "services"),
        ("secret", secrets, "secrets"),
        ("config", configs, "configs"),
        ("network", networks, "networks"),
    ):
        for obj in sorted(objects, key=_name):
            say(f"Removing {kind} {_name(obj)}")
            try:
                client.request("DELETE", f"/{path}/{obj.get('ID') or obj.get('Id')}")
            except APIError as e:
                failed.append(f"failed to remove {kind} {_name(obj)}: {e.message}")
    if failed:
        raise StackError("; ".join(failed))
    return True


def _name(obj: dict[str, Any]) -> str:
    return str(obj.get("Name") or obj.get("Spec", {}).get("Name", ""))


def stacks(client: Client) -> dict[str, int]:
    """{stack: number of services}, as `docker stack ls` groups them."""
    out: dict[str, int] = {}
    query = {"filters": {"label": {LABEL_NAMESPACE: True}}}
    for s in client.request("GET", "/services", query=query) or []:
        name = (s["Spec"].get("Labels") or {}).get(LABEL_NAMESPACE)
        if name:
            out[name] = out.get(name, 0) + 1
    return dict(sorted(out.items()))


def services(client: Client, stack: str) -> list[dict[str, str]]:
    """The stack's services as `docker stack services` shows them (REPLICAS from the
    service's status: running/desired tasks)."""
    rows = []
    for s in client.request("GET", "/services", query={**_by_label(stack), "status": "true"}) or []:
        spec, status = s["Spec"], s.get("ServiceStatus") or {}
        mode = next(iter(spec.get("Mode") or {"Replicated": {}}))
        mode = {"Replicated": "replicated", "Global": "global"}.get(mode, mode.lower())
        replicas = f"{status.get('RunningTasks', 0)}/{status.get('DesiredTasks', 0)}"
        image = spec["TaskTemplate"]["ContainerSpec"].get("Image", "").split("@")[0]
        rows.append(
            {
                "ID": s["ID"][:12],
                "NAME": spec["Name"],
                "MODE": mode,
                "REPLICAS": replicas,
                "IMAGE": image,
            }
        )
    return sorted(rows, key=lambda r: r["NAME"])
