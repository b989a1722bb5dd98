"""Issue 10 under the docker runtime: secrets and configs reach the container as
dockerd puts them there, from a tmpfs on the host of the task's own, bind-mounted
read-only at their targets, and gone (unmounted) once the container is removed.

Checked with the real docker CLI through shoal's socket (`docker exec` passes through
to the engine) and against the engine itself (`docker inspect`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .engine import DockerDaemon, DockerDaemonFactory, Engine, mounts_under
from .test_docker_runtime import container_of, init_swarm, remove_service, wait_converged

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def daemon(docker_daemon_factory: DockerDaemonFactory) -> DockerDaemon:
    d = docker_daemon_factory(node_name="shoal-docker-secrets")
    init_swarm(d)
    return d


def exec_in(daemon: DockerDaemon, cid: str, *argv: str) -> str:
    """`docker exec` through shoal's socket (passed through to the engine)."""
    return daemon.docker("exec", cid, *argv).stdout


def fs_type(path: str) -> str:
    """The filesystem type of the mount holding `path`, on the host."""
    best, kind = "", ""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4].encode().decode("unicode_escape")
            if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(
                best
            ):
                best, kind = point, fields[fields.index("-") + 1]
    return kind


def bind_sources(engine: Engine, cid: str) -> dict[str, str]:
    (info,) = engine.inspect(cid)
    return {m["Destination"]: m["Source"] for m in info["Mounts"] if m["Type"] == "bind"}


def test_the_talks_example(daemon: DockerDaemon, engine: Engine, busybox_image: str) -> None:
    daemon.docker("secret", "create", "my_secret", "-", input="This is a secret\n")
    daemon.docker("secret", "create", "key", "-", input="k-value")
    daemon.create_service(
        "redis", "--init", "--secret", "my_secret",
        "--secret", "source=key,target=app_key,uid=65534,gid=65534,mode=0400",
        busybox_image, "sleep", "1000",
    )  # fmt: skip
    try:
        (task,) = wait_converged(daemon, engine, "redis", 1).values()
        cid = container_of(task)
        assert exec_in(daemon, cid, "cat", "/run/secrets/my_secret") == "This is a secret\n"
        assert exec_in(daemon, cid, "cat", "/run/secrets/app_key") == "k-value"
        listing = exec_in(daemon, cid, "ls", "-ln", "/run/secrets/my_secret")
        assert listing.split()[:4] == ["-r--r--r--", "1", "0", "0"]
        listing = exec_in(daemon, cid, "ls", "-ln", "/run/secrets/app_key")
        assert listing.split()[:4] == ["-r--------", "1", "65534", "65534"]
        mounts = exec_in(daemon, cid, "grep", "/run/secrets/", "/proc/self/mounts")
        assert all(" ro," in line for line in mounts.splitlines()), mounts
        # On the host: files on a tmpfs under the daemon's data dir, never on disk.
        sources = bind_sources(engine, cid)
        src = sources["/run/secrets/my_secret"]
        assert src.startswith(str(daemon.data_dir.resolve()) + "/")
        assert fs_type(src) == "tmpfs"
        assert not os.path.exists("/run/secrets/my_secret")
        tmpfs = str(Path(src).parent)
    finally:
        remove_service(daemon, engine, "redis")
    # The container is removed: its tmpfs is unmounted, its directory gone.
    assert tmpfs not in mounts_under(daemon.data_dir)
    assert not os.path.exists(tmpfs)
    daemon.docker("secret", "rm", "my_secret", "key")


def test_templated_config_per_task(
    daemon: DockerDaemon, engine: Engine, busybox_image: str
) -> None:
    daemon.docker(
        "config", "create", "--template-driver", "golang", "app-conf", "-",
        input='name: {{ .Service.Name }}\nslot: {{ .Task.Slot }}\nx: {{ env "X" }}\n',
    )  # fmt: skip
    daemon.docker("config", "create", "plain", "-", input="a=1\n")
    daemon.create_service(
        "tpl-app", "--init", "--replicas", "2", "--env", "X=1",
        "--config", "source=app-conf,target=/etc/app/conf.yml,mode=0440",
        "--config", "plain",  # Docker's default target: /plain
        busybox_image, "sleep", "1000",
    )  # fmt: skip
    try:
        tasks = wait_converged(daemon, engine, "tpl-app", 2)
        seen: dict[int, str] = {}
        for slot, task in tasks.items():
            cid = container_of(task)
            seen[slot] = exec_in(daemon, cid, "cat", "/etc/app/conf.yml")
            listing = exec_in(daemon, cid, "ls", "-ln", "/etc/app/conf.yml")
            assert listing.split()[:4] == ["-r--r-----", "1", "0", "0"]
            assert exec_in(daemon, cid, "cat", "/plain") == "a=1\n"
            assert fs_type(bind_sources(engine, cid)["/etc/app/conf.yml"]) == "tmpfs"
        assert seen == {n: f"name: tpl-app\nslot: {n}\nx: 1\n" for n in (1, 2)}
    finally:
        remove_service(daemon, engine, "tpl-app")
    assert not mounts_under(daemon.data_dir)
    daemon.docker("config", "rm", "app-conf", "plain")


def test_a_task_without_secrets_has_no_tmpfs(
    daemon: DockerDaemon, engine: Engine, busybox_image: str
) -> None:
    daemon.create_service("bare", "--init", busybox_image, "sleep", "1000")
    try:
        (task,) = wait_converged(daemon, engine, "bare", 1).values()
        assert not mounts_under(daemon.data_dir)
        assert bind_sources(engine, container_of(task)) == {}
    finally:
        remove_service(daemon, engine, "bare")
