"""Address management for swarm networks: subnets from the cluster's pools, VXLAN IDs,
and the addresses of service VIPs and task attachments within a network's subnet.

Pure functions over what the store holds, plus `AddressBook`: the allocator's index of
which address on which network is held by whom. The book is derived state only: it is
rebuilt from the store at every sweep (start, restart, resync), and the allocator
changes it only once the transaction that took or gave back an address committed (see
`Draft`), so it never holds what the store does not.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from shoal.errors import InvalidArgument, invalid_argument

# SwarmKit's first VXLAN ID (drivers/overlay/ovmanager: vxlanIDStart), and its last.
VXLAN_ID_START = 4096
VXLAN_ID_END = (1 << 24) - 1
DEFAULT_ADDR_POOL = "10.0.0.0/8"
DEFAULT_SUBNET_SIZE = 24
# dockerd's bounds (daemon/cluster: validateDefaultAddrPool, getDataPathPort).
MAX_SUBNET_SIZE = 29
DATA_PATH_PORT_RANGE = (1024, 49151)

Net = ipaddress.IPv4Network


class PoolExhausted(Exception):
    """No subnet, VXLAN ID or address is left."""


def parse_subnet(text: str) -> Net:
    """A network's subnet as SwarmKit checks it (`ipam configuration: invalid subnet`)."""
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError as e:
        raise invalid_argument(f"ipam configuration: invalid subnet {text}") from e
    if not isinstance(net, Net):
        raise invalid_argument(f"ipam configuration: invalid subnet {text}: IPv6 is not supported")
    if net.prefixlen > 30:
        raise invalid_argument(
            f"ipam configuration: invalid subnet {text}: a /{net.prefixlen} leaves no room "
            "for a gateway and an address"
        )
    return net


def check_gateway(net: Net, text: str, gateway: str) -> None:
    try:
        ip = ipaddress.IPv4Address(gateway)
    except ValueError as e:
        raise invalid_argument(f"ipam configuration: invalid gateway {gateway}") from e
    if ip not in net or ip in (net.network_address, net.broadcast_address):
        raise invalid_argument(
            f"ipam configuration: subnet {text} does not contain gateway {gateway}"
        )


def validate_pool(pool: list[str] | None, size: int | None) -> None:
    """`swarm init --default-addr-pool/--default-addr-pool-mask-length`, as dockerd
    checks them (validateDefaultAddrPool)."""
    if pool is None:
        return
    size = size or DEFAULT_SUBNET_SIZE
    if size > MAX_SUBNET_SIZE:
        raise InvalidArgument(f"subnet size is out of range: {size}")
    for text in pool:
        try:
            base = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError as e:
            raise InvalidArgument(f"invalid base pool {text}: invalid CIDR address") from e
        if not isinstance(base, Net):
            raise InvalidArgument(f"invalid base pool {text}: IPv6 is not supported")
        if size < base.prefixlen:
            raise InvalidArgument(
                f'invalid CIDR: "{text}". Subnet size is too small for pool: {size}'
            )


def validate_data_path_port(port: int | None) -> None:
    if port and not DATA_PATH_PORT_RANGE[0] <= port <= DATA_PATH_PORT_RANGE[1]:
        lo, hi = DATA_PATH_PORT_RANGE
        raise InvalidArgument(f"Datapath port number is not in valid range ({lo}-{hi}) : {port}")


def candidate_subnets(pools: Iterable[str], size: int) -> Iterator[Net]:
    for text in pools:
        base = ipaddress.ip_network(text.strip(), strict=False)
        assert isinstance(base, Net)
        yield from base.subnets(new_prefix=max(size, base.prefixlen))


def pick_subnet(pools: Iterable[str], size: int, taken: Iterable[Net]) -> Net:
    """The first subnet of the pools that overlaps no taken one."""
    taken_list = sorted(taken, key=lambda n: (int(n.network_address), n.prefixlen))
    for candidate in candidate_subnets(pools, size):
        if not any(candidate.overlaps(t) for t in taken_list):
            return candidate
    raise PoolExhausted("no subnet is left in the default address pool")


def pick_vxlan(taken: set[int]) -> int:
    n = VXLAN_ID_START
    while n in taken:
        n += 1
    if n > VXLAN_ID_END:
        raise PoolExhausted("no VXLAN ID is left")
    return n


def gateway_of(net: Net) -> str:
    return str(net.network_address + 1)


def host_part(cidr: str) -> str:
    """`10.0.1.3/24` -> `10.0.1.3`."""
    return cidr.split("/", 1)[0]


@dataclass(slots=True)
class _Pool:
    net: Net
    # the addresses handed out: the subnet's, or its `--ip-range`
    span: Net
    # address (as int) -> who holds it: a task ID, a service ID, or "" (the gateway)
    held: dict[int, str] = field(default_factory=dict)
    # where the next search starts, so a freed address is not handed out again at once
    cursor: int = 0

    @property
    def first(self) -> int:
        return max(int(self.span.network_address), int(self.net.network_address) + 1)

    @property
    def last(self) -> int:
        return min(int(self.span.broadcast_address), int(self.net.broadcast_address) - 1)


