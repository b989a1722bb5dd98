"""Issue 8 under the docker runtime, one node: containers on a swarm network get an
interface on it in their own namespace (the engine starts them with no network; the
node's plumbing moves a veth in), resolve `tasks.<service>` and `<service>` through the
embedded resolver at 127.0.0.11, and reach each other by address — as process tasks do.

Checked from inside a container with `docker exec` (passed through to the engine) and
busybox's nslookup and wget.
"""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import pytest

from ..harness import wait_until
from .engine import DockerDaemon, DockerDaemonFactory, Engine, unique
from .test_docker_host_ports import answers, docker_user, free_port
from .test_docker_runtime import container_of, init_swarm, remove_service, wait_converged

pytestmark = pytest.mark.integration

SUBNET_PREFIX = "10.201.0."
HTTPD = "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www"
GET = 'printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 5 {} 80'


@pytest.fixture(scope="module")
def daemon(docker_daemon_factory: DockerDaemonFactory) -> DockerDaemon:
    d = docker_daemon_factory(node_name="shoal-docker-net")
    init_swarm(d)
    return d


def exec_in(daemon: DockerDaemon, cid: str, *argv: str) -> str:
    return daemon.docker("exec", cid, *argv).stdout


def addresses(text: str) -> set[str]:
    """The answers busybox's nslookup printed on the test's subnet."""
    return set(re.findall(rf"Address:\s*({re.escape(SUBNET_PREFIX)}\d+)", text))


def http_body(response: str) -> str:
    """The body of an HTTP response, whether exec kept its CRLFs or not."""
    return re.split(r"\r?\n\r?\n", response, maxsplit=1)[-1].strip()


def address_on(task: dict[str, Any], network_id: str) -> str:
    (att,) = [a for a in task["NetworksAttachments"] if a["Network"]["ID"] == network_id]
    return str(att["Addresses"][0]).split("/")[0]


def test_containers_on_a_swarm_network_resolve_and_reach_each_other(
    daemon: DockerDaemon, engine: Engine, busybox_image: str
) -> None:
    net, web, client = unique("appnet"), unique("web"), unique("client")
    daemon.docker("network", "create", "-d", "overlay", "--subnet", f"{SUBNET_PREFIX}0/24", net)
    try:
        network_id = daemon.docker("network", "inspect", "-f", "{{.Id}}", net).stdout.strip()
        daemon.docker(
            "service", "create", "--detach", "--name", web, "--replicas", "2", "--init",
            "--network", net, busybox_image, "sh", "-c", HTTPD,
        )  # fmt: skip
        daemon.docker(
            "service", "create", "--detach", "--name", client, "--init", "--network", net,
            busybox_image, "sleep", "1000",
        )  # fmt: skip
        webs = wait_converged(daemon, engine, web, 2)
        (client_task,) = wait_converged(daemon, engine, client, 1).values()
        cid = container_of(client_task)
        web_addrs = {address_on(t, network_id) for t in webs.values()}
        assert len(web_addrs) == 2

        # The container has an interface on the network, with its task's address.
        assert address_on(client_task, network_id) in exec_in(daemon, cid, "ip", "-4", "addr")
        assert exec_in(daemon, cid, "cat", "/etc/resolv.conf").split()[:2] == [
            "nameserver",
            "127.0.0.11",
        ]

        def tasks_listed() -> set[str] | None:
            found = addresses(exec_in(daemon, cid, "nslookup", f"tasks.{web}"))
            return found if found == web_addrs else None

        wait_until(tasks_listed)

        (vip,) = [
            v["Addr"].split("/")[0]
            for v in daemon.service(web)["Endpoint"]["VirtualIPs"]
            if v["NetworkID"] == network_id
        ]
        assert addresses(exec_in(daemon, cid, "nslookup", web)) == {vip}

        # By address, each web container answers with its own hostname (busybox's
        # static wget crashes in its NSS lookups: a request by hand over nc).
        hostnames = {http_body(exec_in(daemon, cid, "sh", "-c", GET.format(a))) for a in web_addrs}
        assert len(hostnames) == 2 and "" not in hostnames
        # By the VIP: round robin in the container's namespace (vip.py), both answer.
        by_vip = [http_body(exec_in(daemon, cid, "sh", "-c", GET.format(vip))) for _ in range(4)]
        assert set(by_vip) == hostnames, by_vip
    finally:
        remove_service(daemon, engine, client)
        remove_service(daemon, engine, web)
    # Once no task uses it, the network goes, and with it the node's namespaces for it.
    daemon.docker("network", "rm", net)
    netns_dir = daemon.data_dir / "agent" / "netns"
    wait_until(lambda: not netns_dir.exists() or not any(netns_dir.iterdir()))


def test_the_routing_mesh_on_the_host_reaches_containers(
    daemon: DockerDaemon, engine: Engine, busybox_image: str
) -> None:
    """A port published in ingress mode under the docker runtime, on this machine's own
    namespace (dockerd's FORWARD DROP there): the node's loopback answers with both
    containers; the gateway, its DOCKER-USER rules and the node's table go once the
    service is removed."""
    web = unique("meshweb")
    port = free_port()
    record = daemon.data_dir / "agent" / "network-record.json"
    daemon.docker(
        "service", "create", "--detach", "--name", web, "--replicas", "2", "--init",
        "--publish", f"{port}:80", busybox_image, "sh", "-c", HTTPD,
    )  # fmt: skip
    mesh: dict[str, Any] = {}
    try:
        webs = wait_converged(daemon, engine, web, 2)
        names = {engine.inspect(container_of(t))[0]["Config"]["Hostname"] for t in webs.values()}

        def both() -> bool:
            return {answers(port) for _ in range(6)} == names

        wait_until(both, timeout=30, what="the published port to answer with both")
        mesh = json.loads(record.read_text())["mesh"]
        if docker_user():
            assert f"-i {mesh['node_veth']} " in docker_user()
    finally:
        remove_service(daemon, engine, web)
    wait_until(lambda: answers(port) is None, timeout=30, what="the port to be released")
    wait_until(
        lambda: not record.exists() or json.loads(record.read_text()).get("mesh") is None,
        what="the gateway gone",
    )
    assert f"{mesh['node_veth']} " not in docker_user()
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert mesh["table"] not in tables
