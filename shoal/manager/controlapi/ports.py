"""Published ports at the control API: a port another service already publishes is
refused (SwarmKit's controlapi `checkPortConflicts`, word for word).

Ports are (protocol, published port) pairs. A port published in ingress mode is taken
cluster-wide, in either mode; two services may publish the same port in host mode (the
scheduler keeps their tasks apart, filters.HostPortFilter). Both a service's spec and
its allocated `Endpoint.Ports` (ports given from 30000–32767) count, as in SwarmKit.
"""

from __future__ import annotations

from shoal.errors import invalid_argument
from shoal.manager.store import ReadTx
from shoal.types.service import EndpointPortConfig, Service, ServiceSpec

INGRESS = "ingress"
HOST = "host"


def port_key(p: EndpointPortConfig) -> tuple[str, int]:
    return (p.protocol or "tcp", p.published_port or 0)


def port_mode(p: EndpointPortConfig) -> str:
    return p.publish_mode or INGRESS


def check_port_conflicts(tx: ReadTx, spec: ServiceSpec, service_id: str = "") -> None:
    """Raise Docker's InvalidArgument when `spec` publishes a port another service (not
    `service_id`, the one being updated) holds; read-only."""
    ep = spec.endpoint_spec
    ingress: set[tuple[str, int]] = set()
    host: set[tuple[str, int]] = set()
    for p in (ep.ports if ep else None) or ():
        if p.published_port:
            (ingress if port_mode(p) == INGRESS else host).add(port_key(p))
    if not ingress and not host:
        return
    for s in tx.services():
        if s.id == service_id:
            continue
        for p in _ports_of(s):
            if not p.published_port:
                continue
            key = port_key(p)
            if port_mode(p) == HOST:
                if key in ingress:
                    raise _in_use(p, s, "a host-published port")
            elif key in ingress or key in host:
                raise _in_use(p, s, "an ingress port")


def _ports_of(s: Service) -> list[EndpointPortConfig]:
    ep = s.spec.endpoint_spec
    return [*((ep.ports if ep else None) or ()), *(s.endpoint.ports or ())]


def _in_use(p: EndpointPortConfig, s: Service, how: str) -> Exception:
    return invalid_argument(
        f"port '{p.published_port}' is already in use by service '{s.spec.name}' ({s.id}) as {how}"
    )
