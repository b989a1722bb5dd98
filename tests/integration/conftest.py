"""Fixtures for the integration tests (the machinery is in harness.py).

- `daemon_factory` (per module) makes daemons; at teardown it stops each with SIGTERM
  (SIGKILL after a timeout), then kills any task process or shim left behind, by the
  pids recorded in that daemon's own data dir, and removes its directory. A daemon a
  test made (not a module fixture) is cleaned up at the end of that test. A task
  process left behind by a daemon stopped gracefully is a leak: it fails the test
  (`cleanup_daemons`); every daemon is cleaned up even when another one fails.
- `swarm` (per module) is a daemon on which `docker swarm init` already ran.
- `cluster` (per test) is the module's `swarm`, left without any service (and without
  their processes) after the test: tests share a daemon, not their state.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from .harness import (
    Daemon,
    DaemonFactory,
    cleanup_daemons,
    docker_cli,
    free_tcp_port,
    init_swarm,
    remove_all_services,
)

# The daemons of the module now running, whose logs a failure report shows.
_LIVE: list[Daemon] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if report.failed:
        for daemon in _LIVE:
            title = f"shoal daemon {daemon.node_name}: {daemon.log_path}"
            report.sections.append((title, daemon.log_tail(80)))
    return report


@pytest.fixture(scope="module")
def daemon_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonFactory]:
    """make(node_name=None, labels=(), tcp=False, start=True, args=()) -> a Daemon."""
    docker_cli()  # fail early, and clearly, without the docker CLI
    made: list[Daemon] = []
    logs = tmp_path_factory.mktemp("daemon-logs")

    def make(
        node_name: str | None = None,
        labels: Sequence[str] = (),
        tcp: bool = False,
        start: bool = True,
        args: Sequence[str] = (),
    ) -> Daemon:
        root = Path(tempfile.mkdtemp(prefix="shoal-", dir="/tmp"))
        name = node_name or f"node{len(made) + 1}"
        daemon = Daemon(
            root,
            logs / f"{name}-{root.name}.log",
            name,
            labels=labels,
            tcp_port=free_tcp_port() if tcp else None,
            extra_args=args,
        )
        made.append(daemon)
        _LIVE.append(daemon)
        if start:
            daemon.start()
        return daemon

    yield make

    left = [d for d in made if d in _LIVE]
    for daemon in left:
        _LIVE.remove(daemon)
    cleanup_daemons(left)


@pytest.fixture(autouse=True)
def _test_daemons() -> Iterator[None]:
    """The daemons a test made itself are cleaned up when it ends, so that a process
    they leak fails that test. Module fixtures (`swarm`) are set up before this one:
    their daemons live on until the module ends."""
    before = list(_LIVE)
    yield
    mine = [d for d in _LIVE if d not in before]
    for daemon in mine:
        _LIVE.remove(daemon)
    cleanup_daemons(mine)


@pytest.fixture(scope="module")
def swarm(daemon_factory: DaemonFactory) -> Daemon:
    """A running daemon on which `docker swarm init` ran: one per test module."""
    daemon = daemon_factory(node_name="shoal-it")
    init_swarm(daemon)
    return daemon


@pytest.fixture
def cluster(swarm: Daemon) -> Iterator[Daemon]:
    """The module's swarm, left without services after the test."""
    yield swarm
    remove_all_services(swarm)
