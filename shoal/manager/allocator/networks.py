"""What the allocator gives networks, services and tasks, inside its transactions:

- a network: its subnet (the one asked for, or the first free one of the cluster's
  pools, `SubnetSize` long), its gateway (the subnet's first address unless one was
  asked for) and a VXLAN ID (4096 upward, unique), as DriverState and IPAMOptions;
- a service: a virtual IP on each network it is attached to (and on `ingress` when it
  publishes ports in ingress mode), unless its endpoint mode is dnsrr;
- a task: an address on each of those networks, in its NetworksAttachments (with a
  copy of the network), before it leaves NEW.

Every address is taken from the `AddressBook` into the transaction's `Draft`, applied
to the book once the transaction committed (see ipam.py).
"""

from __future__ import annotations

import msgspec

from shoal.log import get_logger
from shoal.manager.allocator import ipam
from shoal.manager.controlapi.networks import (
    DEFAULT_IPAM,
    OVERLAY,
    ingress_network,
    publishes_ingress,
)
from shoal.manager.store import ReadTx, Tx
from shoal.types.network import (
    VXLAN_ID_OPTION,
    Driver,
    IPAMConfig,
    IPAMOptions,
    Network,
    NetworkAttachment,
)
from shoal.types.service import Service, ServiceSpec, VirtualIP
from shoal.types.task import Task, TaskState

log = get_logger("shoal.manager.allocator")


def is_allocated(n: Network) -> bool:
    return n.subnet is not None and n.vxlan_id is not None


def pools(tx: ReadTx) -> tuple[list[str], int]:
    cluster = tx.cluster()
    pool = (cluster.default_addr_pool if cluster else None) or [ipam.DEFAULT_ADDR_POOL]
    size = (cluster.subnet_size if cluster else 0) or ipam.DEFAULT_SUBNET_SIZE
    return pool, size


def allocate_network(tx: Tx, book: ipam.AddressBook, network_id: str) -> bool:
    """Give a network its subnet, gateway and VXLAN ID; True when it has them now."""
    n = tx.get_network(network_id)
    if n is None:
        return False
    if is_allocated(n):
        if not book.has(n.id):
            _add(book, n)
        return True
    others = [o for o in tx.networks() if o.id != n.id]
    asked = next(iter((n.spec.ipam_options or IPAMOptions()).configs or ()), None)
    try:
        if asked is not None and asked.subnet:
            subnet = ipam.parse_subnet(asked.subnet)
        else:
            taken = []
            for o in others:
                o_asked = (o.spec.ipam_options or IPAMOptions()).configs or ()
                for text in (o.subnet, *(c.subnet for c in o_asked)):
                    if text:
                        taken.append(ipam.parse_subnet(text))
            pool, size = pools(tx)
            subnet = ipam.pick_subnet(pool, size, taken)
        vxlan = ipam.pick_vxlan({v for o in others if (v := o.vxlan_id) is not None})
    except ipam.PoolExhausted as e:
        log.error("network not allocated", network=n.spec.name, error=str(e))
        return False
    gateway = asked.gateway if asked is not None and asked.gateway else ipam.gateway_of(subnet)
    allocated = msgspec.structs.replace(
        n,
        driver_state=Driver(name=OVERLAY, options={VXLAN_ID_OPTION: str(vxlan)}),
        ipam_options=IPAMOptions(
            driver=Driver(name=DEFAULT_IPAM),
            configs=[
                IPAMConfig(
                    subnet=str(subnet),
                    range=asked.range if asked is not None else None,
                    gateway=gateway,
                )
            ],
        ),
    )
    tx.update(allocated)
    _add(book, allocated)
    return True


def _add(book: ipam.AddressBook, n: Network) -> None:
    configs = (n.ipam_options or IPAMOptions()).configs or [IPAMConfig()]
    assert n.subnet is not None
    book.add_network(n.id, n.subnet, n.gateway, configs[0].range)


def wanted_networks(tx: ReadTx, spec: ServiceSpec, networks: list[str]) -> list[str]:
    """The networks a service's (or one task's) attachments are on: ingress first when
    it publishes ports in ingress mode, then its own."""
    out = []
    if publishes_ingress(spec):
        ingress = ingress_network(tx)
        if ingress is not None:
            out.append(ingress.id)
    return out + [n for n in networks if n not in out]


