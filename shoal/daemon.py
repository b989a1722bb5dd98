"""`shoal daemon`: one per machine. Always runs the agent; on managers the manager too.

This module is the composition root: the only place that sees the API, the manager
and the agent together and wires the agent to the dispatcher.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from shoal.agent.agent import Agent
from shoal.agent.executor.base import Executor
from shoal.api.server import APIServer
from shoal.errors import AlreadyInSwarm, InvalidArgument, NodeNotInSwarm, ShoalError
from shoal.ids import new_id
from shoal.log import get_logger
from shoal.manager.ca.root import RootCA
from shoal.manager.manager import Manager
from shoal.manager.store import Store
from shoal.manager.store.sqlite import SQLiteBackend
from shoal.types.node import ManagerStatus, Node, NodeSpec, NodeStatus
from shoal.types.service import JoinTokens
from shoal.types.swarm import Cluster, SwarmInitRequest, default_swarm_spec
from shoal.types.task import TaskState, stub_task

DEFAULT_DATA_DIR = Path("/var/lib/shoal")
DEFAULT_SOCKET = "unix:///run/shoal/shoal.sock"
DEFAULT_SWARM_PORT = 2377
DEFAULT_LISTEN_ADDR = f"0.0.0.0:{DEFAULT_SWARM_PORT}"
RUNTIMES = ("process", "docker", "sim")
MSG_LEAVE_MANAGER = (
    "You are attempting to leave the swarm on a node that is participating as a manager. "
    "Removing the last manager erases all current state of the swarm. Use `--force` to "
    "ignore this message."
)

log = get_logger("shoal.daemon")


class LeaveRefused(ShoalError):
    status = 503


@dataclass
class DaemonConfig:
    data_dir: Path = DEFAULT_DATA_DIR
    hosts: list[str] = field(default_factory=lambda: [DEFAULT_SOCKET])
    runtime: str = "process"
    node_name: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    live_restore: bool = False


@dataclass
class SwarmState:
    """What this node remembers of its swarm across restarts (data-dir/swarm/state.json)."""

    node_id: str
    cluster_id: str
    advertise_addr: str
    listen_addr: str


def make_executor(config: DaemonConfig) -> Executor:
    if config.runtime == "process":
        from shoal.agent.executor.process import ProcessExecutor

        return ProcessExecutor(config.data_dir / "agent", config.node_name, config.labels)
    raise InvalidArgument(f"runtime {config.runtime!r} is not available in this version")


def merge_spec(default: Any, given: Any) -> Any:
    """Fields the client set win; unset ones (None) come from the default, recursively."""
    if given is None:
        return default
    if not isinstance(given, msgspec.Struct) or not isinstance(default, msgspec.Struct):
        return given
    changes = {
        f: merge_spec(getattr(default, f), getattr(given, f)) for f in given.__struct_fields__
    }
    return msgspec.structs.replace(given, **changes)


def split_addr(addr: str, default_port: int) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        return addr, default_port
    return host, int(port)


class Daemon:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.data_dir = config.data_dir
        self.node_name = config.node_name
        self.runtime = config.runtime
        self.engine_labels = config.labels
        self.executor = make_executor(config)
        self._state: SwarmState | None = None
        self._manager: Manager | None = None
        self._agent: Agent | None = None
        self._api = APIServer(self, config.hosts)
        self._lock = asyncio.Lock()
        self.stopped = asyncio.Event()

    # DaemonContext ----------------------------------------------------------------------------
    @property
    def manager(self) -> Manager | None:
        return self._manager

    @property
    def node_id(self) -> str | None:
        return self._state.node_id if self._state else None

    @property
    def node_addr(self) -> str:
        return split_addr(self._state.advertise_addr, DEFAULT_SWARM_PORT)[0] if self._state else ""

    @property
    def manager_addr(self) -> str:
        if not self._state:
            return ""
        host, port = split_addr(self._state.advertise_addr, DEFAULT_SWARM_PORT)
        return f"{host}:{port}"

    def running_tasks(self) -> tuple[int, int]:
        if self._manager is None or self.node_id is None:
            return 0, 0
        tasks = self._manager.store.view().tasks_on_node(self.node_id)
        running = sum(1 for t in tasks if t.state == TaskState.RUNNING)
        return running, len(tasks)

    # paths ------------------------------------------------------------------------------------
    @property
    def _swarm_dir(self) -> Path:
        return self.data_dir / "swarm"

    def _load_state(self) -> SwarmState | None:
        path = self._swarm_dir / "state.json"
        if not path.exists():
            return None
        return SwarmState(**json.loads(path.read_text()))

    def _save_state(self, state: SwarmState) -> None:
        self._swarm_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._swarm_dir / "state.json.tmp"
        tmp.write_text(json.dumps(state.__dict__))
        tmp.replace(self._swarm_dir / "state.json")

    # lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        state = self._load_state()
        if state is not None:
            self._state = state
            self._start_swarm()
        await self._api.start()
        log.info(
            "daemon started",
            node_name=self.node_name,
            runtime=self.runtime,
            data_dir=str(self.data_dir),
            swarm=state is not None,
        )

    def _start_swarm(self) -> None:
        assert self._state is not None
        store = Store(SQLiteBackend(self._swarm_dir / "store.db"))
        self._manager = Manager(store)
        self._manager.start()
        self._agent = Agent(
            self._state.node_id, self.node_addr, self.executor, self._manager.dispatcher
        )
        self._agent.start()

    async def _stop_swarm(self, stop_tasks: bool) -> None:
        if self._agent is not None:
            await self._agent.stop(stop_tasks=stop_tasks)
            self._agent = None
        if self._manager is not None:
            await self._manager.stop()
            self._manager = None

    async def stop(self) -> None:
        await self._api.stop()
        await self._stop_swarm(stop_tasks=not self.config.live_restore)
        log.info("daemon stopped")
        self.stopped.set()

    # swarm ------------------------------------------------------------------------------------
    async def swarm_init(self, request: SwarmInitRequest) -> str:
        async with self._lock:
            if self._state is not None:
                raise AlreadyInSwarm()
            listen = request.listen_addr or DEFAULT_LISTEN_ADDR
            advertise = request.advertise_addr or split_addr(listen, DEFAULT_SWARM_PORT)[0]
            if advertise in ("0.0.0.0", "::", ""):
                advertise = "127.0.0.1"
            host, port = split_addr(advertise, split_addr(listen, DEFAULT_SWARM_PORT)[1])
            state = SwarmState(
                node_id=new_id(),
                cluster_id=new_id(),
                advertise_addr=f"{host}:{port}",
                listen_addr=listen,
            )
            ca = RootCA.create()
            shutil.rmtree(self._swarm_dir, ignore_errors=True)
            certs = self._swarm_dir / "certificates"
            certs.mkdir(parents=True)
            (certs / "swarm-root-ca.crt").write_bytes(ca.cert_pem)
            key = certs / "swarm-root-ca.key"
            key.touch(mode=0o600)
            key.write_bytes(ca.key_pem)
            spec = merge_spec(default_swarm_spec(), request.spec)
            store = Store(SQLiteBackend(self._swarm_dir / "store.db"))
            description = msgspec.structs.replace(self.executor.describe(), tls_info=ca.tls_info())

            def bootstrap(tx: Any) -> None:
                tx.create(
                    Cluster(
                        id=state.cluster_id,
                        spec=spec,
                        tls_info=ca.tls_info(),
                        default_addr_pool=request.default_addr_pool or ["10.0.0.0/8"],
                        subnet_size=request.subnet_size or 24,
                        data_path_port=request.data_path_port or 4789,
                        join_tokens=JoinTokens(
                            worker=ca.new_join_token(), manager=ca.new_join_token()
                        ),
                    )
                )
                tx.create(
                    Node(
                        id=state.node_id,
                        spec=NodeSpec(labels={}, role="manager", availability="active"),
                        description=description,
                        status=NodeStatus(state="ready", addr=host),
                        manager_status=ManagerStatus(
                            leader=True, reachability="reachable", addr=f"{host}:{port}"
                        ),
                    )
                )

            store.update(bootstrap)
            store.close()
            self._save_state(state)
            self._state = state
            self._start_swarm()
            log.info("swarm initialized", node=state.node_id, cluster=state.cluster_id)
            return state.node_id

    async def swarm_leave(self, force: bool) -> None:
        async with self._lock:
            if self._state is None:
                raise NodeNotInSwarm()
            if self._manager is not None and not force:
                raise LeaveRefused(MSG_LEAVE_MANAGER)
            await self._stop_swarm(stop_tasks=True)
            for tid in self.executor.known_task_ids():
                c = self.executor.controller(stub_task(tid))
                await c.shutdown(0)
                await c.remove()
            shutil.rmtree(self._swarm_dir, ignore_errors=True)
            self._state = None
            log.info("left the swarm")


async def serve(config: DaemonConfig) -> None:
    daemon = Daemon(config)
    await daemon.start()
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await daemon.stop()
