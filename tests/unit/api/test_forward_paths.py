"""Which requests a follower forwards to the leader (shoal/api/forward.py): the swarm's
writes, with or without the version prefix; networks only without an engine; the
swarm's own membership calls, the engine's endpoints and reads never; logs are
streamed from the leader."""

from __future__ import annotations

import pytest

from shoal.api.forward import is_logs_read, is_swarm_write


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/services/create"),
        ("POST", "/v1.41/services/abc/update"),
        ("DELETE", "/v1.41/services/abc"),
        ("POST", "/nodes/abc/update"),
        ("DELETE", "/nodes/abc"),
        ("POST", "/v1.41/secrets/create"),
        ("DELETE", "/configs/abc"),
        ("POST", "/v1.41/swarm/update"),
        ("POST", "/networks/create"),
    ],
)
def test_swarm_writes_are_forwarded(method: str, path: str) -> None:
    assert is_swarm_write(method, path, engine=False)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/services"),
        ("GET", "/v1.41/nodes/abc"),
        ("POST", "/swarm/init"),
        ("POST", "/v1.41/swarm/join"),
        ("POST", "/swarm/leave"),
        ("POST", "/swarm/unlock"),
        ("POST", "/v1.41/containers/create"),
        ("POST", "/images/create"),
        ("POST", "/servicesX/create"),
    ],
)
def test_everything_else_is_local(method: str, path: str) -> None:
    assert not is_swarm_write(method, path, engine=False)


def test_networks_stay_with_the_engine_under_the_docker_runtime() -> None:
    assert not is_swarm_write("POST", "/v1.41/networks/create", engine=True)
    assert is_swarm_write("POST", "/v1.41/services/create", engine=True)


def test_logs_are_streamed_from_the_leader() -> None:
    assert is_logs_read("GET", "/v1.41/services/web/logs")
    assert is_logs_read("GET", "/tasks/abc/logs")
    assert not is_logs_read("GET", "/v1.41/containers/abc/logs")
    assert not is_logs_read("GET", "/services/web")
