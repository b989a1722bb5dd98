"""Service operations behind the API: validation, then one store transaction each."""

from __future__ import annotations

import re

import msgspec

from shoal.errors import (
    Conflict,
    ConstraintRejected,
    FailedPrecondition,
    NotFound,
    OutOfSequence,
    invalid_argument,
)
from shoal.ids import new_id
from shoal.manager.controlapi.defaults import DEFAULT_ENDPOINT_MODE, insert_defaults
from shoal.manager.controlapi.names import random_name
from shoal.manager.controlapi.networks import resolve_attachments
from shoal.manager.controlapi.ports import check_port_conflicts
from shoal.manager.controlapi.secrets import check_references
from shoal.manager.orchestrator.update import rollback_service
from shoal.manager.scheduler import constraint
from shoal.manager.store import ReadTx, Store, Tx
from shoal.types.base import Version, format_time, now_ns
from shoal.types.meta import ServiceMeta
from shoal.types.service import (
    ContainerSpec,
    Endpoint,
    EndpointSpec,
    JobStatus,
    ReplicatedJob,
    ReplicatedService,
    Service,
    ServiceMode,
    ServiceSpec,
    TaskSpec,
)
from shoal.types.task import TaskState

_DNS_NAME = re.compile(r"^[a-zA-Z0-9](?:[-_]*[A-Za-z0-9]+)*$")
MAX_NAME_LENGTH = 63
DEFAULT_ISOLATION = "default"
DEFAULT_RUNTIME = "container"
DEFAULT_MAX_CONCURRENT = 1
# The most tasks one service may ask for at a time (Replicas, a job's MaxConcurrent and
# TotalCompletions): the manager keeps every task in memory and must still start on a
# data dir that holds the largest service allowed. Not a SwarmKit number (it has none).
MAX_REPLICAS_PER_SERVICE = 500_000


def _validate_duration(name: str, value: int | None) -> None:
    if value is not None and value < 0:
        raise invalid_argument(f"TaskSpec: {name} cannot be negative")


def _check_task_count(mode: ServiceMode) -> None:
    asked = [
        ("Replicas", mode.replicated.replicas if mode.replicated else None),
        ("MaxConcurrent", mode.replicated_job.max_concurrent if mode.replicated_job else None),
        (
            "TotalCompletions",
            mode.replicated_job.total_completions if mode.replicated_job else None,
        ),
    ]
    for field, n in asked:
        if n is not None and n > MAX_REPLICAS_PER_SERVICE:
            raise invalid_argument(
                f"{field} {n} is more than a service may ask for: the cluster's limit "
                f"is {MAX_REPLICAS_PER_SERVICE}"
            )


