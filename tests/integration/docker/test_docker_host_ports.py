"""Host-mode published ports under the docker runtime, one node: a task with no swarm
network is a container on the engine's default bridge, created with the port exposed
and bound on the node (`ExposedPorts`, `HostConfig.PortBindings`, as dockerd's
executor makes it), so the node answers on the published port; its task shows the
binding in `PortStatus`; a second task needing the port waits with Swarm's message."""

from __future__ import annotations

import secrets
import socket
import subprocess
from typing import Any

import pytest

from ..harness import wait_until
from .engine import DockerDaemon, DockerDaemonFactory, Engine
from .test_docker_runtime import container_of, init_swarm, remove_service, wait_converged

pytestmark = pytest.mark.integration

HTTPD = "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www"


@pytest.fixture(scope="module")
def daemon(docker_daemon_factory: DockerDaemonFactory) -> DockerDaemon:
    d = docker_daemon_factory(node_name="shoal-docker-ports")
    init_swarm(d)
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        chunks = []
        while data := s.recv(4096):
            chunks.append(data)
    return b"".join(chunks).decode().split("\r\n\r\n", 1)[-1].strip()


def answers(port: int) -> str | None:
    try:
        return http_get(port) or None
    except OSError:
        return None


def test_host_mode_port_binds_on_the_node(
    daemon: DockerDaemon, engine: Engine, busybox_image: str
) -> None:
    port = free_port()
    daemon.create_service(
        "hostport", "--init", "--publish", f"mode=host,published={port},target=80",
        busybox_image, "sh", "-c", HTTPD,
    )  # fmt: skip
    try:
        (task,) = wait_converged(daemon, engine, "hostport", 1).values()
        (info,) = engine.inspect(container_of(task))
        assert info["HostConfig"]["PortBindings"] == {
            "80/tcp": [{"HostIp": "", "HostPort": str(port)}]
        }
        assert "80/tcp" in info["Config"]["ExposedPorts"]
        assert task["Status"]["PortStatus"] == {
            "Ports": [
                {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": port, "PublishMode": "host"}
            ]
        }
        body = wait_until(lambda: answers(port), timeout=30, what="the host port to answer")
        assert body == info["Config"]["Hostname"]
        # one node: a second task needing the port waits, as Swarm says
        daemon.docker("service", "scale", "--detach", "hostport=2")

        def waiting() -> list[dict[str, Any]]:
            return [
                t
                for t in daemon.tasks("hostport")
                if t["Status"]["State"] == "pending" and t["Status"].get("Err")
            ]

        (pending,) = wait_until(waiting, timeout=30, what="the second task to wait")
        assert pending["Status"]["Err"] == (
            "no suitable node (host-mode port already in use on 1 node)"
        )
    finally:
        remove_service(daemon, engine, "hostport")
    wait_until(lambda: answers(port) is None, timeout=30, what="the port to be released")


def test_host_mode_port_without_a_number_is_the_engines_pick(
    daemon: DockerDaemon, engine: Engine, busybox_image: str
) -> None:
    daemon.create_service(
        "anyport", "--init", "--publish", "mode=host,target=80", busybox_image, "sh", "-c", HTTPD
    )
    try:
        (task,) = wait_converged(daemon, engine, "anyport", 1).values()
        (info,) = engine.inspect(container_of(task))
        (bound,) = info["NetworkSettings"]["Ports"]["80/tcp"][:1]
        port = int(bound["HostPort"])
        assert task["Status"]["PortStatus"] == {
            "Ports": [
                {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": port, "PublishMode": "host"}
            ]
        }
        # the service shows the port without a number, as dockerd does
        assert daemon.service("anyport")["Endpoint"]["Ports"] == [
            {"Protocol": "tcp", "TargetPort": 80, "PublishMode": "host"}
        ]
        body = wait_until(lambda: answers(port), timeout=30, what="the picked port to answer")
        assert body == info["Config"]["Hostname"]
    finally:
        remove_service(daemon, engine, "anyport")


def test_host_mode_port_of_a_container_on_a_swarm_network(
    daemon: DockerDaemon, engine: Engine, busybox_image: str
) -> None:
    """On a swarm network the container has no engine network: the plumbing gives it a
    link to the node and DNATs the port to it (hostports.py), accepted in DOCKER-USER
    (Docker's FORWARD DROP) by rules of its own, all gone with the task."""
    port = free_port()
    net = f"hpnet{secrets.token_hex(3)}"
    daemon.docker("network", "create", "-d", "overlay", "--subnet", "10.219.7.0/24", net)
    daemon.create_service(
        "hpnet", "--init", "--network", net, "--publish", f"mode=host,published={port},target=80",
        busybox_image, "sh", "-c", HTTPD,
    )  # fmt: skip
    veth = ""
    try:
        (task,) = wait_converged(daemon, engine, "hpnet", 1).values()
        (info,) = engine.inspect(container_of(task))
        assert info["HostConfig"]["NetworkMode"] == "none"
        body = wait_until(lambda: answers(port), timeout=30, what="the host port to answer")
        assert body == info["Config"]["Hostname"]
        veth = f"shh{task['ID'][:11]}"
        if docker_user():
            assert f"-i {veth} " in docker_user() and f"-o {veth} " in docker_user()
    finally:
        remove_service(daemon, engine, "hpnet")
    wait_until(lambda: answers(port) is None, timeout=30, what="the port to be released")
    # the port closes with the container's process; the rules and the link go after it,
    # when the task's network is taken down
    wait_until(
        lambda: f"{veth} " not in docker_user(), timeout=30, what="the DOCKER-USER rules to go"
    )
    wait_until(
        lambda: veth not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout,
        timeout=30, what="the link to go",
    )  # fmt: skip
    wait_until(
        lambda: daemon.docker("network", "rm", net, check=False).returncode == 0,
        what="the network removed",
    )


def docker_user() -> str:
    """The host's DOCKER-USER chain ("" when it has none)."""
    done = subprocess.run(["iptables", "-w", "-S", "DOCKER-USER"], capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else ""
