"""Helpers every orchestrator shares: making tasks, slots, and the dirty check."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import msgspec

from shoal.ids import new_id
from shoal.manager.store import ReadTx, Tx
from shoal.types.base import Version, format_time, now_ns
from shoal.types.meta import ServiceMeta, TaskMeta
from shoal.types.network import PortMapping
from shoal.types.node import Node
from shoal.types.service import Service, ServiceSpec
from shoal.types.task import PortStatus, Task, TaskState, TaskStatus

Slot = list[Task]


def new_task(
    service: Service,
    meta: ServiceMeta,
    slot: int | None,
    node_id: str | None = None,
    desired: TaskState = TaskState.RUNNING,
    job_iteration: Version | None = None,
    default_log_driver: dict[str, Any] | None = None,
) -> tuple[Task, TaskMeta]:
    """A NEW task for `service` (SwarmKit's NewTask: message "created"), and what shoal
    keeps beside it, from the service's `meta`. A job's task carries the iteration of
    the job's run it belongs to; `default_log_driver` is the cluster's
    TaskDefaults.LogDriver, which the task keeps if the service names none."""
    spec = service.spec.task_template
    assert spec is not None
    task = Task(
        id=new_id(),
        spec=spec,
        service_id=service.id,
        slot=slot,
        node_id=node_id,
        status=TaskStatus(
            timestamp=format_time(now_ns()),
            state="new",
            message="created",
            port_status=PortStatus(),
        ),
        desired_state=desired.wire,
        labels={},
        job_iteration=job_iteration,
    )
    task_meta = TaskMeta(
        spec_version=meta.spec_version,
        service_name=service.spec.name or "",
        registry_auth=meta.registry_auth,
        default_log_driver=None if spec.log_driver else default_log_driver,
        host_ports=host_ports(service.spec),
    )
    return task, task_meta


def host_ports(spec: ServiceSpec) -> tuple[PortMapping, ...]:
    """The ports `spec` publishes in host mode, as a task of it keeps them."""
    ep = spec.endpoint_spec
    return tuple(
        PortMapping(
            protocol=p.protocol or "tcp",
            target=p.target_port or 0,
            published=p.published_port or 0,
            mode="host",
        )
        for p in (ep.ports if ep else None) or ()
        if p.publish_mode == "host"
    )


def create_task(
    tx: Tx,
    service: Service,
    slot: int | None,
    node_id: str | None = None,
    desired: TaskState = TaskState.RUNNING,
    job_iteration: Version | None = None,
) -> Task:
    """Write a new task for `service` in `tx` (see new_task)."""
    cluster = tx.cluster()
    defaults = cluster.spec.task_defaults if cluster is not None else None
    log_driver = (defaults or {}).get("LogDriver") or None
    task, meta = new_task(
        service, tx.service_meta(service.id), slot, node_id, desired, job_iteration, log_driver
    )
    return tx.create(task, meta)


def set_desired(task: Task, desired: TaskState) -> Task:
    return msgspec.structs.replace(task, desired_state=desired.wire)


def set_status(task: Task, state: TaskState, message: str, err: str | None = None) -> Task:
    status = msgspec.structs.replace(
        task.status,
        state=state.wire,
        message=message,
        err=err,
        timestamp=format_time(now_ns()),
    )
    return msgspec.structs.replace(task, status=status)


def is_runnable(task: Task) -> bool:
    """Desired to run (or held ready): the task still occupies its slot."""
    return task.desired <= TaskState.RUNNING


def is_task_dirty(tx: ReadTx, service: Service, task: Task) -> bool:
    """True when the task was made from an older spec than the service's current one.

    The spec version is bumped only for changes that need new tasks (the task
    template or the endpoint), not for replicas or labels: see controlapi.
    """
    return tx.task_meta(task.id).spec_version != tx.service_meta(service.id).spec_version


def invalid_node(node: Node | None) -> bool:
    """Tasks on such a node must be moved (SwarmKit's InvalidNode): gone, down, drained."""
    return node is None or node.status.state == "down" or node.spec.availability == "drain"


def slots_of(tasks: list[Task]) -> dict[int, Slot]:
    slots: dict[int, Slot] = defaultdict(list)
    for t in tasks:
        if t.slot is not None:
            slots[t.slot].append(t)
    return slots
