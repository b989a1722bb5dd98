"""How endpoints become one gRPC target (the channel fails over between them)."""

from __future__ import annotations

import pytest

from shoal.etcdclient import grpc_target, strip_scheme


def test_endpoints_make_one_target() -> None:
    assert grpc_target(["10.0.0.1:2379"]) == "ipv4:10.0.0.1:2379"
    assert grpc_target(["10.0.0.1:2379", "10.0.0.2:2479"]) == "ipv4:10.0.0.1:2379,10.0.0.2:2479"
    assert grpc_target(["[fd00::1]:2379", "[fd00::2]:2379"]) == "ipv6:[fd00::1]:2379,[fd00::2]:2379"
    assert grpc_target(["etcd.example:2379"]) == "etcd.example:2379"  # a name: as it is


def test_mixed_or_named_endpoints_are_refused() -> None:
    with pytest.raises(ValueError, match="mix"):
        grpc_target(["10.0.0.1:2379", "[fd00::1]:2379"])
    with pytest.raises(ValueError, match="IP addresses"):
        grpc_target(["etcd-a:2379", "etcd-b:2379"])


def test_urls_lose_their_scheme() -> None:
    assert strip_scheme("https://10.0.0.1:2379/") == "10.0.0.1:2379"
    assert strip_scheme("10.0.0.1:2379") == "10.0.0.1:2379"
