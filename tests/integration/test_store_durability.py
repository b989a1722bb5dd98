"""An API write is acknowledged only once the store made it durable.

- In-process: the daemon's own API server on a manager whose backend holds its
  commits; the real docker CLI's `service create` does not return until they are
  released.
- End to end: `kill -9` of a daemon in the middle of 200 `service create` calls from 8
  clients; after a restart, every create that was acknowledged is there.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from shoal.api.server import APIServer
from shoal.manager.manager import Manager
from shoal.manager.store import MemoryBackend, Store
from shoal.types.swarm import SwarmInitRequest, SwarmJoinRequest

from .harness import DaemonFactory, docker_cli, init_swarm, wait_until

pytestmark = pytest.mark.integration

HELD_S = 1.5  # how long the commit is held while the CLI must keep waiting
CLI_TIMEOUT_S = 30.0
CLIENTS = 8
CREATES = 200
KILL_AFTER = 60  # acknowledged creates before the kill


class ManagerOnly:
    """The API's view of a daemon that is a manager and nothing else (no agent)."""

    node_name = "held"
    runtime = "process"
    engine_labels: dict[str, str] = {}
    engine_host = None

    def __init__(self, manager: Manager, data_dir: Path) -> None:
        self._manager = manager
        self.data_dir = data_dir
        self.metrics = manager.metrics

    @property
    def manager(self) -> Manager:
        return self._manager

    @property
    def node_id(self) -> str:
        return "held-node"

    node_addr = "127.0.0.1"
    manager_addr = "127.0.0.1:2377"
    remote_managers: list[str] = []
    locked = False  # no autolock here
    several_managers = False  # one manager: it takes every write
    leader_id = None

    async def store_moved(self) -> None:
        return None

    async def write_leader(self, wait_s: float) -> str | None:
        return None

    def running_tasks(self) -> tuple[int, int]:
        return 0, 0

    def dependency_counts(self) -> dict[str, int]:
        return {}

    async def swarm_init(self, request: SwarmInitRequest) -> str:
        raise NotImplementedError

    async def swarm_join(self, request: SwarmJoinRequest) -> None:
        raise NotImplementedError

    async def swarm_leave(self, force: bool) -> None:
        raise NotImplementedError


def test_service_create_returns_only_once_durable(tmp_path: Path) -> None:
    sock = tmp_path / "api.sock"
    config = tmp_path / "docker-config"
    config.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env.update(DOCKER_HOST=f"unix://{sock}", DOCKER_CONFIG=str(config))

    async def main() -> None:
        backend = MemoryBackend()
        store = Store(backend)
        server = APIServer(ManagerOnly(Manager(store), tmp_path), [f"unix://{sock}"])  # type: ignore[arg-type]
        await server.start()
        try:
            backend.hold()
            cli = await asyncio.create_subprocess_exec(
                docker_cli(), "service", "create", "--detach", "--no-resolve-image",
                "--name", "held", "busybox", "sleep", "1000",
                env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            exited = asyncio.create_task(cli.communicate())
            done, _ = await asyncio.wait({exited}, timeout=HELD_S)
            # The service is applied (reads see it) but the CLI still waits for its ack.
            assert not done, "the CLI returned before the commit was durable"
            assert [s.spec.name for s in store.view().services()] == ["held"]
            assert store.durable_index < store.index
            assert backend.objects == {}
            backend.release()
            out, err = await asyncio.wait_for(exited, CLI_TIMEOUT_S)
            assert cli.returncode == 0, err
            (service,) = store.view().services()
            assert out.decode().strip() == service.id
            assert ("service", service.id) in backend.objects
        finally:
            backend.release()
            await server.stop()

    asyncio.run(main())


def test_every_acknowledged_create_survives_a_kill_9(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(node_name="burst")
    init_swarm(daemon)
    acked: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    enough = threading.Event()

    def client(n: int) -> None:
        # One connection per request, closed whatever happens (daemon.http): a call cut
        # by the kill leaves no socket behind.
        for i in range(CREATES // CLIENTS):
            spec: dict[str, Any] = {
                "Name": f"c{n}-{i}",
                "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}},
                "Mode": {"Replicated": {"Replicas": 0}},
            }
            try:
                resp = daemon.http("POST", "/v1.41/services/create", spec)
            except (OSError, http.client.HTTPException) as e:  # gone: not acknowledged
                with lock:
                    errors.append(e)
                return
            assert resp.status == 201, resp
            with lock:
                acked.append(resp.json()["ID"])
                if len(acked) >= KILL_AFTER:
                    enough.set()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    assert enough.wait(CLI_TIMEOUT_S), f"only {len(acked)} creates acknowledged"
    daemon.kill9()
    for t in threads:
        t.join(CLI_TIMEOUT_S)
    assert errors, "the kill came after the last create: nothing was in flight"
    daemon.start()
    listed = wait_until(lambda: {s["ID"] for s in daemon.api.services()}, what="services")
    missing = set(acked) - listed
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged creates lost"