def validate(spec: ServiceSpec) -> ServiceSpec:
    """Check a spec as SwarmKit's control API does; return it with what the store keeps
    filled in (a generated name, the default mode, isolation and runtime)."""
    name = spec.name or random_name()
    if len(name) > MAX_NAME_LENGTH or not _DNS_NAME.match(name):
        raise invalid_argument("name must be valid as a DNS name component")
    tt = spec.task_template or TaskSpec()
    cs = tt.container_spec
    if cs is None:
        raise invalid_argument("ContainerSpec: missing in service spec")
    if not cs.image:
        raise invalid_argument("ContainerSpec: image reference must be provided")
    _validate_duration("StopGracePeriod", cs.stop_grace_period)
    rp = tt.restart_policy
    if rp is not None:
        if rp.condition not in (None, "", "none", "on-failure", "any"):
            raise invalid_argument(f"TaskSpec: invalid restart condition {rp.condition!r}")
        _validate_duration("restart-delay", rp.delay)
        _validate_duration("restart-window", rp.window)
        if rp.max_attempts is not None and rp.max_attempts < 0:
            raise invalid_argument("TaskSpec: restart-max-attempts cannot be negative")
    res = tt.resources
    if res and res.reservations and (res.reservations.nano_cpus or 0) < 0:
        raise invalid_argument("TaskSpec: reserved CPU cannot be negative")
    placement = tt.placement
    if placement and placement.constraints:
        try:
            constraint.parse(placement.constraints)
        except constraint.ConstraintError as e:
            raise ConstraintRejected(f"rpc error: code = Unknown desc = {e}") from e
    for cfg_name, cfg in (
        ("UpdateConfig", spec.update_config),
        ("RollbackConfig", spec.rollback_config),
    ):
        if cfg is None:
            continue
        if (cfg.delay or 0) < 0 or (cfg.monitor or 0) < 0:
            raise invalid_argument(f"{cfg_name}: durations cannot be negative")
        if cfg.max_failure_ratio is not None and not 0 <= cfg.max_failure_ratio <= 1:
            raise invalid_argument(f"{cfg_name}: max failure ratio must be between 0 and 1")
        if cfg.failure_action not in (None, "", "pause", "continue", "rollback"):
            raise invalid_argument(f"{cfg_name}: invalid failure action {cfg.failure_action!r}")
        if cfg.order not in (None, "", "stop-first", "start-first"):
            raise invalid_argument(f"{cfg_name}: invalid order {cfg.order!r}")
    mode = spec.mode or ServiceMode(replicated=ReplicatedService(replicas=1))
    kinds = [
        m
        for m in (mode.replicated, mode.global_, mode.replicated_job, mode.global_job)
        if m is not None
    ]
    if len(kinds) > 1:
        raise invalid_argument("service mode: only one mode may be set")
    if not kinds:
        mode = ServiceMode(replicated=ReplicatedService(replicas=1))
    elif mode.replicated is not None and mode.replicated.replicas is None:
        mode = ServiceMode(replicated=ReplicatedService(replicas=1))
    if mode.replicated is not None and (mode.replicated.replicas or 0) < 0:
        raise invalid_argument("Replicas cannot be negative")
    _check_task_count(mode)
    if is_job(mode):
        mode = _job_mode(mode)
        if spec.update_config is not None:
            raise invalid_argument("Jobs may not have an update config")
    ep = spec.endpoint_spec
    if ep is not None and ep.mode not in (None, "", "vip", "dnsrr"):
        raise invalid_argument(f"EndpointSpec: invalid mode {ep.mode!r}")
    if ep is not None and ep.mode == "dnsrr":
        for p in ep.ports or ():
            if (p.publish_mode or "ingress") == "ingress":
                raise invalid_argument(
                    "EndpointSpec: port published with ingress mode can't be used with dnsrr mode"
                )
    if ep is not None and not ep.mode:  # as dockerd stores it (the proto's default)
        spec = msgspec.structs.replace(
            spec, endpoint_spec=msgspec.structs.replace(ep, mode=DEFAULT_ENDPOINT_MODE)
        )
    cs = msgspec.structs.replace(cs, isolation=cs.isolation or DEFAULT_ISOLATION)
    tt = msgspec.structs.replace(tt, container_spec=cs, runtime=tt.runtime or DEFAULT_RUNTIME)
    return msgspec.structs.replace(spec, name=name, task_template=tt, mode=mode)


def is_job(mode: ServiceMode | None) -> bool:
    return mode is not None and mode.kind.endswith("-job")


def _job_mode(mode: ServiceMode) -> ServiceMode:
    """A replicated job's counts with dockerd's defaults filled in: MaxConcurrent 1,
    TotalCompletions = MaxConcurrent (the API's documented defaults)."""
    rj = mode.replicated_job
    if rj is None:
        return mode
    if (rj.max_concurrent or 0) < 0:
        raise invalid_argument("Maximum concurrent jobs must not be negative")
    if (rj.total_completions or 0) < 0:
        raise invalid_argument("Total completed jobs must not be negative")
    concurrent = DEFAULT_MAX_CONCURRENT if rj.max_concurrent is None else rj.max_concurrent
    total = concurrent if rj.total_completions is None else rj.total_completions
    return ServiceMode(
        replicated_job=ReplicatedJob(max_concurrent=concurrent, total_completions=total)
    )


def _job_status(iteration: int) -> JobStatus:
    """A job's run number `iteration`, started now."""
    return JobStatus(job_iteration=Version(index=iteration), last_execution=format_time(now_ns()))


def _name_conflict(name: str) -> Conflict:
    return Conflict(
        "rpc error: code = AlreadyExists desc = name conflicts with an existing object: "
        f"service {name} already exists"
    )


def _name_taken(tx: Tx, name: str, except_id: str | None = None) -> bool:
    lower = name.lower()
    return any((s.spec.name or "").lower() == lower and s.id != except_id for s in tx.services())


def _task_relevant(spec: ServiceSpec) -> tuple[TaskSpec | None, EndpointSpec | None]:
    """The parts of a spec whose change needs new tasks, with defaults filled in: a
    client that writes back the defaults it read (docker-py does) changes nothing."""
    full = insert_defaults(spec)
    tt = full.task_template
    if tt is not None:
        tt = msgspec.structs.replace(tt, runtime=None)
    return tt, full.endpoint_spec


async def create_service(
    store: Store, spec: ServiceSpec, registry_auth: str | None = None
) -> Service:
    """`POST /services/create`; `registry_auth` is the client's X-Registry-Auth."""
    spec = validate(spec)

    def write(tx: Tx) -> Service:
        assert spec.name is not None
        if _name_taken(tx, spec.name):
            raise _name_conflict(spec.name)
        check_port_conflicts(tx, spec)
        stored = resolve_attachments(tx, spec)
        service = Service(
            id=new_id(),
            spec=stored,
            endpoint=_endpoint(stored),
            job_status=_job_status(0) if is_job(spec.mode) else None,
        )
        check_references(tx, service)
        return tx.create(
            service,
            ServiceMeta(spec_version=tx.index, registry_auth=registry_auth or None),
        )

    return await store.update(write)


