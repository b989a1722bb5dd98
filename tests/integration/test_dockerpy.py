"""The same flows through docker-py, as a Python user drives Docker: a DockerClient on
the daemon's socket with the API version negotiated (docker-py's default)."""

from __future__ import annotations

from collections.abc import Iterator

import docker
import pytest
from docker.models.services import Service
from docker.types import ServiceMode

from .harness import Daemon, environ, pid_alive, wait_until

pytestmark = pytest.mark.integration

SLEEP = ["sleep", "1000"]


@pytest.fixture
def client(cluster: Daemon) -> Iterator[docker.DockerClient]:
    c = cluster.client()
    try:
        yield c
    finally:
        c.close()


def create(client: docker.DockerClient, name: str, replicas: int, **kwargs: object) -> Service:
    return client.services.create(
        "busybox",
        command=SLEEP,
        name=name,
        mode=ServiceMode("replicated", replicas=replicas),
        **kwargs,
    )


def test_negotiates_the_servers_api_version(client: docker.DockerClient) -> None:
    assert client.api.api_version == "1.41"
    assert client.ping() is True
    assert client.info()["Swarm"]["LocalNodeState"] == "active"


def test_create_and_list(cluster: Daemon, client: docker.DockerClient) -> None:
    svc = create(client, "py-list", 2, labels={"via": "docker-py"}, env=["B=1"])
    assert len(svc.id) == 25
    assert [s.name for s in client.services.list(filters={"name": "py-list"})] == ["py-list"]
    assert [s.id for s in client.services.list(filters={"label": "via=docker-py"})] == [svc.id]
    assert client.services.get("py-list").id == svc.id

    pids = cluster.wait_processes("py-list", 2, argv=SLEEP)
    for pid in pids.values():
        assert environ(pid).get("B") == "1"
    assert len(svc.tasks(filters={"desired-state": "running"})) == 2


def test_update_env(cluster: Daemon, client: docker.DockerClient) -> None:
    svc = create(client, "py-update", 2, env=["B=1"])
    old = cluster.wait_processes("py-update", 2, argv=SLEEP)
    version = svc.version

    svc.reload()
    svc.update(env=["B=2"])
    svc.reload()
    assert svc.version > version
    container = svc.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]
    assert container["Env"] == ["B=2"], container
    # docker-py merged the rest of the spec back in: the command survived.
    assert (container.get("Command") or []) + (container.get("Args") or []) == SLEEP, container

    wait_until(lambda: not any(pid_alive(p) for p in old.values()), what="the old tasks to stop")
    new = cluster.wait_processes("py-update", 2, argv=SLEEP)
    assert not set(new) & set(old)
    for pid in new.values():
        assert environ(pid).get("B") == "2"


def test_scale(cluster: Daemon, client: docker.DockerClient) -> None:
    svc = create(client, "py-scale", 1)
    first = cluster.wait_processes("py-scale", 1, argv=SLEEP)
    svc.reload()
    assert svc.scale(3)
    three = cluster.wait_processes("py-scale", 3, argv=SLEEP)
    assert set(first) <= set(three), "scaling up keeps the running task"
    svc.reload()
    assert svc.attrs["Spec"]["Mode"] == {"Replicated": {"Replicas": 3}}


def test_remove(cluster: Daemon, client: docker.DockerClient) -> None:
    svc = create(client, "py-remove", 2)
    pids = cluster.wait_processes("py-remove", 2, argv=SLEEP)
    assert svc.remove() is True
    assert client.services.list(filters={"name": "py-remove"}) == []
    with pytest.raises(docker.errors.NotFound):
        client.services.get("py-remove")
    wait_until(lambda: not any(pid_alive(p) for p in pids.values()), what="the processes to exit")
