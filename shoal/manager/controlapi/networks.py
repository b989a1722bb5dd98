"""Swarm network operations behind the API (`docker network create|ls|inspect|rm`), as
dockerd and SwarmKit's control API do them: the request checked, then one store
transaction each. The allocator gives each network its subnet (unless one was asked
for) and VXLAN ID right after it is created (dockerd's `network update` event).

Only the overlay driver is supported: shoal has no local networks.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import msgspec

from shoal.errors import Conflict, FailedPrecondition, NotFound, PermissionDenied, invalid_argument
from shoal.ids import new_id
from shoal.manager.allocator import ipam
from shoal.manager.store import ReadTx, Store, Tx
from shoal.types.base import Model
from shoal.types.network import Driver, IPAMConfig, IPAMOptions, Network, NetworkSpec
from shoal.types.service import NetworkAttachmentConfig, Service, ServiceSpec

OVERLAY = "overlay"
DEFAULT_IPAM = "default"
SCOPE_SWARM = "swarm"
INGRESS_NAME = "ingress"
# The names dockerd keeps for its local networks (runconfig.IsPreDefinedNetwork).
PREDEFINED = ("bridge", "host", "none", "default")
INTERNAL_LABEL = "com.docker.swarm.internal"
# The overlay driver's option for an IPsec-encrypted data path (`--opt encrypted`).
ENCRYPTED_OPTION = "encrypted"


class IPAMConfigRequest(Model, frozen=True):
    subnet: str | None = None
    ip_range: str | None = msgspec.field(default=None, name="IPRange")
    gateway: str | None = None
    aux_address: dict[str, str] | None = None


class IPAMRequest(Model, frozen=True):
    driver: str | None = None
    options: dict[str, str] | None = None
    config: list[IPAMConfigRequest] | None = None


class ConfigReference(Model, frozen=True):
    network: str | None = None


class NetworkCreateRequest(Model, frozen=True):
    """`POST /networks/create` (dockerd's types.NetworkCreateRequest)."""

    name: str | None = None
    check_duplicate: bool | None = None
    driver: str | None = None
    scope: str | None = None
    enable_i_pv6: bool | None = msgspec.field(default=None, name="EnableIPv6")
    ipam: IPAMRequest | None = msgspec.field(default=None, name="IPAM")
    internal: bool | None = None
    attachable: bool | None = None
    ingress: bool | None = None
    config_only: bool | None = None
    config_from: ConfigReference | None = None
    options: dict[str, str] | None = None
    labels: dict[str, str] | None = None


def _spec(req: NetworkCreateRequest) -> NetworkSpec:
    """The request as SwarmKit keeps it (dockerd's BasicNetworkCreateToGRPC), checked."""
    name = req.name or ""
    if not name:
        raise invalid_argument("name must be provided")
    if name in PREDEFINED:
        raise PermissionDenied(f"{name} is a pre-defined network and cannot be created")
    driver = req.driver or "bridge"  # what dockerd assumes when none is named
    if driver != OVERLAY:
        raise invalid_argument(
            f"network driver {driver!r} is not supported: swarm networks use the overlay "
            "driver (docker network create --driver overlay)"
        )
    if req.scope not in (None, "", SCOPE_SWARM):
        raise invalid_argument(f"network scope {req.scope!r} is not supported: only swarm")
    if req.config_only or (req.config_from and req.config_from.network):
        raise invalid_argument("config-only networks are not supported")
    if req.enable_i_pv6:
        raise invalid_argument("IPv6 is not supported on swarm networks")
    if ENCRYPTED_OPTION in (req.options or {}):
        raise invalid_argument(
            "the overlay driver's encrypted option is not supported: shoal does not encrypt "
            "the data path (IPsec)"
        )
    labels = dict(req.labels or {})
    if INTERNAL_LABEL in labels:
        raise PermissionDenied(
            f"label {INTERNAL_LABEL} is for predefined internal networks and cannot be "
            "applied by users"
        )
    ipam_req = req.ipam or IPAMRequest()  # none: the spec has no IPAMOptions (dockerd)
    if ipam_req.driver not in (None, "", DEFAULT_IPAM):
        raise invalid_argument("invalid IPAM specified")
    configs: list[IPAMConfig] = []
    for c in ipam_req.config or []:
        if not c.subnet:
            raise invalid_argument("ipam configuration: a subnet must be given")
        net = ipam.parse_subnet(c.subnet)
        rng = ipam.parse_subnet(c.ip_range) if c.ip_range else None
        if rng is not None:
            if not rng.subnet_of(net):
                raise invalid_argument(
                    f"ipam configuration: subnet {c.subnet} does not contain range {c.ip_range}"
                )
        if c.gateway:
            ipam.check_gateway(net, c.subnet, c.gateway)
        configs.append(
            IPAMConfig(subnet=str(net), range=str(rng) if rng else None, gateway=c.gateway)
        )
    if len(configs) > 1:
        raise invalid_argument("only one subnet per swarm network is supported")
    return NetworkSpec(
        name=name,
        labels=labels,
        driver_configuration=Driver(name=OVERLAY, options=req.options or None),
        internal=req.internal or None,
        attachable=req.attachable or None,
        ingress=req.ingress or None,
        ipam_options=IPAMOptions(
            driver=Driver(name=DEFAULT_IPAM, options=ipam_req.options or None),
            configs=configs or None,
        )
        if req.ipam is not None
        else None,
        scope=SCOPE_SWARM,
    )


def taken_subnets(tx: ReadTx, except_id: str = "") -> list[tuple[str, ipaddress.IPv4Network]]:
    """(network name, subnet) of every network's asked-for or allocated subnet."""
    out = []
    for n in tx.networks():
        if n.id == except_id:
            continue
        for text in (
            n.subnet,
            *(c.subnet for c in (n.spec.ipam_options or IPAMOptions()).configs or ()),
        ):
            if text:
                net = ipaddress.ip_network(text, strict=False)
                assert isinstance(net, ipaddress.IPv4Network)
                out.append((n.spec.name or n.id, net))
    return out


def ingress_network(tx: ReadTx) -> Network | None:
    return next((n for n in tx.networks() if n.spec.ingress), None)


def create_in(tx: Tx, spec: NetworkSpec) -> Network:
    """Write a checked spec (also used by `swarm init` for the ingress network)."""
    name = spec.name or ""
    if any(n.spec.name == name for n in tx.networks()):
        raise Conflict(f"network with name {name} already exists")
    if spec.ingress:
        existing = ingress_network(tx)
        if existing is not None:
            raise Conflict(
                "rpc error: code = AlreadyExists desc = ingress network "
                f"({existing.id}) is already present"
            )
    for c in (spec.ipam_options or IPAMOptions()).configs or ():
        assert c.subnet is not None
        mine = ipaddress.ip_network(c.subnet, strict=False)
        for other_name, other in taken_subnets(tx):
            if mine.overlaps(other):
                raise invalid_argument(
                    f"ipam configuration: subnet {c.subnet} overlaps with network "
                    f"{other_name}'s subnet {other}"
                )
    return tx.create(Network(id=new_id(), spec=spec))


async def create(store: Store, req: NetworkCreateRequest) -> Network:
    spec = _spec(req)
    return await store.update(lambda tx: create_in(tx, spec))


def ingress_spec() -> NetworkSpec:
    """The `ingress` network `swarm init` creates (dockerd's shape of it)."""
    return NetworkSpec(
        name=INGRESS_NAME,
        labels={},
        driver_configuration=Driver(),
        ingress=True,
        ipam_options=IPAMOptions(driver=Driver()),
        scope=SCOPE_SWARM,
    )


def resolve(tx: ReadTx, ref: str) -> Network:
    """A network by full ID, exact name, or unique ID prefix (as dockerd)."""
    n = tx.get_network(ref)
    if n is not None:
        return n
    networks = tx.networks()
    for n in networks:
        if n.spec.name == ref:
            return n
    matches = [n for n in networks if n.id.startswith(ref)] if ref else []
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise invalid_argument(f"network {ref} is ambiguous ({len(matches)} matches found)")
    raise NotFound(f"network {ref} not found")


def service_networks(spec: ServiceSpec) -> list[NetworkAttachmentConfig]:
    """The networks a service's tasks attach to (TaskTemplate.Networks, or the
    deprecated top-level Networks)."""
    tt = spec.task_template
    return list((tt.networks if tt and tt.networks else spec.networks) or [])


def publishes_ingress(spec: ServiceSpec) -> bool:
    """A port published in ingress mode: the service needs the ingress network."""
    ep = spec.endpoint_spec
    return any((p.publish_mode or "ingress") == "ingress" for p in (ep.ports if ep else None) or ())


def users(tx: ReadTx, network_id: str) -> list[Service]:
    return [
        s for s in tx.services() if any(a.target == network_id for a in service_networks(s.spec))
    ]


async def remove(store: Store, ref: str) -> None:
    def write(tx: Tx) -> None:
        n = resolve(tx, ref)
        if n.spec.ingress:  # SwarmKit's removeIngressNetwork
            for s in tx.services():
                if publishes_ingress(s.spec):
                    raise FailedPrecondition(
                        "rpc error: code = FailedPrecondition desc = ingress network cannot "
                        f"be removed because service {s.id} depends on it"
                    )
        using = users(tx, n.id)
        if using:
            raise FailedPrecondition(
                "rpc error: code = FailedPrecondition desc = network "
                f"{n.id} is in use by service {using[0].id}"
            )
        if INTERNAL_LABEL in (n.spec.labels or {}):
            raise PermissionDenied(f"{n.id} is a pre-defined network and cannot be removed")
        tx.delete("network", n.id)

    await store.update(write)


def resolve_attachments(tx: ReadTx, spec: ServiceSpec) -> ServiceSpec:
    """A service's networks with each Target the network's ID (clients send an ID, a
    name — `docker stack deploy` — or a prefix), as dockerd stores them; the deprecated
    top-level Networks moved into the task template. An unknown network: dockerd's
    404."""
    configs = service_networks(spec)
    if not configs:
        return spec
    out: list[NetworkAttachmentConfig] = []
    seen: set[str] = set()
    for c in configs:
        try:
            n = resolve(tx, c.target or "")
        except NotFound as e:
            raise NotFound(f"network {c.target} not found") from e
        if n.spec.ingress:
            raise invalid_argument(
                f'service cannot be explicitly attached to the ingress network "{n.spec.name}"'
            )
        if n.id in seen:
            raise invalid_argument(f"service attached to network {n.spec.name} more than once")
        seen.add(n.id)
        out.append(msgspec.structs.replace(c, target=n.id))
    tt = spec.task_template
    assert tt is not None
    return msgspec.structs.replace(
        spec, networks=None, task_template=msgspec.structs.replace(tt, networks=out)
    )


def network_resource(n: Network) -> dict[str, Any]:
    """dockerd's NetworkResource for a swarm network (convert.BasicNetworkFromGRPC)."""
    allocated = n.ipam_options or n.spec.ipam_options or IPAMOptions()
    driver = allocated.driver or Driver()
    state = n.driver_state
    return {
        "Name": n.spec.name or "",
        "Id": n.id,
        "Created": n.created_at,
        "Scope": SCOPE_SWARM,
        "Driver": state.name if state and state.name else "",
        "EnableIPv6": bool(n.spec.ipv6_enabled),
        "IPAM": {
            "Driver": driver.name or "",
            "Options": driver.options or None,
            "Config": [
                {
                    k: v
                    for k, v in (("Subnet", c.subnet), ("IPRange", c.range), ("Gateway", c.gateway))
                    if v
                }
                for c in allocated.configs or []
            ],
        },
        "Internal": bool(n.spec.internal),
        "Attachable": bool(n.spec.attachable),
        "Ingress": bool(n.spec.ingress),
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": False,
        "Containers": None,
        "Options": (state.options if state else None),
        "Labels": n.spec.labels or None,
    }
