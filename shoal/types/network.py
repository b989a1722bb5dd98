"""Swarm networks as SwarmKit keeps them, and what the dispatcher tells a node about them.

`Network` is the swarm object (SwarmKit's api.Network, the shape Docker shows inside a
task's `NetworksAttachments`); `GET /networks` answers dockerd's NetworkResource shape,
built from it in the API layer. `NetworkAttachment` is one entry of a task's
`NetworksAttachments`: the network as it was when the task was allocated, and the task's
addresses on it (CIDR form, `10.0.1.3/24`).

The rest is the agent's view, sent by the dispatcher beside assignments (see
`Assignment.network`): each node learns only the networks its own tasks attach to, and for
each such network which node hosts which task address (for the VXLAN forwarding entries)
and which services answer which names (for DNS). Peers come from the manager, not from
gossip.
"""

from __future__ import annotations

import msgspec

from shoal.types.base import Model, Version

# Driver options Docker shows on an overlay network: its VXLAN ID.
VXLAN_ID_OPTION = "com.docker.network.driver.overlay.vxlanid_list"


class Driver(Model):
    name: str | None = None
    options: dict[str, str] | None = None


class IPAMConfig(Model):
    subnet: str | None = None
    range: str | None = None
    gateway: str | None = None


class IPAMOptions(Model):
    driver: Driver | None = None
    configs: list[IPAMConfig] | None = None


class NetworkSpec(Model):
    name: str | None = None
    labels: dict[str, str] | None = None
    driver_configuration: Driver | None = None
    ipv6_enabled: bool | None = msgspec.field(default=None, name="Ipv6Enabled")
    internal: bool | None = None
    attachable: bool | None = None
    ingress: bool | None = None
    ipam_options: IPAMOptions | None = msgspec.field(default=None, name="IPAMOptions")
    scope: str | None = None


class Network(Model):
    id: str = msgspec.field(name="ID")
    version: Version = Version()
    created_at: str = ""
    updated_at: str = ""
    spec: NetworkSpec = NetworkSpec()
    # Filled by the allocator: the driver's state (its VXLAN ID) and the subnet it got.
    driver_state: Driver | None = None
    ipam_options: IPAMOptions | None = msgspec.field(default=None, name="IPAMOptions")

    @property
    def vxlan_id(self) -> int | None:
        opts = (self.driver_state and self.driver_state.options) or {}
        raw = opts.get(VXLAN_ID_OPTION)
        return int(raw.split(",")[0]) if raw else None

    @property
    def subnet(self) -> str | None:
        """The allocated subnet, CIDR (`10.0.1.0/24`)."""
        configs = (self.ipam_options and self.ipam_options.configs) or []
        return configs[0].subnet if configs else None

    @property
    def gateway(self) -> str | None:
        configs = (self.ipam_options and self.ipam_options.configs) or []
        return configs[0].gateway if configs else None


class NetworkAttachment(Model):
    """One entry of a task's `NetworksAttachments`."""

    network: Network
    addresses: list[str] | None = None
    # The service's aliases on this network (`--network name=N,alias=A`).
    aliases: list[str] | None = None


# ---- what the dispatcher sends a node about the networks its tasks attach to ----


class NetworkPeer(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """One task's address on one network, and where that task runs."""

    network_id: str
    task_id: str
    node_id: str
    node_addr: str  # the hosting node's underlay address (its Status.Addr)
    addr: str  # the task's address on the network, without prefix length ("10.0.1.3")
    service_id: str = ""
    service_name: str = ""
    task_name: str = ""  # "<service>.<slot>.<task id>" (or "<service>.<node id>.<task id>")
    running: bool = False  # answered by DNS only while running

    @property
    def key(self) -> str:
        return f"{self.network_id}/{self.task_id}"


class PortMapping(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """One of a service's published ports (its `Endpoint.Ports` entry, allocated)."""

    protocol: str = "tcp"  # "tcp" | "udp"
    target: int
    published: int
    mode: str = "ingress"  # "ingress" | "host"


class ServiceEndpoint(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """A service's names on one network: its name and aliases resolve to `vip`, or (no
    VIP: `--endpoint-mode dnsrr`) to its running tasks' addresses. On the ingress
    network, `ports` are the service's published ports the routing mesh serves."""

    network_id: str
    service_id: str
    service_name: str
    vip: str | None = None  # without prefix length
    aliases: list[str] = []
    ports: list[PortMapping] = []

    @property
    def key(self) -> str:
        return f"{self.network_id}/{self.service_id}"


class NetworkUpdate(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """A change to a node's network view. The first one of a session is complete
    (`full`, with the assignment's `full`); later ones carry only what changed. Keys of
    removed peers and endpoints are their `.key`."""

    full: bool = False
    networks: list[Network] = []
    removed_networks: list[str] = []
    peers: list[NetworkPeer] = []
    removed_peers: list[str] = []
    endpoints: list[ServiceEndpoint] = []
    removed_endpoints: list[str] = []
    # The cluster's VXLAN UDP port (`swarm init --data-path-port`, 4789 by default): set
    # in full updates, 0 in the others (it cannot change once the swarm exists).
    data_path_port: int = 0

    def empty(self) -> bool:
        return not (
            self.full
            or self.networks
            or self.removed_networks
            or self.peers
            or self.removed_peers
            or self.endpoints
            or self.removed_endpoints
        )
