"""What a daemon is started with (`DaemonConfig`, from `shoal daemon`'s options), what
a node remembers of its swarm (`SwarmState`), and the helpers both rest on: the
runtime and its executor, cluster-port addresses.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from shoal.agent.executor.base import Executor
from shoal.agent.executor.docker_engine import DEFAULT_ENGINE_HOST, EngineError, engine_answers
from shoal.agent.executor.sim import SimConfig
from shoal.api.listen import APITLS
from shoal.errors import InvalidArgument
from shoal.manager.etcd.datastore import DatastoreConfig

DEFAULT_DATA_DIR = Path("/var/lib/shoal")
DEFAULT_SOCKET = "unix:///run/shoal/shoal.sock"
DEFAULT_SWARM_PORT = 2377
DEFAULT_LISTEN_ADDR = f"0.0.0.0:{DEFAULT_SWARM_PORT}"
# The runtimes `--runtime` offers (`sim`: hollow tasks for scale tests, docs/sim.md).
RUNTIMES = ("auto", "process", "docker", "sim")
# `--runtime auto`: docker when an engine answers at --engine-host, else process.
DEFAULT_RUNTIME = "auto"


@dataclass
class DaemonConfig:
    data_dir: Path = DEFAULT_DATA_DIR
    hosts: list[str] = field(default_factory=lambda: [DEFAULT_SOCKET])
    runtime: str = "process"
    node_name: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    live_restore: bool = False
    # The Docker Engine the docker runtime drives (and the API passes through to).
    engine_host: str = DEFAULT_ENGINE_HOST
    # What the node advertises to the scheduler instead of what the runtime measures.
    resources_cpus: float | None = None
    resources_memory: int | None = None
    # The TLS of the API's tcp:// hosts (--tls/--tlsverify), and --insecure-tcp.
    api_tls: APITLS | None = None
    insecure_tcp: bool = False
    # `--visualizer-addr HOST:PORT`: the visualizer on a port of its own (None: only on
    # the API's hosts, at /visualizer).
    visualizer_addr: tuple[str, int] | None = None
    # What the sim runtime pretends (start delay, failures); its defaults otherwise.
    sim: SimConfig | None = None
    # `--datastore-endpoint ...`: the manager's store on an external etcd instead of
    # SQLite (docs/ha.md; one manager writes, fenced by its etcd leadership).
    datastore: DatastoreConfig | None = None


@dataclass
class SwarmState:
    """What this node remembers of its swarm across restarts (data-dir/swarm/state.json).

    `role` is the role this node joined with; `runs_manager` says whether it holds the
    cluster state (the node that ran `swarm init`); `managers` are the cluster ports
    its agent dials.
    """

    node_id: str
    cluster_id: str
    advertise_addr: str
    listen_addr: str
    role: str = "manager"
    runs_manager: bool = True
    managers: list[str] = field(default_factory=list)


def resolve_runtime(runtime: str, engine_host: str) -> str:
    """`auto` is docker when an engine answers at `engine_host`, else process."""
    if runtime == "auto":
        return "docker" if engine_answers(engine_host) else "process"
    return runtime


def make_executor(config: DaemonConfig) -> Executor:
    runtime = resolve_runtime(config.runtime, config.engine_host)
    if runtime == "process":
        from shoal.agent.executor import cgroups
        from shoal.agent.executor.process import ProcessExecutor, protect_daemon

        protect_daemon()
        return ProcessExecutor(
            config.data_dir / "agent", config.node_name, config.labels, cgroups.current()
        )
    if runtime == "docker":
        from shoal.agent.executor.docker import DockerExecutor

        try:
            return DockerExecutor(
                config.data_dir / "agent", config.node_name, config.labels, config.engine_host
            )
        except EngineError as e:
            raise InvalidArgument(f"the docker runtime needs a Docker Engine: {e.message}") from e
    if runtime == "sim":
        from shoal.agent.executor.sim import SimExecutor

        return SimExecutor(config.node_name, config.labels, config.sim)
    raise InvalidArgument(f"runtime {config.runtime!r} is not available in this version")


def split_addr(addr: str, default_port: int) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        return addr, default_port
    return host.strip("[]"), int(port)


def local_addr_towards(remote_host: str) -> str:
    """The local address this machine uses to reach `remote_host` (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((remote_host, 9))
            return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"