def _endpoint(spec: ServiceSpec) -> Endpoint:
    return Endpoint(spec=spec.allocated_endpoint_spec())


def _placement_constraints(spec: ServiceSpec) -> list[str]:
    tt = spec.task_template
    return list(tt.placement.constraints or []) if tt and tt.placement else []


def _constraints_only_change_still_met(tx: Tx, current: Service, new_spec: ServiceSpec) -> bool:
    """SwarmKit's IsTaskDirtyPlacementConstraintsOnly: a change of placement constraints
    alone replaces no task whose node still meets them (so no update runs, and the
    service shows no UpdateStatus). shoal decides it for the service's tasks at once."""

    def without_constraints(spec: ServiceSpec) -> object:
        tt, ep = _task_relevant(spec)
        if tt is not None and tt.placement is not None:
            tt = msgspec.structs.replace(
                tt, placement=msgspec.structs.replace(tt.placement, constraints=None)
            )
        return tt, ep

    if without_constraints(new_spec) != without_constraints(current.spec):
        return False
    wanted = constraint.parse(_placement_constraints(new_spec))
    for t in tx.tasks_of_service(current.id):
        if t.desired > TaskState.RUNNING:
            continue
        node = tx.get_node(t.node_id) if t.node_id else None
        if node is None or not constraint.matches_all(wanted, node):
            return False
    return True


async def update_service(
    store: Store,
    ref: str,
    version: int,
    spec: ServiceSpec,
    rollback: bool = False,
    registry_auth: str | None = None,
) -> Service:
    """`POST /services/{id}/update?version=N[&rollback=previous]`. Without a new
    `registry_auth` the service keeps the credentials it had (as dockerd does)."""

    def write(tx: Tx) -> Service:
        current = resolve_service(tx, ref)
        if current.version.index != version:
            raise OutOfSequence()
        if rollback:
            if current.previous_spec is None:
                raise FailedPrecondition(
                    "rpc error: code = FailedPrecondition desc = "
                    f"service {current.id} does not have a previous spec"
                )
            out = rollback_service(tx, current.id, "manually requested rollback")
            assert out is not None
            return out
        new_spec = validate(msgspec.structs.replace(spec, name=spec.name or current.spec.name))
        new_spec = resolve_attachments(tx, new_spec)
        if new_spec.name != current.spec.name:
            if _name_taken(tx, new_spec.name or "", except_id=current.id):
                raise _name_conflict(new_spec.name or "")
        old_kind = current.spec.mode.kind if current.spec.mode else "replicated"
        new_kind = new_spec.mode.kind if new_spec.mode else "replicated"
        if old_kind != new_kind:
            raise invalid_argument("service mode change is not allowed")
        check_references(tx, msgspec.structs.replace(current, spec=new_spec))
        if new_spec.endpoint_spec != current.spec.endpoint_spec:
            check_port_conflicts(tx, new_spec, current.id)
        meta = tx.service_meta(current.id)
        if _task_relevant(new_spec) != _task_relevant(
            current.spec
        ) and not _constraints_only_change_still_met(tx, current, new_spec):
            meta = msgspec.structs.replace(meta, spec_version=tx.index)
        if registry_auth:
            meta = msgspec.structs.replace(meta, registry_auth=registry_auth)
        job_status = current.job_status
        if job_status is not None:  # every update of a job runs it again (SwarmKit)
            job_status = _job_status(job_status.job_iteration.index + 1)
        return tx.update(
            msgspec.structs.replace(
                current,
                spec=new_spec,
                previous_spec=current.spec,
                update_status=None,
                job_status=job_status,
            ),
            meta,
        )

    return await store.update(write)


async def remove_service(store: Store, ref: str) -> None:
    await store.update(lambda tx: tx.delete("service", resolve_service(tx, ref).id))


def resolve_service(tx: ReadTx, ref: str) -> Service:
    """A service by full ID, exact name, or unique ID prefix (as dockerd resolves them)."""
    s = tx.get_service(ref)
    if s is not None:
        return s
    services = tx.services()
    for s in services:
        if s.spec.name == ref:
            return s
    matches = [s for s in services if s.id.startswith(ref)] if ref else []
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise invalid_argument(f"service {ref} is ambiguous ({len(matches)} matches found)")
    raise NotFound(f"service {ref} not found")


def container_spec(service: Service) -> ContainerSpec:
    tt = service.spec.task_template
    return tt.container_spec if tt and tt.container_spec else ContainerSpec()
