"""Service defaults, as SwarmKit's api/defaults fills them in for `insertDefaults=true`."""

from __future__ import annotations

import msgspec

from shoal.manager.orchestrator.restart import DEFAULT_RESTART_CONDITION, DEFAULT_RESTART_DELAY_NS
from shoal.manager.orchestrator.update import (
    DEFAULT_FAILURE_ACTION,
    DEFAULT_MAX_FAILURE_RATIO,
    DEFAULT_MONITOR_NS,
    DEFAULT_ORDER,
    DEFAULT_PARALLELISM,
)
from shoal.types.service import (
    ContainerSpec,
    EndpointSpec,
    Limit,
    Placement,
    ResourceObject,
    Resources,
    RestartPolicy,
    ServiceSpec,
    TaskSpec,
    UpdateConfig,
)

DEFAULT_STOP_GRACE_PERIOD_NS = 10_000_000_000
DEFAULT_ENDPOINT_MODE = "vip"


def _merge(value: msgspec.Struct | None, default: msgspec.Struct) -> msgspec.Struct:
    """Fill the unset fields of `value` from `default`."""
    if value is None:
        return default
    changes = {
        f: getattr(default, f)
        for f in default.__struct_fields__
        if getattr(value, f) is None and getattr(default, f) is not None
    }
    return msgspec.structs.replace(value, **changes) if changes else value


DEFAULT_UPDATE = UpdateConfig(
    parallelism=DEFAULT_PARALLELISM,
    failure_action=DEFAULT_FAILURE_ACTION,
    monitor=DEFAULT_MONITOR_NS,
    max_failure_ratio=DEFAULT_MAX_FAILURE_RATIO,
    order=DEFAULT_ORDER,
)


def insert_defaults(spec: ServiceSpec) -> ServiceSpec:
    tt = spec.task_template or TaskSpec()
    cs = _merge(tt.container_spec, ContainerSpec(stop_grace_period=DEFAULT_STOP_GRACE_PERIOD_NS))
    tt = msgspec.structs.replace(
        tt,
        container_spec=cs,
        resources=_merge(tt.resources, Resources(limits=Limit(), reservations=ResourceObject())),
        restart_policy=_merge(
            tt.restart_policy,
            RestartPolicy(
                condition=DEFAULT_RESTART_CONDITION, delay=DEFAULT_RESTART_DELAY_NS, max_attempts=0
            ),
        ),
        placement=tt.placement or Placement(),
    )
    # A job has no update or rollback config (SwarmKit refuses one): none is made up.
    job = spec.mode is not None and spec.mode.kind.endswith("-job")
    return msgspec.structs.replace(
        spec,
        task_template=tt,
        update_config=spec.update_config if job else _merge(spec.update_config, DEFAULT_UPDATE),
        rollback_config=(
            spec.rollback_config if job else _merge(spec.rollback_config, DEFAULT_UPDATE)
        ),
        endpoint_spec=_merge(spec.endpoint_spec, EndpointSpec(mode=DEFAULT_ENDPOINT_MODE)),
    )
