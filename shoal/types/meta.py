"""What shoal keeps about a service or a task beside its Docker object.

Docker's `Service` and `Task` (shoal/types/service.py, task.py) hold Docker's fields
only, so whatever the API encodes from them is Docker's shape by construction. What
only shoal needs lives here, in its own structs: the store keeps one beside each
service and task (in the same record, written in the same transaction), and the
dispatcher sends an agent the part of it the agent needs beside each task. Nothing here
is ever a field of a Docker object, so there is no list of fields to strip.
"""

from __future__ import annotations

from typing import Any

import msgspec

from shoal.types.network import PortMapping


class ServiceMeta(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    # The version of Spec the tasks are built from, bumped on every change that needs
    # new tasks (SwarmKit's SpecVersion): the updater and the `_up-to-date` filter.
    spec_version: int = 0
    # X-Registry-Auth of the last create/update that sent one (dockerd keeps it in
    # ContainerSpec.PullOptions): copied to new tasks for the agent's image pulls.
    registry_auth: str | None = None


class TaskMeta(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """Set when the task is made and never changed."""

    # The spec version of the service the task was made from.
    spec_version: int = 0
    # The service's name, which agents need (container names, labels) without reading
    # services, and which outlives the service.
    service_name: str = ""
    registry_auth: str | None = None
    # The cluster's TaskDefaults.LogDriver when the task was made, for a service with no
    # LogDriver of its own (SwarmKit's Task.LogDriver, which Docker's API does not show).
    default_log_driver: dict[str, Any] | None = None
    # The service's ports published in host mode when the task was made (SwarmKit keeps
    # them in Task.Endpoint, which Docker's API does not show; a change of them makes new
    # tasks): the scheduler's host-port filter and the task's node, which binds them.
    # `published` 0: none asked, the node picks one. A tuple: the store holds 100k
    # tasks, and a list each (even empty) is an object the garbage collector walks at
    # every full collection, the event loop stopped.
    host_ports: tuple[PortMapping, ...] = ()


NO_SERVICE_META = ServiceMeta()
NO_TASK_META = TaskMeta()


class RootRotation(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """A root CA rotation in progress (SwarmKit's `RootCA.RootRotation`): the new root,
    its key, and the new root's certificate signed by the old root, the intermediate
    that lets nodes still trusting only the old root accept certificates of the new."""

    ca_cert: str
    ca_key: str
    cross_signed_ca_cert: str


class ClusterMeta(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """What shoal keeps beside the Cluster: the CA's private state (the store is
    encrypted at rest, as SwarmKit's raft log holds the root key)."""

    # The current root's key; "" for a swarm whose key lives only in the manager's
    # certificates directory (every swarm until its first rotation).
    root_key: str = ""
    rotation: RootRotation | None = None
    # SwarmKit's LastForcedRotation: the Spec.CAConfig.ForceRotate last acted on.
    last_forced_rotation: int = 0
    # SwarmKit's BlacklistedCertificates: removed node ID -> when (unix ns) the last
    # certificate it could hold has expired; refused at the cluster port's handshake.
    removed_nodes: dict[str, int] = msgspec.field(default_factory=dict)


NO_CLUSTER_META = ClusterMeta()