def spec_networks(spec: ServiceSpec) -> list[str]:
    tt = spec.task_template
    configs = (tt.networks if tt and tt.networks else spec.networks) or []
    return [c.target for c in configs if c.target]


def service_vips(
    tx: ReadTx, book: ipam.AddressBook, draft: ipam.Draft, s: Service
) -> tuple[list[VirtualIP] | None, bool]:
    """The service's virtual IPs after this change: kept on networks it stays on, new
    on networks it joined, given back on networks it left (or all, for dnsrr); and
    whether one is missing for want of an address (the service is tried again when
    addresses are freed)."""
    ep = s.spec.endpoint_spec
    vip_mode = (ep.mode if ep and ep.mode else "vip") == "vip"
    wanted = wanted_networks(tx, s.spec, spec_networks(s.spec)) if vip_mode else []
    current = {v.network_id: v for v in s.endpoint.virtual_ips or () if v.network_id and v.addr}
    out: list[VirtualIP] = []
    missing = False
    for net in wanted:
        have = current.pop(net, None)
        if have is not None and have.addr and book.owned(draft, net, have.addr, s.id):
            out.append(have)
            continue
        if not book.has(net):
            continue  # not allocated yet: its network's allocation brings the service back
        try:
            out.append(VirtualIP(network_id=net, addr=book.take(draft, net, s.id)))
        except ipam.PoolExhausted as e:
            missing = True
            log.warning("no virtual IP for a service yet", service=s.spec.name, error=str(e))
    for v in current.values():
        assert v.network_id is not None and v.addr is not None
        book.release(draft, v.network_id, v.addr, s.id)
    return out or None, missing


def release_service(book: ipam.AddressBook, draft: ipam.Draft, s: Service) -> None:
    for v in s.endpoint.virtual_ips or ():
        if v.network_id and v.addr:
            book.release(draft, v.network_id, v.addr, s.id)


def task_attachments(
    tx: ReadTx, book: ipam.AddressBook, draft: ipam.Draft, t: Task
) -> list[NetworkAttachment] | str:
    """A new task's attachments, its addresses taken; or why it must wait (a message)."""
    service = tx.get_service(t.service_id)
    targets = [c.target for c in t.spec.networks or () if c.target]
    spec = service.spec if service is not None else ServiceSpec()
    nets = wanted_networks(tx, spec, targets)
    out: list[NetworkAttachment] = []
    taken = 0
    for net in nets:
        n = tx.get_network(net)
        if n is None or not book.has(net):
            draft.undo_taken(taken)
            return f"waiting for network {net} to be allocated"
        try:
            addr = book.take(draft, net, t.id)
        except ipam.PoolExhausted:
            draft.undo_taken(taken)
            return (
                f"no IP address available on network {n.spec.name} ({n.subnet}): the "
                "task waits for one to be freed"
            )
        taken += 1
        # no Aliases: dockerd shows none on a task's attachment (the service's aliases
        # reach the nodes as its ServiceEndpoint's)
        out.append(NetworkAttachment(network=n, addresses=[addr]))
    return out


def is_dead(t: Task) -> bool:
    """Done with its addresses: stopped, and not to run again (SwarmKit's taskDead)."""
    return t.state > TaskState.RUNNING and t.desired > TaskState.RUNNING


def release_task(book: ipam.AddressBook, draft: ipam.Draft, t: Task) -> None:
    for att in t.networks_attachments or ():
        for addr in att.addresses or ():
            book.release(draft, att.network.id, addr, t.id)


def rebuild(tx: ReadTx) -> ipam.AddressBook:
    """The book as the store shows it: every allocated network, every service's VIPs,
    every live task's addresses."""
    book = ipam.AddressBook()
    for n in tx.networks():
        if is_allocated(n):
            _add(book, n)
    for s in tx.services():
        for v in s.endpoint.virtual_ips or ():
            if v.network_id and v.addr:
                book.mark(v.network_id, v.addr, s.id)
    for t in tx.tasks():
        if t.networks_attachments and not is_dead(t):
            for att in t.networks_attachments:
                for addr in att.addresses or ():
                    book.mark(att.network.id, addr, t.id)
    return book
