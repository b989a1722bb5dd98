"""Services: ServiceSpec (user intent, never changed by the system) and Service."""

from __future__ import annotations

from typing import Any

import msgspec

from shoal.types.base import Duration, GoInt, Int64, Model, UInt32, UInt64, Version

# Opaque sub-objects shoal stores and returns verbatim but does not interpret yet.
Raw = dict[str, Any]


class HealthConfig(Model):
    test: list[str] | None = None
    interval: Duration | None = None
    timeout: Duration | None = None
    retries: GoInt | None = None
    start_period: Duration | None = None


class SecretReference(Model):
    file: Raw | None = None
    secret_id: str | None = msgspec.field(default=None, name="SecretID")
    secret_name: str | None = None


class ConfigReference(Model):
    file: Raw | None = None
    runtime: Raw | None = None
    config_id: str | None = msgspec.field(default=None, name="ConfigID")
    config_name: str | None = None


class Privileges(Model):
    """dockerd 20.10 always sends the first two, null when unset. The others are newer
    APIs' (the docker runtime applies them): sent only when set, so the `false` a newer
    CLI sends for `NoNewPrivileges` reads back as dockerd 20.10 answers, without it."""

    credential_spec: Raw | None = msgspec.field(default_factory=lambda: None)
    se_linux_context: Raw | None = msgspec.field(
        default_factory=lambda: None, name="SELinuxContext"
    )
    seccomp: Raw | None = None
    app_armor: Raw | None = msgspec.field(default=None, name="AppArmor")
    no_new_privileges: bool = False


class ContainerSpec(Model):
    image: str | None = None
    labels: dict[str, str] | None = None
    command: list[str] | None = None
    args: list[str] | None = None
    hostname: str | None = None
    env: list[str] | None = None
    dir: str | None = None
    user: str | None = None
    groups: list[str] | None = None
    privileges: Privileges | None = None
    tty: bool | None = msgspec.field(default=None, name="TTY")
    open_stdin: bool | None = None
    read_only: bool | None = None
    mounts: list[Raw] | None = None
    stop_signal: str | None = None
    stop_grace_period: Duration | None = None
    health_check: HealthConfig | None = msgspec.field(default=None, name="Healthcheck")
    hosts: list[str] | None = None
    dns_config: Raw | None = msgspec.field(default=None, name="DNSConfig")
    secrets: list[SecretReference] | None = None
    configs: list[ConfigReference] | None = None
    isolation: str | None = None
    init: bool | None = None
    sysctls: dict[str, str] | None = None
    capability_add: list[str] | None = None
    capability_drop: list[str] | None = None
    ulimits: list[Raw] | None = None


class ResourceObject(Model):
    nano_cpus: Int64 | None = msgspec.field(default=None, name="NanoCPUs")
    memory_bytes: Int64 | None = None
    generic_resources: list[Raw] | None = None


class Limit(Model):
    nano_cpus: Int64 | None = msgspec.field(default=None, name="NanoCPUs")
    memory_bytes: Int64 | None = None
    pids: Int64 | None = None


class Resources(Model):
    limits: Limit | None = None
    reservations: ResourceObject | None = None


class RestartPolicy(Model):
    condition: str | None = None
    delay: Duration | None = None
    max_attempts: UInt64 | None = None
    window: Duration | None = None


class Platform(Model):
    architecture: str | None = None
    os: str | None = msgspec.field(default=None, name="OS")


class SpreadOver(Model):
    spread_descriptor: str | None = None


class PlacementPreference(Model):
    spread: SpreadOver | None = None


class Placement(Model):
    constraints: list[str] | None = None
    preferences: list[PlacementPreference] | None = None
    max_replicas: UInt64 | None = None
    platforms: list[Platform] | None = None


class NetworkAttachmentConfig(Model):
    target: str | None = None
    aliases: list[str] | None = None
    driver_opts: dict[str, str] | None = None


