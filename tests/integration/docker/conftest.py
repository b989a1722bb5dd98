"""Fixtures for the docker-runtime tests (machinery in engine.py).

- `engine` (session): the machine's Docker Engine; dockerd is started if none answers
  on /var/run/docker.sock, and then stopped when the session ends (one that was
  already running is left alone, and so is ours while it still runs containers this
  session did not make).
- `busybox_image` (session): a busybox image made offline, under a tag of its own,
  untagged at the end.
- `registry` (session): a local docker-registry on loopback, stopped at the end.
- `docker_daemon_factory` (module): shoal daemons on the docker runtime; at teardown
  each is stopped and the containers its agent made are removed.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import _LIVE
from ..harness import cleanup_daemons, docker_cli
from .engine import (
    Dockerd,
    DockerDaemon,
    DockerDaemonFactory,
    Engine,
    Registry,
    build_image,
    engine_answers,
    unique,
)


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    docker_cli()
    started: Dockerd | None = None
    if not engine_answers():
        started = Dockerd(tmp_path_factory.mktemp("dockerd") / "dockerd.log")
        started.start()
    engine = Engine(tmp_path_factory.mktemp("engine-cli"))
    try:
        yield engine
    finally:
        if started is not None:
            # Ours are removed by now: containers still there are someone else's (another
            # test session on this machine found our dockerd running); leave it to them.
            try:
                others = engine.containers()
            except AssertionError:  # the engine is gone already
                others = []
            if others:
                started.log_note(f"left running: {len(others)} containers not made here")
            else:
                started.stop()


@pytest.fixture(scope="session")
def busybox_image(engine: Engine) -> Iterator[str]:
    tag = f"shoal-test/busybox:{unique('it')}"
    build_image(engine, tag)
    yield tag
    engine.run("rmi", tag, check=False)


@pytest.fixture(scope="session")
def registry(engine: Engine) -> Iterator[Registry]:
    root = Path(tempfile.mkdtemp(prefix="shoal-registry-", dir="/tmp"))
    reg = Registry(root)
    reg.start()
    yield reg
    reg.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def docker_daemon_factory(
    engine: Engine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DockerDaemonFactory]:
    made: list[DockerDaemon] = []
    logs = tmp_path_factory.mktemp("docker-daemon-logs")

    def make(node_name: str | None = None, start: bool = True) -> DockerDaemon:
        root = Path(tempfile.mkdtemp(prefix="shoal-", dir="/tmp"))
        name = node_name or f"dnode{len(made) + 1}"
        daemon = DockerDaemon(root, logs / f"{name}-{root.name}.log", name, engine=engine)
        made.append(daemon)
        _LIVE.append(daemon)
        if start:
            daemon.start()
        return daemon

    yield make

    left = [d for d in made if d in _LIVE]  # a test's own daemons went with it
    for daemon in left:
        _LIVE.remove(daemon)
    cleanup_daemons(left)
