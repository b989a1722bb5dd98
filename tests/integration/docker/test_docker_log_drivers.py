"""Log drivers under the docker runtime: the container gets the service's driver
(HostConfig.LogConfig), so dockerd's own gelf driver sends its lines to a real UDP
listener, and `docker service logs` (through dockerd's local cache for gelf, its
json-file otherwise) keeps working, with --since, --details (the driver's attributes)
and a task ID."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from ..gelf_listener import GelfListener
from ..harness import wait_until
from .engine import DockerDaemon, DockerDaemonFactory, Engine
from .test_docker_runtime import container_of, init_swarm, remove_service, wait_converged

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def daemon(docker_daemon_factory: DockerDaemonFactory) -> DockerDaemon:
    d = docker_daemon_factory(node_name="shoal-docker-logs")
    init_swarm(d)
    return d


@pytest.fixture
def listener() -> Iterator[GelfListener]:
    with GelfListener() as gl:
        yield gl


def test_gelf_reaches_the_udp_listener_from_the_container(
    daemon: DockerDaemon, engine: Engine, busybox_image: str, listener: GelfListener
) -> None:
    daemon.create_service(
        "dgelf",
        "--init",
        "--log-driver", "gelf",
        "--log-opt", f"gelf-address={listener.address}",
        "--log-opt", "gelf-compression-type=zlib",
        busybox_image, "sh", "-c", "echo hello from docker; echo oops >&2; exec sleep 1000",
    )  # fmt: skip
    try:
        (task,) = wait_converged(daemon, engine, "dgelf", 1).values()
        cid = container_of(task)
        (info,) = engine.inspect(cid)
        assert info["HostConfig"]["LogConfig"]["Type"] == "gelf"
        got = {m["short_message"]: m for m in listener.receive(2)}
        hello, oops = got["hello from docker"], got["oops"]
        assert hello["level"] == 6 and oops["level"] == 3
        assert hello["_container_id"] == cid
        assert hello["_container_name"] == f"dgelf.1.{task['ID']}"
        assert hello["_image_name"] == busybox_image
        # dockerd keeps a local cache beside gelf: `service logs` still works.
        out = daemon.docker("service", "logs", "--raw", "dgelf")
        assert "hello from docker" in out.stdout and "oops" in out.stderr
    finally:
        remove_service(daemon, engine, "dgelf")


def test_json_file_logs_since_details_and_a_task_id(
    daemon: DockerDaemon, engine: Engine, busybox_image: str
) -> None:
    counter = "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.2; done"
    daemon.create_service(
        "dcount",
        "--init",
        "--log-driver", "json-file",
        "--log-opt", "env=WHO",
        "--log-opt", "max-size=1m",
        "--env", "WHO=me",
        busybox_image, "sh", "-c", counter,
    )  # fmt: skip
    try:
        (task,) = wait_converged(daemon, engine, "dcount", 1).values()
        (info,) = engine.inspect(container_of(task))
        assert info["HostConfig"]["LogConfig"] == {
            "Type": "json-file",
            "Config": {"env": "WHO", "max-size": "1m"},
        }
        wait_until(
            lambda: daemon.docker("service", "logs", "--raw", "dcount").stdout.count("\n") >= 8,
            what="eight lines",
        )
        stamped = daemon.docker("service", "logs", "--timestamps", "--raw", "dcount").stdout
        stamp, text = stamped.splitlines()[4].split(" ", 1)
        out = daemon.docker("service", "logs", "--raw", "--since", stamp, "dcount").stdout
        assert out.splitlines()[0] == text, (stamp, out[:200])

        details = daemon.docker(
            "service", "logs", "--details", "--tail", "2", "--no-task-ids", task["ID"]
        ).stdout
        lines = details.splitlines()
        assert len(lines) == 2, details
        assert all(re.fullmatch(r"dcount\.1@\S+\s+\| WHO=me line \d+", x) for x in lines), details
    finally:
        remove_service(daemon, engine, "dcount")