class TaskSpec(Model):
    plugin_spec: Raw | None = None
    container_spec: ContainerSpec | None = None
    network_attachment_spec: Raw | None = None
    resources: Resources | None = None
    restart_policy: RestartPolicy | None = None
    placement: Placement | None = None
    force_update: UInt64 | None = None
    runtime: str | None = None
    networks: list[NetworkAttachmentConfig] | None = None
    log_driver: Raw | None = None


class ReplicatedService(Model):
    replicas: UInt64 | None = None


class GlobalService(Model):
    pass


class ReplicatedJob(Model):
    max_concurrent: UInt64 | None = None
    total_completions: UInt64 | None = None


class GlobalJob(Model):
    pass


class ServiceMode(Model):
    replicated: ReplicatedService | None = None
    global_: GlobalService | None = None
    replicated_job: ReplicatedJob | None = None
    global_job: GlobalJob | None = None

    @property
    def kind(self) -> str:
        """'replicated', 'global', 'replicated-job' or 'global-job'."""
        if self.global_ is not None:
            return "global"
        if self.replicated_job is not None:
            return "replicated-job"
        if self.global_job is not None:
            return "global-job"
        return "replicated"


class UpdateConfig(Model):
    parallelism: UInt64 | None = None
    delay: Duration | None = None
    failure_action: str | None = None
    monitor: Duration | None = None
    max_failure_ratio: float | None = None
    order: str | None = None


class EndpointPortConfig(Model):
    name: str | None = None
    protocol: str | None = None
    target_port: UInt32 | None = None
    published_port: UInt32 | None = None
    publish_mode: str | None = None


class EndpointSpec(Model):
    mode: str | None = None
    ports: list[EndpointPortConfig] | None = None


class ServiceSpec(Model):
    name: str | None = None
    labels: dict[str, str] | None = None
    task_template: TaskSpec | None = None
    mode: ServiceMode | None = None
    update_config: UpdateConfig | None = None
    rollback_config: UpdateConfig | None = None
    networks: list[NetworkAttachmentConfig] | None = None
    endpoint_spec: EndpointSpec | None = None

    def allocated_endpoint_spec(self) -> EndpointSpec:
        """The service's `Endpoint.Spec` as dockerd shows it: its EndpointSpec when it
        needs an endpoint (published ports, or a virtual IP on a network), else empty:
        SwarmKit's allocator gives no endpoint to any other service."""
        ep = self.endpoint_spec or EndpointSpec()
        networks = self.networks or (self.task_template and self.task_template.networks)
        if ep.ports or (networks and (ep.mode or "vip") == "vip"):
            return ep
        return EndpointSpec()


class VirtualIP(Model):
    network_id: str | None = msgspec.field(default=None, name="NetworkID")
    addr: str | None = None


class Endpoint(Model):
    spec: EndpointSpec = EndpointSpec()
    ports: list[EndpointPortConfig] | None = None
    virtual_ips: list[VirtualIP] | None = msgspec.field(default=None, name="VirtualIPs")


class UpdateStatus(Model):
    state: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    message: str | None = None


class ServiceStatus(Model):
    # No defaults: dockerd always sends all three, zeros included.
    running_tasks: int
    desired_tasks: int
    completed_tasks: int


class JobStatus(Model):
    """A job's execution: `JobIteration` grows by one each time the job runs again (an
    update of its spec); the tasks of a run carry its iteration."""

    job_iteration: Version  # always sent, `{}` at iteration 0, as dockerd does
    last_execution: str | None = None


class Service(Model):
    id: str = msgspec.field(name="ID")
    version: Version = Version()
    created_at: str = ""
    updated_at: str = ""
    spec: ServiceSpec = ServiceSpec()
    previous_spec: ServiceSpec | None = None
    endpoint: Endpoint = Endpoint()
    update_status: UpdateStatus | None = None
    service_status: ServiceStatus | None = None
    job_status: JobStatus | None = None


class JoinTokens(Model):
    worker: str = ""
    manager: str = ""
