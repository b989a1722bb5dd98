"""`docker events` under the docker runtime: the engine's container events are merged
with the swarm's, in time order for a past window, and live as they happen."""

from __future__ import annotations

import time

import pytest

from ..harness import swarm_init_args, wait_until
from ..test_events import LiveEvents
from .engine import DockerDaemon, DockerDaemonFactory, Engine, unique

pytestmark = pytest.mark.integration

FORMAT = "{{.Type}} {{.Action}} {{.Actor.Attributes.name}} {{.Scope}}"
CONVERGE_TIMEOUT_S = 60.0
# Room for the last event to be logged after what caused it returned.
LOG_MARGIN_S = 1.0
SERVICE_ID_LABEL = "com.docker.swarm.service.id"


@pytest.fixture(scope="module")
def daemon(docker_daemon_factory: DockerDaemonFactory) -> DockerDaemon:
    d = docker_daemon_factory(node_name="shoal-docker-events")
    d.docker(*swarm_init_args())
    return d


def stamp(t: float) -> str:
    return f"{t:.6f}"


def test_container_events_come_from_the_engine_merged_in_time_order(
    daemon: DockerDaemon, engine: Engine, busybox_image: str
) -> None:
    tag = unique("ev")
    name = "ev-dk"
    t0 = time.time()
    sid = daemon.create_service(
        name,
        "--label",
        f"evtest={tag}",
        "--container-label",
        f"evtest={tag}",
        "--init",
        busybox_image,
        "sleep",
        "1000",
    )
    try:
        cid = wait_until(
            lambda: engine.containers(f"label={SERVICE_ID_LABEL}={sid}", "status=running"),
            timeout=CONVERGE_TIMEOUT_S,
            what="the task's container to run",
        )[0]
        time.sleep(LOG_MARGIN_S)
        t1 = time.time()
        container = engine.inspect(cid)[0]["Name"].lstrip("/")
        window = ("--since", stamp(t0), "--until", stamp(t1), "--format", FORMAT)
        only_containers = daemon.docker(
            "events", *window, "--filter", "type=container", "--filter", f"label=evtest={tag}"
        ).stdout.splitlines()
        assert only_containers[:2] == [
            f"container create {container} local",
            f"container start {container} local",
        ], only_containers
        # both sources in one stream, in time order: the service before its container
        merged = daemon.docker(
            "events", *window, "--filter", f"label=evtest={tag}"
        ).stdout.splitlines()
        assert merged[0] == f"service create {name} swarm", merged
        assert merged[1:3] == only_containers[:2], merged
        # swarm types only: the engine is not asked
        swarm_only = daemon.docker(
            "events", *window, "--filter", "type=service", "--filter", f"label=evtest={tag}"
        ).stdout.splitlines()
        assert swarm_only == [f"service create {name} swarm"]

        # live: a container stopped behind shoal's back shows as it happens
        live = LiveEvents(
            daemon, "--filter", "type=container", "--filter", f"container={cid}", fmt=FORMAT
        )
        try:
            time.sleep(LOG_MARGIN_S)  # the stream subscribes
            engine.run("kill", cid)
            assert live.next() == f"container kill {container} local"
        finally:
            live.close()
    finally:
        daemon.docker("service", "rm", name)
        wait_until(
            lambda: not engine.containers(f"label={SERVICE_ID_LABEL}={sid}"),
            timeout=CONVERGE_TIMEOUT_S,
            what="the service's containers to be removed",
        )
