"""The allocator's address management: subnets from the pools, VXLAN IDs, addresses
within a subnet (gateway kept, freed ones not handed out again at once, a full subnet
said so), and a draft that reaches the book only when applied."""

from __future__ import annotations

import ipaddress

import pytest

from shoal.errors import InvalidArgument
from shoal.manager.allocator import ipam


def net(text: str) -> ipaddress.IPv4Network:
    n = ipaddress.ip_network(text)
    assert isinstance(n, ipaddress.IPv4Network)
    return n


def test_pick_subnet_skips_taken_and_overlapping() -> None:
    pool = ["10.0.0.0/8"]
    assert ipam.pick_subnet(pool, 24, []) == net("10.0.0.0/24")
    taken = [net("10.0.0.0/24"), net("10.0.1.0/24")]
    assert ipam.pick_subnet(pool, 24, taken) == net("10.0.2.0/24")
    # an explicit larger subnet covers several candidates
    assert ipam.pick_subnet(pool, 24, [net("10.0.0.0/22")]) == net("10.0.4.0/24")
    # a second pool is used when the first is full
    assert ipam.pick_subnet(["10.9.0.0/24", "10.8.0.0/16"], 24, [net("10.9.0.0/24")]) == net(
        "10.8.0.0/24"
    )
    with pytest.raises(ipam.PoolExhausted):
        ipam.pick_subnet(["10.9.0.0/24"], 24, [net("10.9.0.128/25")])


def test_pick_vxlan_from_4096_unique() -> None:
    assert ipam.pick_vxlan(set()) == 4096
    assert ipam.pick_vxlan({4096, 4097, 4099}) == 4098


def test_addresses_unique_gateway_kept_and_release_needs_commit() -> None:
    book = ipam.AddressBook()
    book.add_network("n", "10.0.1.0/29", "10.0.1.1")  # hosts .1-.6, .1 the gateway
    draft = ipam.Draft()
    got = [book.take(draft, "n", f"t{i}") for i in range(5)]
    assert got == [f"10.0.1.{i}/29" for i in range(2, 7)]
    with pytest.raises(ipam.PoolExhausted):
        book.take(draft, "n", "t5")
    book.apply(draft)
    assert book.count("n") == 6
    # a release is only the book's once applied (after its transaction committed)
    draft = ipam.Draft()
    book.release(draft, "n", "10.0.1.3/29", "t1")
    assert book.held_by("n", "10.0.1.3/29") == "t1"
    book.release(draft, "n", "10.0.1.4/29", "somebody-else")  # not its owner: nothing
    book.apply(draft)
    assert book.held_by("n", "10.0.1.3/29") is None
    assert book.held_by("n", "10.0.1.4/29") == "t2"
    assert book.take(ipam.Draft(), "n", "t6") == "10.0.1.3/29"


def test_freed_address_not_reused_at_once() -> None:
    book = ipam.AddressBook()
    book.add_network("n", "10.0.1.0/24", "10.0.1.1")
    draft = ipam.Draft()
    a = book.take(draft, "n", "a")
    book.take(draft, "n", "b")
    book.apply(draft)
    draft = ipam.Draft()
    book.release(draft, "n", a, "a")
    book.apply(draft)
    assert book.take(ipam.Draft(), "n", "c") == "10.0.1.4/24"  # the cursor moves on


def test_undo_taken_forgets_a_partial_allocation() -> None:
    book = ipam.AddressBook()
    book.add_network("n", "10.0.1.0/24", None)
    draft = ipam.Draft()
    book.take(draft, "n", "a")
    book.take(draft, "n", "a")
    draft.undo_taken(2)
    book.apply(draft)
    assert book.count("n") == 0


@pytest.mark.parametrize(
    ("pool", "size", "message"),
    [
        (["10.0.0.0/8"], 30, "subnet size is out of range: 30"),
        (["10.0.0.0/24"], 16, "Subnet size is too small for pool: 16"),
        (["nonsense"], 24, "invalid base pool nonsense"),
    ],
)
def test_pool_validation(pool: list[str], size: int, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        ipam.validate_pool(pool, size)


def test_data_path_port_validation() -> None:
    ipam.validate_data_path_port(None)
    ipam.validate_data_path_port(4789)
    with pytest.raises(InvalidArgument, match=r"not in valid range \(1024-49151\) : 80"):
        ipam.validate_data_path_port(80)


def test_subnet_and_gateway_checks() -> None:
    with pytest.raises(InvalidArgument, match="invalid subnet 10.0.0.0/33"):
        ipam.parse_subnet("10.0.0.0/33")
    n = ipam.parse_subnet("10.0.0.0/24")
    with pytest.raises(InvalidArgument, match="does not contain gateway 10.0.1.1"):
        ipam.check_gateway(n, "10.0.0.0/24", "10.0.1.1")
    with pytest.raises(InvalidArgument, match="invalid gateway x"):
        ipam.check_gateway(n, "10.0.0.0/24", "x")


def test_ip_range_bounds_the_addresses() -> None:
    book = ipam.AddressBook()
    book.add_network("n", "10.0.1.0/24", "10.0.1.1", "10.0.1.128/30")
    draft = ipam.Draft()
    got = [book.take(draft, "n", f"t{i}") for i in range(4)]
    assert got == [f"10.0.1.{i}/24" for i in range(128, 132)]
    with pytest.raises(ipam.PoolExhausted):
        book.take(draft, "n", "t4")
