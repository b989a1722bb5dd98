"""DockerCoins under the docker runtime: examples/dockercoins/build-images.sh makes its
images on this machine with no registry (a base `docker import`ed from the host's
Python and redis-server, one Dockerfile per service), and stack-docker.yml, deployed
with `shoal stack deploy`, mines: the worker containers find rng, hasher and redis by
name, and the web UI's published port answers the counters from redis."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from ..harness import PROGRESS_TIMEOUT_S, REPO, SHOAL, wait_until
from ..test_dockercoins import SERVICES, counters
from .engine import DockerDaemon, DockerDaemonFactory, Engine, engine_env, unique
from .test_docker_host_ports import free_port
from .test_docker_runtime import init_swarm, wait_converged, wait_no_containers

pytestmark = pytest.mark.integration

EXAMPLE = REPO / "examples" / "dockercoins"
TAG = "it"
BUILD_TIMEOUT_S = 300.0


@pytest.fixture(scope="module")
def coins_prefix(engine: Engine) -> Iterator[str]:
    """The images built under a prefix of their own; removed at the end."""
    prefix = unique("shoal-test-coins")
    env = {**engine_env(engine.config_dir), "PREFIX": prefix, "TAG": TAG}
    images = [f"{prefix}/{s}:{TAG}" for s in (*SERVICES, "base")]
    try:
        out = subprocess.run(
            [str(EXAMPLE / "build-images.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        for image in images:
            assert engine.image_exists(image), (image, out.stderr)
        yield prefix
    finally:
        engine.run("rmi", *images, check=False)


@pytest.fixture
def daemon(docker_daemon_factory: DockerDaemonFactory) -> DockerDaemon:
    d = docker_daemon_factory(node_name="shoal-docker-coins")
    init_swarm(d)
    return d


def stack(d: DockerDaemon, *args: str, env: dict[str, str] | None = None) -> None:
    out = subprocess.run(
        [str(SHOAL), "stack", *args, "-H", d.host],
        capture_output=True,
        text=True,
        timeout=PROGRESS_TIMEOUT_S,
        env=env,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockercoins_images_build_here_and_mine_under_the_docker_runtime(
    daemon: DockerDaemon, engine: Engine, coins_prefix: str
) -> None:
    port = free_port()
    env = {**os.environ, "PREFIX": coins_prefix, "TAG": TAG, "WEBUI_PORT": str(port)}
    stack(daemon, "deploy", "-c", str(EXAMPLE / "stack-docker.yml"), "coins", env=env)
    ids = {}
    try:
        for name in SERVICES:
            wait_converged(daemon, engine, f"coins_{name}", 1)
            ids[name] = daemon.service(f"coins_{name}")["ID"]
        mined = wait_until(
            lambda: (c := counters(port))["hashes"] >= 10 and c,
            timeout=PROGRESS_TIMEOUT_S,
            what="the containers to count hashes in redis",
        )
        assert len(mined["workers"]) == 1, mined
        image = daemon.service("coins_worker")["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
        assert image.startswith(f"{coins_prefix}/worker:{TAG}"), image
    finally:
        stack(daemon, "rm", "coins")
        for service_id in ids.values():
            wait_no_containers(engine, service_id)