@dataclass(slots=True)
class Draft:
    """What one transaction took and gave back, applied to the book after it commits."""

    taken: list[tuple[str, int, str]] = field(default_factory=list)  # (network, addr, owner)
    released: list[tuple[str, int, str]] = field(default_factory=list)
    _taken: set[tuple[str, int]] = field(default_factory=set)
    _released: set[tuple[str, int]] = field(default_factory=set)

    def holds(self, network_id: str, addr: int) -> bool:
        return (network_id, addr) in self._taken

    def freed(self, network_id: str, addr: int) -> bool:
        return (network_id, addr) in self._released

    def add_taken(self, network_id: str, addr: int, owner: str) -> None:
        self.taken.append((network_id, addr, owner))
        self._taken.add((network_id, addr))

    def add_released(self, network_id: str, addr: int, owner: str) -> None:
        self.released.append((network_id, addr, owner))
        self._released.add((network_id, addr))

    def undo_taken(self, count: int) -> None:
        """Forget the last `count` addresses taken (an allocation that failed midway)."""
        for network_id, addr, _ in self.taken[len(self.taken) - count :]:
            self._taken.discard((network_id, addr))
        del self.taken[len(self.taken) - count :]


class AddressBook:
    """Which address of which network is held, by whom (see the module's docstring)."""

    def __init__(self) -> None:
        self._pools: dict[str, _Pool] = {}

    def add_network(
        self, network_id: str, subnet: str, gateway: str | None, ip_range: str | None = None
    ) -> None:
        net = ipaddress.ip_network(subnet, strict=False)
        span = ipaddress.ip_network(ip_range, strict=False) if ip_range else net
        assert isinstance(net, Net) and isinstance(span, Net)
        pool = self._pools.get(network_id)
        if pool is None or pool.net != net or pool.span != span:
            pool = self._pools[network_id] = _Pool(net, span)
        if gateway:
            pool.held[int(ipaddress.IPv4Address(gateway))] = ""

    def drop_network(self, network_id: str) -> None:
        self._pools.pop(network_id, None)

    def has(self, network_id: str) -> bool:
        return network_id in self._pools

    def mark(self, network_id: str, cidr: str, owner: str) -> None:
        """An address the store shows held (rebuilding the book)."""
        pool = self._pools.get(network_id)
        if pool is not None:
            pool.held[int(ipaddress.IPv4Address(host_part(cidr)))] = owner

    def held_by(self, network_id: str, cidr: str) -> str | None:
        pool = self._pools.get(network_id)
        if pool is None:
            return None
        return pool.held.get(int(ipaddress.IPv4Address(host_part(cidr))))

    def owned(self, draft: Draft, network_id: str, cidr: str, owner: str) -> bool:
        """Held by `owner`, in the book or in the transaction's draft."""
        if self.held_by(network_id, cidr) == owner:
            return True
        addr = int(ipaddress.IPv4Address(host_part(cidr)))
        return any(n == network_id and a == addr and o == owner for n, a, o in draft.taken)

    def take(self, draft: Draft, network_id: str, owner: str) -> str:
        """A free address on the network for `owner`, CIDR form; recorded in `draft`."""
        pool = self._pools[network_id]
        size = max(0, pool.last - pool.first + 1)
        start = pool.cursor if pool.first <= pool.cursor <= pool.last else pool.first
        for i in range(size):
            addr = pool.first + (start - pool.first + i) % size
            free = addr not in pool.held or draft.freed(network_id, addr)
            if free and not draft.holds(network_id, addr):
                draft.add_taken(network_id, addr, owner)
                pool.cursor = addr + 1
                return f"{ipaddress.IPv4Address(addr)}/{pool.net.prefixlen}"
        raise PoolExhausted(f"no address is left in {pool.net}")

    def release(self, draft: Draft, network_id: str, cidr: str, owner: str) -> None:
        pool = self._pools.get(network_id)
        if pool is None:
            return
        addr = int(ipaddress.IPv4Address(host_part(cidr)))
        if pool.held.get(addr) == owner:
            draft.add_released(network_id, addr, owner)

    def apply(self, draft: Draft) -> None:
        for network_id, addr, owner in draft.released:
            pool = self._pools.get(network_id)
            if pool is not None and pool.held.get(addr) == owner:
                del pool.held[addr]
        for network_id, addr, owner in draft.taken:
            pool = self._pools.get(network_id)
            if pool is not None:
                pool.held[addr] = owner

    def count(self, network_id: str) -> int:
        pool = self._pools.get(network_id)
        return len(pool.held) if pool else 0
