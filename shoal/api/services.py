"""`/services`: create, list, inspect, update, remove."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import msgspec
from aiohttp import web

from shoal.api import filters
from shoal.api.body import bool_query, decode, int_query
from shoal.api.encode import empty, json_response, json_structs_response, wire
from shoal.api.server import SETTLES_ITSELF, Router, reads
from shoal.api.swarm import require_manager
from shoal.errors import InvalidArgument
from shoal.manager.controlapi import services as ctl
from shoal.manager.controlapi.defaults import insert_defaults
from shoal.manager.orchestrator.replicated import replicas_of
from shoal.manager.store import ReadTx
from shoal.types.service import Service, ServiceSpec, ServiceStatus
from shoal.types.task import TaskState

SERVICE_FILTERS = ("id", "name", "label", "mode", "runtime")


def register(r: Router) -> None:
    r.add("GET", "/services", list_services)
    r.add("POST", "/services/create", create)
    r.add("GET", "/services/{id}", inspect)
    r.add("DELETE", "/services/{id}", remove)
    r.add("POST", "/services/{id}/update", update)


def down_nodes(tx: ReadTx) -> set[str]:
    return {n.id for n in tx.nodes() if n.status.state == "down"}


def service_status(tx: ReadTx, service: Service, down: set[str]) -> ServiceStatus:
    """Running, desired and completed task counts, as `docker service ls` shows them.
    Like dockerd, a task still stopping counts as running; tasks on a `down` node do
    not count. For a job (SwarmKit's ListServiceStatuses) only the tasks of its current
    run count: desired is MaxConcurrent for a replicated job, and for a global job the
    tasks still to complete (the CLI shows `running/desired (completed/total)`)."""
    mode = service.spec.mode
    if mode is None or mode.kind == "replicated":  # counted from the store's index
        return replicated_status(service, tx.durable_running(service.id, down))
    live = [t for t in tx.tasks_of_service(service.id) if t.node_id not in down]
    if service.job_status is not None:
        run = service.job_status.job_iteration
        live = [t for t in live if t.job_iteration == run]
    running = sum(1 for t in live if t.state == TaskState.RUNNING)
    completed = 0
    if mode and mode.replicated_job is not None:
        desired = mode.replicated_job.max_concurrent or 0
    elif mode and mode.global_job is not None:
        desired = sum(
            1 for t in live if t.desired == TaskState.COMPLETE and t.state != TaskState.COMPLETE
        )
    elif mode and mode.kind == "global":
        desired = sum(1 for t in live if t.desired == TaskState.RUNNING)
    else:
        desired = replicas_of(service)
    if service.job_status is not None:
        completed = sum(1 for t in live if t.state == TaskState.COMPLETE)
    return ServiceStatus(running_tasks=running, desired_tasks=desired, completed_tasks=completed)


def is_replicated(service: Service) -> bool:
    return service.spec.mode is None or service.spec.mode.kind == "replicated"


def replicated_status(service: Service, running: int) -> ServiceStatus:
    """A replicated service's status, from its running count (the store's index)."""
    return ServiceStatus(
        running_tasks=running, desired_tasks=replicas_of(service), completed_tasks=0
    )


def service_list(
    services: Iterable[Service],
    f: filters.Filters,
    status: Callable[[Service], ServiceStatus] | None,
) -> list[Service]:
    """What `GET /services` answers: the services (by CreatedAt, ID) that match the
    filters, each with its status when `status` is given."""
    out: list[Service] = []
    for s in services:
        if not _matches(s, f):
            continue
        if status is not None:
            s = msgspec.structs.replace(s, service_status=status(s))
        out.append(s)
    return out


def _matches(s: Service, f: filters.Filters) -> bool:
    if "id" in f and not filters.match_prefix(s.id, f["id"]):
        return False
    if "name" in f and not filters.match_prefix(s.spec.name or "", f["name"]):
        return False
    if "label" in f and not filters.match_label(s.spec.labels, f["label"]):
        return False
    if "mode" in f:
        kind = s.spec.mode.kind if s.spec.mode else "replicated"
        for want in f["mode"]:
            if want not in ("replicated", "global", "replicated-job", "global-job"):
                raise InvalidArgument(f"Invalid filter: 'mode'='{want}'")
        if kind not in f["mode"]:
            return False
    if "runtime" in f:
        return "container" in f["runtime"]
    return True


def _registry_auth(request: web.Request) -> str | None:
    """The credentials `--with-registry-auth` sends (base64 JSON), for the agents' pulls."""
    return request.headers.get("X-Registry-Auth") or None


def _shown(view: ReadTx, with_status: bool) -> set[str]:
    """What a service list shows, as Store.settled topics: the services; with their
    status, the nodes (down ones do not count), and every task when a mode other than
    replicated counts from them. The running counts of replicated services need no
    wait: they are read as of what is durable (ReadTx.durable_running), so the list
    answers while tasks converge (each status write a commit in flight) and still shows
    nothing a crash could take back, nor less than any write acknowledged before it."""
    if not with_status:
        return {"service"}
    replicated = all(is_replicated(s) for s in view.services())
    return {"service", "node"} if replicated else {"service", "node", "task"}


@reads(SETTLES_ITSELF)
async def list_services(request: web.Request) -> web.Response:
    m = require_manager(request)
    f = filters.parse(request.query.get("filters"), SERVICE_FILTERS)
    with_status = bool_query(request, "status")
    shown = _shown(m.store.view(), with_status)
    while True:  # (a service of another mode created meanwhile: wait for its tasks too)
        await m.store.settled(shown)
        view = m.store.view()
        if _shown(view, with_status) <= shown:
            break
        shown |= _shown(view, with_status)
    down = down_nodes(view) if with_status else set()
    services = sorted(view.services(), key=lambda s: (s.created_at, s.id))
    status = (lambda s: service_status(view, s, down)) if with_status else None
    return json_structs_response(service_list(services, f, status))


async def create(request: web.Request) -> web.Response:
    m = require_manager(request)
    spec = await decode(request, ServiceSpec)
    service = await ctl.create_service(m.store, spec, registry_auth=_registry_auth(request))
    return json_response({"ID": service.id}, status=201)


def present(service: Service, defaults: bool) -> Any:
    if defaults:
        service = msgspec.structs.replace(service, spec=insert_defaults(service.spec))
    return wire(service)


@reads("service")
async def inspect(request: web.Request) -> web.Response:
    m = require_manager(request)
    service = ctl.resolve_service(m.store.view(), request.match_info["id"])
    return json_response(present(service, bool_query(request, "insertDefaults")))


async def remove(request: web.Request) -> web.Response:
    m = require_manager(request)
    await ctl.remove_service(m.store, request.match_info["id"])
    return empty()


async def update(request: web.Request) -> web.Response:
    m = require_manager(request)
    version = int_query(request, "version")
    spec = await decode(request, ServiceSpec)
    rollback = request.query.get("rollback", "")
    if rollback not in ("", "previous"):
        raise InvalidArgument(f"unrecognized rollback option {rollback}")
    await ctl.update_service(
        m.store,
        request.match_info["id"],
        version,
        spec,
        rollback=rollback == "previous",
        registry_auth=_registry_auth(request),
    )
    return json_response({"Warnings": None})
