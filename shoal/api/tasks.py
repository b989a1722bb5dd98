"""`/tasks`: list with filters, inspect."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from shoal.api import filters
from shoal.api.encode import json_response, json_structs_response, wire
from shoal.api.server import Router
from shoal.api.swarm import require_manager
from shoal.errors import InvalidArgument, NotFound, ShoalError
from shoal.manager.controlapi.nodes import resolve_node
from shoal.manager.controlapi.services import resolve_service
from shoal.manager.store import ReadTx
from shoal.types.task import Task, TaskState

TASK_FILTERS = ("id", "name", "service", "node", "label", "desired-state", "_up-to-date")
DESIRED_STATES = {
    "running": TaskState.RUNNING,
    "shutdown": TaskState.SHUTDOWN,
    "accepted": TaskState.ACCEPTED,
}


def register(r: Router) -> None:
    r.add("GET", "/tasks", list_tasks)
    r.add("GET", "/tasks/{id}", inspect)


def task_name(tx: ReadTx, t: Task) -> str:
    service = tx.get_service(t.service_id)
    name = service.spec.name if service and service.spec.name else tx.task_meta(t.id).service_name
    return f"{name}.{t.slot}" if t.slot is not None else f"{name}.{t.node_id}"


def resolve_task(tx: ReadTx, ref: str) -> Task:
    t = tx.get_task(ref)
    if t is not None:
        return t
    matches = [t for t in tx.tasks() if t.id.startswith(ref)] if ref else []
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise InvalidArgument(f"task {ref} is ambiguous ({len(matches)} matches found)")
    raise NotFound(f"task {ref} not found")


def _ids(resolve: object, tx: ReadTx, refs: list[str]) -> set[str]:
    out = set()
    for ref in refs:
        try:
            out.add(resolve(tx, ref).id)  # type: ignore[operator]
        except ShoalError:
            out.add(ref)  # unknown: matches nothing but its own literal ID
    return out


async def list_tasks(request: web.Request) -> web.Response:
    m = require_manager(request)
    f = filters.parse(request.query.get("filters"), TASK_FILTERS)
    view = m.store.view()
    candidates: list[Task]
    if "service" in f:
        service_ids = _ids(resolve_service, view, f["service"])
        candidates = [t for sid in service_ids for t in view.tasks_of_service(sid)]
    else:
        candidates = view.tasks()
    node_ids = _ids(resolve_node, view, f["node"]) if "node" in f else None
    desired: set[TaskState] | None = None
    if "desired-state" in f:
        desired = set()
        for d in f["desired-state"]:
            if d not in DESIRED_STATES:
                raise InvalidArgument(
                    f"Invalid desired-state filter value: '{d}'. Expected: running, shutdown, "
                    "accepted"
                )
            desired.add(DESIRED_STATES[d])
    up_to_date = "_up-to-date" in f and any(v.lower() == "true" for v in f["_up-to-date"])
    out = []
    for t in sorted(candidates, key=lambda t: (t.created_at, t.id)):
        if "id" in f and not filters.match_prefix(t.id, f["id"]):
            continue
        if "name" in f and not filters.match_prefix(task_name(view, t), f["name"]):
            continue
        if node_ids is not None and t.node_id not in node_ids:
            continue
        if "label" in f and not _service_labels_match(view, t, f["label"]):
            continue
        if desired is not None and t.desired not in desired:
            continue
        if up_to_date:
            s = view.get_service(t.service_id)
            if (
                s is None
                or view.task_meta(t.id).spec_version != view.service_meta(s.id).spec_version
            ):
                continue
        out.append(task_struct(t))
    return json_structs_response(out)


async def inspect(request: web.Request) -> web.Response:
    m = require_manager(request)
    return json_response(task_wire(resolve_task(m.store.view(), request.match_info["id"])))


def _service_labels_match(view: ReadTx, t: Task, wanted: list[str]) -> bool:
    """SwarmKit matches a task's `label` filter against its service's labels (what
    `docker stack ps` filters on), not the task's own."""
    s = view.get_service(t.service_id)
    return filters.match_label(s.spec.labels if s else None, wanted)


def task_struct(t: Task) -> Task:
    """A task as dockerd encodes it: its `Slot` is omitted when 0 (`omitempty`), which
    only the first slot of a replicated job has; its spec has no `Runtime` (dockerd
    sets that on a service's spec only). The same task when nothing is to change."""
    if t.slot == 0:
        t = msgspec.structs.replace(t, slot=None)
    if t.spec.runtime is not None:
        t = msgspec.structs.replace(t, spec=msgspec.structs.replace(t.spec, runtime=None))
    return t


def task_wire(t: Task) -> Any:
    return wire(task_struct(t))
