"""Issue 4's acceptance: `shoal daemon --runtime docker` runs tasks as containers on
the machine's Docker Engine, checked against the engine itself (`docker inspect` with
DOCKER_HOST on the engine) and through shoal's own socket.

One daemon for the module; the `web` service is made once and the tests run in file
order on it (killing a container, restarting the daemon, and finally removing it).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from ..harness import PROGRESS_TIMEOUT_S, holds_for, swarm_init_args, wait_until
from .engine import DockerDaemon, DockerDaemonFactory, Engine, Registry, build_image, unique

pytestmark = pytest.mark.integration

WEB = "web"
REPLICAS = 3
MEMORY_LIMIT = 64 * 1024 * 1024
# Convergence of a few containers, a replacement after a kill (restart delay 1 s),
# containers stopping after a service is removed (--init: sleep gets the SIGTERM).
CONVERGE_TIMEOUT_S = 60.0
REMOVE_TIMEOUT_S = 30.0
ADOPTION_HOLD_S = 3.0

SERVICE_NAME_LABEL = "com.docker.swarm.service.name"
SERVICE_ID_LABEL = "com.docker.swarm.service.id"


def init_swarm(daemon: DockerDaemon) -> None:
    # A cluster port of its own, picked at the bind: other daemons may hold 2377.
    daemon.docker(*swarm_init_args())


@pytest.fixture(scope="module")
def daemon(docker_daemon_factory: DockerDaemonFactory) -> DockerDaemon:
    d = docker_daemon_factory(node_name="shoal-docker-it")
    init_swarm(d)
    return d


def running_tasks(daemon: DockerDaemon, service: str) -> list[dict[str, Any]]:
    return [
        t
        for t in daemon.tasks(service)
        if t["Status"]["State"] == "running" and t["DesiredState"] == "running"
    ]


def container_of(task: dict[str, Any]) -> str:
    return str(((task["Status"].get("ContainerStatus") or {}).get("ContainerID")) or "")


def wait_converged(
    daemon: DockerDaemon, engine: Engine, service: str, count: int
) -> dict[int, dict[str, Any]]:
    """Wait until `service` has `count` running tasks, each with a running container
    on the engine, and no other running container; returns {slot: task}."""

    def converged() -> dict[int, dict[str, Any]] | None:
        tasks = running_tasks(daemon, service)
        ids = {container_of(t) for t in tasks}
        service_id = daemon.service(service)["ID"]
        live = set(engine.containers(f"label={SERVICE_ID_LABEL}={service_id}", "status=running"))
        if len(tasks) != count or "" in ids or ids != live:
            return None
        return {int(t["Slot"]): t for t in tasks}

    return wait_until(converged, timeout=CONVERGE_TIMEOUT_S, what=f"{service} to converge")


def wait_no_containers(engine: Engine, service_id: str) -> None:
    wait_until(
        lambda: not engine.containers(f"label={SERVICE_ID_LABEL}={service_id}"),
        timeout=REMOVE_TIMEOUT_S,
        what="the service's containers to be removed",
    )


def remove_service(daemon: DockerDaemon, engine: Engine, name: str) -> None:
    if not daemon.running() or name not in daemon.service_names():
        return
    service_id = daemon.service(name)["ID"]
    daemon.docker("service", "rm", name)
    wait_no_containers(engine, service_id)


@pytest.fixture(scope="module")
def web(daemon: DockerDaemon, engine: Engine, busybox_image: str) -> Iterator[dict[str, Any]]:
    """The acceptance service: 3 replicas with env, labels, a volume, a memory limit,
    a healthcheck, Swarm templates, --init."""
    volume = unique("shoal-it-v1")
    daemon.volumes.append(volume)  # removed after the containers, even if a test fails
    daemon.create_service(
        WEB,
        "--replicas",
        str(REPLICAS),
        "--env",
        "A=1",
        "--env",
        "NODE={{.Node.Hostname}}",
        "--label",
        "x=y",
        "--container-label",
        "team=blue",
        "--hostname",
        "{{.Service.Name}}-{{.Task.Slot}}",
        "--mount",
        f"type=volume,source={volume},target=/data",
        "--limit-memory",
        "64M",
        "--health-cmd",
        "true",
        "--health-interval",
        "1s",
        "--init",
        "--restart-delay",
        "1s",
        busybox_image,
        "sh",
        "-c",
        'echo "hello from $(hostname)"; exec sleep 1000',
    )
    yield {"volume": volume, "image": busybox_image}
    remove_service(daemon, engine, WEB)


def test_containers_carry_the_spec(
    daemon: DockerDaemon, engine: Engine, web: dict[str, Any]
) -> None:
    slots = wait_converged(daemon, engine, WEB, REPLICAS)
    assert sorted(slots) == [1, 2, 3]
    service = daemon.service(WEB)
    assert service["Spec"]["Labels"] == {"x": "y"}
    node_id = daemon.api.info()["Swarm"]["NodeID"]
    for slot, task in slots.items():
        (info,) = engine.inspect(container_of(task))
        assert info["Name"] == f"/{WEB}.{slot}.{task['ID']}"
        assert info["State"]["Running"] and info["State"]["Health"]["Status"] == "healthy"
        labels = info["Config"]["Labels"]
        assert labels[SERVICE_NAME_LABEL] == WEB
        assert labels[SERVICE_ID_LABEL] == service["ID"]
        assert labels["com.docker.swarm.task.id"] == task["ID"]
        assert labels["com.docker.swarm.task.name"] == f"{WEB}.{slot}.{task['ID']}"
        assert labels["com.docker.swarm.node.id"] == node_id
        assert labels["team"] == "blue"
        assert "x" not in labels  # a service label, as in Swarm
        env = info["Config"]["Env"]
        assert "A=1" in env and f"NODE={daemon.node_name}" in env
        assert info["Config"]["Hostname"] == f"{WEB}-{slot}"
        assert info["Config"]["Healthcheck"]["Test"] == ["CMD-SHELL", "true"]
        assert info["HostConfig"]["Memory"] == MEMORY_LIMIT
        assert info["HostConfig"]["Init"] is True
        mounts = [(m["Type"], m.get("Name"), m["Destination"]) for m in info["Mounts"]]
        assert mounts == [("volume", web["volume"], "/data")]
    ps = daemon.docker("service", "ps", WEB, "--format", "{{.Name}} {{.CurrentState}}").stdout
    states = sorted(line.split(" ", 1)[1] for line in ps.splitlines())
    assert len(states) == REPLICAS and all(s.startswith("Running") for s in states), ps


def test_engine_endpoints_through_shoal(
    daemon: DockerDaemon, engine: Engine, web: dict[str, Any]
) -> None:
    slots = wait_converged(daemon, engine, WEB, REPLICAS)
    ids = {container_of(t) for t in slots.values()}
    listed = daemon.docker(
        "ps", "--no-trunc", "-q", "--filter", f"label={SERVICE_NAME_LABEL}={WEB}"
    ).stdout.split()
    assert set(listed) == ids and len(listed) == REPLICAS
    one = container_of(slots[1])
    out = daemon.docker("exec", one, "sh", "-c", 'echo "exec $A in $(hostname)"').stdout
    assert out.strip() == f"exec 1 in {WEB}-1"
    # stdin through the hijacked connection, ended by the client's half-close
    piped = subprocess.run(
        ["docker", "exec", "-i", one, "cat"],
        env=daemon.docker_env(),
        input="through stdin\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert piped.returncode == 0 and piped.stdout == "through stdin\n", piped
    image = json.loads(daemon.docker("image", "inspect", web["image"]).stdout)
    assert image[0]["Id"] == engine.inspect(web["image"])[0]["Id"]
    logs = daemon.docker("logs", one).stdout
    assert f"hello from {WEB}-1" in logs
    # docker-py, as its swarm tests use it: images and containers through shoal
    client = daemon.client()
    try:
        assert client.images.get(web["image"]).id == image[0]["Id"]
        found = client.containers.list(filters={"label": f"{SERVICE_NAME_LABEL}={WEB}"})
        assert {c.id for c in found} == ids
    finally:
        client.close()


def test_service_logs(daemon: DockerDaemon, engine: Engine, web: dict[str, Any]) -> None:
    wait_converged(daemon, engine, WEB, REPLICAS)

    def hellos() -> set[str] | None:
        out = daemon.docker("service", "logs", "--raw", WEB).stdout
        found = {line.strip() for line in out.splitlines() if "hello from" in line}
        return found if len(found) >= REPLICAS else None

    found = wait_until(hellos, what="the replicas' output in `docker service logs`")
    assert found >= {f"hello from {WEB}-{slot}" for slot in (1, 2, 3)}
    out = daemon.docker("service", "logs", WEB).stdout
    assert any(line.startswith(f"{WEB}.1.") and "hello from" in line for line in out.splitlines())


def test_container_killed_behind_shoals_back_is_replaced(
    daemon: DockerDaemon, engine: Engine, web: dict[str, Any]
) -> None:
    before = wait_converged(daemon, engine, WEB, REPLICAS)
    victim = before[2]
    engine.run("kill", container_of(victim))

    def replaced() -> dict[int, dict[str, Any]] | None:
        slots = wait_converged(daemon, engine, WEB, REPLICAS)
        return slots if slots[2]["ID"] != victim["ID"] else None

    after = wait_until(replaced, timeout=CONVERGE_TIMEOUT_S, what="slot 2 to be replaced")
    assert container_of(after[2]) != container_of(victim)
    assert after[1]["ID"] == before[1]["ID"] and after[3]["ID"] == before[3]["ID"]
    old = next(t for t in daemon.tasks(WEB) if t["ID"] == victim["ID"])
    assert old["Status"]["State"] == "failed"
    assert old["Status"]["Err"] == "task: non-zero exit (137)"


def test_daemon_kill9_adopts_its_containers(
    daemon: DockerDaemon, engine: Engine, web: dict[str, Any]
) -> None:
    before = wait_converged(daemon, engine, WEB, REPLICAS)
    service_id = daemon.service(WEB)["ID"]
    containers_before = set(engine.containers(f"label={SERVICE_ID_LABEL}={service_id}"))
    daemon.kill9()
    daemon.start()
    after = wait_converged(daemon, engine, WEB, REPLICAS)
    assert {s: t["ID"] for s, t in after.items()} == {s: t["ID"] for s, t in before.items()}
    assert {s: container_of(t) for s, t in after.items()} == {
        s: container_of(t) for s, t in before.items()
    }

    def same_containers() -> bool:
        return set(engine.containers(f"label={SERVICE_ID_LABEL}={service_id}")) == containers_before

    holds_for(same_containers, ADOPTION_HOLD_S, what="no container made or lost")


def test_second_node_on_the_same_engine_leaves_them_alone(
    daemon: DockerDaemon,
    engine: Engine,
    web: dict[str, Any],
    docker_daemon_factory: DockerDaemonFactory,
) -> None:
    before = wait_converged(daemon, engine, WEB, REPLICAS)
    other = docker_daemon_factory(node_name="shoal-docker-other")
    init_swarm(other)  # its agent cleans up the containers it does not own: none of ours
    wait_until(lambda: other.api.nodes(), what="the second node's swarm")
    holds_for(
        lambda: (
            {container_of(t) for t in running_tasks(daemon, WEB)}
            == {container_of(t) for t in before.values()}
        ),
        ADOPTION_HOLD_S,
    )
    other.stop()
    assert {container_of(t) for t in wait_converged(daemon, engine, WEB, REPLICAS).values()} == {
        container_of(t) for t in before.values()
    }


def test_unhealthy_task_is_replaced(
    daemon: DockerDaemon, engine: Engine, busybox_image: str
) -> None:
    name = "sick"
    daemon.create_service(
        name,
        "--health-cmd",
        "[ ! -e /tmp/bad ]",
        "--health-interval",
        "1s",
        "--health-retries",
        "1",
        "--stop-grace-period",
        "1s",
        "--restart-delay",
        "1s",
        busybox_image,
        "sh",
        "-c",
        "sleep 3; touch /tmp/bad; exec sleep 1000",
    )
    try:

        def failed_unhealthy() -> list[dict[str, Any]]:
            return [
                t
                for t in daemon.tasks(name)
                if t["Status"]["State"] == "failed"
                and "unhealthy container" in (t["Status"].get("Err") or "")
            ]

        failed = wait_until(failed_unhealthy, timeout=CONVERGE_TIMEOUT_S, what="an unhealthy task")
        assert failed[0]["Status"]["Err"].startswith("task: non-zero exit (")
        wait_until(
            lambda: any(
                t["ID"] != failed[0]["ID"] and t["DesiredState"] == "running"
                for t in daemon.tasks(name)
            ),
            what="a replacement task",
        )
        (info,) = engine.inspect(container_of(failed[0]))
        assert not info["State"]["Running"]
    finally:
        remove_service(daemon, engine, name)


def test_missing_image_is_rejected(daemon: DockerDaemon, engine: Engine) -> None:
    name = "ghost"
    image = f"shoal-test/{unique('nosuch')}:1"
    daemon.create_service(name, "--restart-condition", "none", image, "sleep", "1")
    try:

        def rejected() -> dict[str, Any] | None:
            tasks = daemon.tasks(name)
            return tasks[0] if tasks and tasks[0]["Status"]["State"] == "rejected" else None

        task = wait_until(rejected, timeout=CONVERGE_TIMEOUT_S, what="the task to be rejected")
        err = task["Status"]["Err"]
        assert err.startswith(f"No such image: {image}"), err
        assert len(err) > len(f"No such image: {image}") + 5, err  # the engine's reason
    finally:
        remove_service(daemon, engine, name)


def test_image_pulled_from_a_registry_with_its_digest_pinned(
    daemon: DockerDaemon, engine: Engine, registry: Registry
) -> None:
    ref = f"{registry.addr}/app:1"
    image_id = build_image(engine, ref, extra={"/etc/marker": unique("pull")})
    daemon.images.append(image_id)  # pulled back below; removed at cleanup if not before
    pushed = engine.run("push", ref).stdout.decode()
    engine.run("rmi", ref)
    assert not engine.image_exists(ref) and not engine.image_exists(image_id)
    name = "app"
    try:
        daemon.docker(
            "service",
            "create",
            "--detach",
            "--with-registry-auth",
            "--init",
            "--name",
            name,
            ref,
            "sleep",
            "1000",
            timeout=PROGRESS_TIMEOUT_S,
        )
        pinned = daemon.service(name)["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
        assert pinned.startswith(f"{ref}@sha256:"), pinned
        assert pinned.split("@", 1)[1] in pushed
        (task,) = wait_converged(daemon, engine, name, 1).values()
        assert task["Spec"]["ContainerSpec"]["Image"] == pinned
        (info,) = engine.inspect(container_of(task))
        assert info["Image"] == image_id
    finally:
        remove_service(daemon, engine, name)
        engine.run("rmi", image_id, check=False)


def test_service_rm_removes_the_containers(
    daemon: DockerDaemon, engine: Engine, web: dict[str, Any]
) -> None:
    wait_converged(daemon, engine, WEB, REPLICAS)
    service_id = daemon.service(WEB)["ID"]
    assert engine.containers(f"label={SERVICE_ID_LABEL}={service_id}")
    daemon.docker("service", "rm", WEB)
    wait_no_containers(engine, service_id)
