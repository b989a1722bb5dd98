"""The `Daemon` (what one node runs: agent, manager, API) and `serve`."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import ssl
from collections.abc import Callable

import aiohttp

from shoal.agent.agent import Agent
from shoal.agent.join import node_tls_info
from shoal.agent.metrics import AgentCollector
from shoal.agent.network.dns import Resolver, start_resolver
from shoal.agent.network.plumbing import plumbing_for
from shoal.agent.network.state import NetworkState
from shoal.agent.session import RemoteSession
from shoal.api.server import APIServer, build_app
from shoal.api.visualizer import VisualizerServer
from shoal.daemon import membership
from shoal.daemon.config import (
    DEFAULT_SWARM_PORT,
    DaemonConfig,
    SwarmState,
    make_executor,
    split_addr,
)
from shoal.daemon.embedded import Embedded
from shoal.daemon.files import NodeFiles
from shoal.daemon.ha import SharedStore, shared_keys
from shoal.daemon.members import (
    member_gone,
    member_request,
    open_member,
    start_pruner,
    still_manager,
    stop_member,
    stop_pruner,
)
from shoal.daemon.migrate import STORE_FILE
from shoal.daemon.renewal import on_trust, renew_loop, watch_trust
from shoal.errors import (
    InvalidArgument,
    ListenFailed,
    NodeNotInSwarm,
    NoLeader,
)
from shoal.log import get_logger
from shoal.manager.ca.issuer import Issuer
from shoal.manager.ca.rotation import adopt_root
from shoal.manager.clusterport.server import ClusterServer
from shoal.manager.etcd.datastore import ClientConfig
from shoal.manager.keys import ManagerKeys
from shoal.manager.manager import Manager
from shoal.manager.metrics import ManagerCollector
from shoal.manager.roster import manager_addrs, mark_leader
from shoal.manager.store import Backend, Store, Tx
from shoal.manager.store.encrypted import EncryptedBackend
from shoal.manager.store.sqlite import SQLiteBackend
from shoal.metrics import Metrics
from shoal.pki import NodeCredentials
from shoal.types.node import NodeResources
from shoal.types.session import TrustUpdate
from shoal.types.swarm import SwarmInitRequest, SwarmJoinRequest

# The garbage collector's generation thresholds on a manager (the default 700, 10, 10).
GC_THRESHOLDS = (10_000, 10, 10)
# What the daemon writes is its own: join tokens and registry credentials live in the
# store, task specs hold environments. Files 0600, directories 0700 (the data dir too).
DAEMON_UMASK = 0o077
DATA_DIR_MODE = 0o700
# How long an API write waits while the store moves from SQLite to etcd.
HOLD_WRITES_S = 60.0

log = get_logger("shoal.daemon")


class Daemon:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.data_dir = config.data_dir
        self.node_name = config.node_name
        self.engine_labels = config.labels
        self.executor = make_executor(config)
        self.network = NetworkState()
        self.plumbing = plumbing_for(self.executor, config.data_dir / "agent", self.network)
        self.resolver: Resolver | None = None  # the tasks' DNS, beside the plumbing
        self.runtime = self.executor.name
        # One registry for the daemon's whole life (managers and agents come and go
        # with init, join and leave; their counters go on): /metrics on every listener.
        self.metrics = Metrics(process=True)
        self.metrics.register(ManagerCollector(lambda: self._manager))
        self.metrics.register(AgentCollector(lambda: self._agent))
        # The engine the API passes the local engine's endpoints through to.
        self.engine_host: str | None = config.engine_host if self.runtime == "docker" else None
        self._state: SwarmState | None = None
        self._files = NodeFiles(self.data_dir, lambda: self._keys)
        self._manager: Manager | None = None
        # several managers on one etcd (`--datastore-endpoint`; shoal/daemon/ha.py)
        self._shared: SharedStore | None = None
        # the daemon's own etcd member, when the store lives in it (daemon/embedded.py)
        self._embedded: Embedded | None = None
        self._pruner: asyncio.Task[None] | None = None
        # the store moving from SQLite to etcd (daemon/migrate.py): API writes wait
        self._held: asyncio.Event | None = None
        self._migration: asyncio.Task[None] | None = None
        self._agent: Agent | None = None
        self._cluster_server: ClusterServer | None = None
        self._remote: RemoteSession | None = None
        self._creds: NodeCredentials | None = None
        # a manager's DEK/KEK (shoal/manager/keys.py); locked until unlocked with autolock
        self._keys: ManagerKeys | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._switch: asyncio.Task[None] | None = None  # a role change under way
        # writes forwarded to the leader: one client context and connection pool
        self._client_tls: tuple[NodeCredentials, ssl.SSLContext] | None = None
        self._forward_http: aiohttp.ClientSession | None = None
        # set when a manager refuses this node's certificate (its role changed), or
        # tells it what to trust (a root rotation: `_pending_trust`)
        self._renew_now = asyncio.Event()
        self._pending_trust: TrustUpdate | None = None
        self._ca_watch: asyncio.Task[None] | None = None
        self._api = APIServer(self, config.hosts, config.api_tls, config.insecure_tcp)
        self._visualizer = (
            VisualizerServer(self, *config.visualizer_addr) if config.visualizer_addr else None
        )
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
        return self._state.advertise_addr if self._state else ""

    @property
    def remote_managers(self) -> list[str]:
        if self._state is None:
            return []
        if self._state.runs_manager and self._shared is None:
            return [self._state.advertise_addr]
        return self._state.managers

    @property
    def several_managers(self) -> bool:
        return self._shared is not None

    @property
    def leader_id(self) -> str | None:
        return self._shared.leader_id if self._shared is not None else None

    async def store_moved(self) -> None:
        held = self._held
        if held is not None:  # the store moves to etcd: requests wait, not refused
            try:
                await asyncio.wait_for(held.wait(), HOLD_WRITES_S)
            except TimeoutError:
                raise NoLeader() from None

    async def write_leader(self, wait_s: float) -> str | None:
        await self.store_moved()
        if self._shared is None:
            return None
        return await self._shared.write_leader(wait_s)

    def manager_client_tls(self) -> ssl.SSLContext:
        creds = self._credentials()
        if self._client_tls is None or self._client_tls[0] is not creds:
            self._client_tls = (creds, creds.client_context())  # one while creds last
        return self._client_tls[1]

    def forward_http(self) -> aiohttp.ClientSession:
        if self._forward_http is None or self._forward_http.closed:
            self._forward_http = aiohttp.ClientSession()
        return self._forward_http

    def _set_managers(self, managers: list[str]) -> None:
        """The managers' cluster ports a manager said at registration (fail-over)."""
        state = self._state
        if state is None or not managers or managers == state.managers:
            return
        state.managers = list(managers)
        self._files.save_state(state)
        log.info("managers known", managers=managers)

    @property
    def locked(self) -> bool:
        return self._keys is not None and self._keys.locked

    def unlock_key(self) -> str:
        return (self._keys.unlock_key if self._keys else None) or ""

    async def swarm_unlock(self, key: str) -> None:
        async with self._lock:
            if self._state is None:
                raise NodeNotInSwarm()
            if self._keys is None or not self._keys.locked:
                raise InvalidArgument("swarm is not locked")
            self._keys.unlock(key)
            self._creds = self._files.load_creds()
            await self._start_manager()
            log.info("swarm unlocked")

    async def set_autolock(self, on: bool, rotate: bool) -> None:
        """After `swarm update`: autolock on or off, or a new unlock key. The node's
        private keys are written again under the new KEK."""
        async with self._lock:
            root_key = self._files.root_key_path
            root_pem = self._files.read_private_key(root_key) if root_key.exists() else None
            if self._keys is None or not self._keys.set_autolock(on, rotate):
                return
            if self._creds is not None:
                self._files.save_creds(self._creds)
            if root_pem is not None:
                self._files.write_private_key(root_key, root_pem)
            log.info("manager keys changed", autolock=on, rotated=rotate)

    def running_tasks(self) -> tuple[int, int]:
        if self._agent is None:
            return 0, 0
        return self._agent.task_counts()

    def dependency_counts(self) -> dict[str, int]:
        return {} if self._agent is None else self._agent.dependency_counts()

    # lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(DATA_DIR_MODE)
        if self.plumbing is not None:  # before any task: what an earlier run left
            self.resolver = start_resolver(self.network, self.plumbing)
            known = self.executor.known_task_ids()
            await self.plumbing.start(set(known), getattr(self.executor, "holder_pids", list)())
        state = self._files.load_state()
        if state is not None:
            self._state = state
            if member_gone(self, state):
                # a manager on embedded members whose member was taken out (demoted
                # while stopped): a worker now (it renews and is told its role)
                log.warning("this manager's etcd member is gone: starting as a worker")
                state.runs_manager, state.role = False, "worker"
                self._files.save_state(state)
            if state.runs_manager:
                if ManagerKeys.exists(self._files.swarm_dir):
                    self._keys = ManagerKeys.load(self._files.swarm_dir)
                else:  # a swarm made before encryption at rest: its store is sealed from now on
                    self._keys = ManagerKeys.create(self._files.swarm_dir, autolock=False)
            if self.locked:
                log.warning("swarm is locked: `docker swarm unlock` to start the manager")
            else:
                self._creds = self._files.load_creds()
                if state.runs_manager:
                    await self._start_manager()
                else:
                    self._start_worker()
        await self._api.start()
        if self._visualizer is not None:
            await self._visualizer.start()
        log.info(
            "daemon started",
            node_name=self.node_name,
            runtime=self.runtime,
            data_dir=str(self.data_dir),
            swarm=state is not None,
        )

    def _resources(self) -> NodeResources | None:
        c = self.config
        if c.resources_cpus is None and c.resources_memory is None:
            return None
        measured = self.executor.describe().resources
        return NodeResources(
            nano_cpus=int(c.resources_cpus * 1e9)
            if c.resources_cpus is not None
            else measured.nano_cpus,
            memory_bytes=c.resources_memory
            if c.resources_memory is not None
            else measured.memory_bytes,
        )

    async def _open_backend(self) -> Backend:
        """SQLite in the swarm dir while this is the only manager; else the external
        etcd of `--datastore-endpoint`, or this node's embedded member (started on its
        data first), the store read."""
        assert self._state is not None
        if self.config.datastore is not None:
            config: ClientConfig = self.config.datastore
        else:
            embedded = await open_member(self)
            if embedded is None:
                return SQLiteBackend(self._files.swarm_dir / STORE_FILE)
            config = embedded
        self._shared = await SharedStore.open(config, self._state.cluster_id, self._state.node_id)
        return self._shared.backend

    async def _start_manager(self, bootstrap: Callable[[Tx], None] | None = None) -> None:
        """Open the store, start the manager's loops and the cluster port, then the local
        agent (in-process session). `bootstrap` writes the first objects at `swarm init`
        once the cluster port's real port is known."""
        assert self._state is not None and self._creds is not None
        assert self._keys is not None and self._keys.dek is not None
        store = Store(
            EncryptedBackend(await self._open_backend(), self._keys.dek), metrics=self.metrics
        )
        manager = Manager(store, metrics=self.metrics)
        root = self._files.root_ca()
        host, port = split_addr(self._state.listen_addr, DEFAULT_SWARM_PORT)
        issuer = Issuer(store, root, self.remote_managers)
        shared = self._shared
        keys = self._keys
        server = ClusterServer(
            store,
            manager.dispatcher,
            issuer,
            root,
            self._creds,
            self._state.cluster_id,
            leading=lambda: manager.leading,
            shared_keys=(lambda: shared_keys(keys.dek or b"", root.key_pem)) if shared else None,
            api=build_app(self, forwarded=True) if shared else None,
            join_via_leader=shared.join_via_leader(self._credentials) if shared else None,
            member=(
                (lambda body, node_id: member_request(self, body, node_id))
                if not self.config.datastore
                else None
            ),
        )
        try:
            bound = await server.start(host or "0.0.0.0", port)
        except OSError as e:
            store.close()
            if self._shared is not None:
                await self._shared.stop()
                self._shared = None
            raise ListenFailed(f"listen tcp {host}:{port}: {e.strerror or e}") from e
        # a port picked at init (or at a manager's join) is the node's from then on
        if port == 0:
            self._state.listen_addr = f"{host}:{bound}"
        adv_host, adv_port = split_addr(self._state.advertise_addr, port)
        if adv_port == 0 or port == 0:
            self._state.advertise_addr = f"{adv_host}:{bound}"
        self._cluster_server = server
        self._manager = manager
        if shared is None:
            if bootstrap is not None:
                await store.update(bootstrap)
            await store.update(lambda tx: adopt_root(tx, root))
            issuer.managers[:] = self.remote_managers
            manager.start()
        else:
            # follow and campaign; `swarm init` waits to lead (its first writes)
            first = [bootstrap] if bootstrap is not None else []
            node_id = self._state.node_id

            def on_elected(tx: Tx) -> None:
                adopt_root(tx, root)
                mark_leader(tx, node_id)

            first.append(on_elected)
            await shared.start(manager, self._state.advertise_addr, first, bootstrap is not None)
            start_pruner(self, manager, shared)
        # The store's tables and the loops' indexes are long-lived dicts and sets of up
        # to 100ks of entries (gc=False structs, strings): a full collection still visits
        # every entry (50-150 ms at 200k tasks, the event loop stopped; issue 15). They
        # exist from here on (created empty in the constructors, filled in place), so
        # they are moved out of the collector's generations once; what is created later
        # is collected as usual.
        gc.freeze()
        # What stays is then mostly what a thousand agent sessions keep (coroutines,
        # futures, TLS objects: 200k objects that every full collection walks, 100-260
        # ms with the event loop stopped). A larger youngest generation lets the
        # short-lived objects of a busy manager (a request, a round's events) die
        # young instead of reaching the oldest generation, whose growth is what starts
        # a full collection (docs/sim.md).
        gc.set_threshold(*GC_THRESHOLDS)
        if shared is not None:
            # the local agent as any other: a session with whichever manager leads
            # (the managers as its own replica knows them)
            state = self._state
            self._remote = RemoteSession(
                lambda: (
                    [state.advertise_addr]
                    + [a for a in manager_addrs(manager.store.view()) if a != state.advertise_addr]
                ),
                self._credentials,
                on_refused=self._renew_now.set,
                on_trust=lambda m: on_trust(self, m),
                tls_info=lambda: node_tls_info(self._credentials()),
                on_managers=self._set_managers,
                manager_addr=state.advertise_addr,
            )
        self._agent = Agent(
            self._state.node_id,
            self.node_addr,
            self.executor,
            self._remote if self._remote is not None else manager.dispatcher,
            self._resources(),
            network=self._network(),
            metrics=self.metrics,
        )
        self._agent.start()
        self._renewer = asyncio.create_task(renew_loop(self), name="cert-renewer")
        self._ca_watch = asyncio.create_task(watch_trust(self, manager), name="ca-watch")

    def _start_worker(self) -> None:
        assert self._state is not None
        state = self._state
        self._remote = RemoteSession(
            lambda: state.managers,
            self._credentials,
            on_refused=self._renew_now.set,
            on_trust=lambda m: on_trust(self, m),
            tls_info=lambda: node_tls_info(self._credentials()),
            on_managers=self._set_managers,
        )
        self._agent = Agent(
            state.node_id,
            self.node_addr,
            self.executor,
            self._remote,
            self._resources(),
            network=self._network(),
            metrics=self.metrics,
        )
        self._agent.start()
        self._renewer = asyncio.create_task(renew_loop(self), name="cert-renewer")

    def _network(self) -> NetworkState:
        """The agent's network table; the plumbing's underlay is this node's address."""
        if self.plumbing is not None:
            self.plumbing.underlay_addr = self.node_addr
        return self.network

    def _credentials(self) -> NodeCredentials:
        assert self._creds is not None
        return self._creds

    async def _stop_swarm(self, stop_tasks: bool, keep_node: bool = False) -> None:
        """`keep_node`: the node stays in the swarm with another role (its tasks'
        plumbing and resolver stay)."""
        await stop_pruner(self)
        if self._ca_watch is not None:
            self._ca_watch.cancel()
            await asyncio.gather(self._ca_watch, return_exceptions=True)
            self._ca_watch = None
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
            self._renewer = None
        if self._agent is not None:
            await self._agent.stop(stop_tasks=stop_tasks)
            self._agent = None
        if self.plumbing is not None and not keep_node:
            # Without live-restore the tasks are stopped: nothing of theirs is kept.
            await self.plumbing.close(remove_all=stop_tasks)
        if self.resolver is not None and not keep_node:
            await self.resolver.close()
            self.resolver = None
        if self._remote is not None:
            await self._remote.close()
            self._remote = None
        if self._cluster_server is not None:
            await self._cluster_server.stop()
            self._cluster_server = None
        if self._shared is not None:
            await self._shared.stop()  # resigns: another manager leads at once
        if self._manager is not None:
            await self._manager.stop()
            self._manager = None
        self._shared = None

    async def stop(self) -> None:
        await self._api.stop()
        if self._visualizer is not None:
            await self._visualizer.stop()
        if self._switch is not None:  # a role change under way ends first (it is short)
            await asyncio.gather(self._switch, return_exceptions=True)
        if self._migration is not None:
            await asyncio.gather(self._migration, return_exceptions=True)
        # A manager demoted (or removed) but stopped before its role switched takes
        # its member out of the etcd cluster: stopped while still counted, it would
        # weigh against the others' quorum.
        demoted = self._embedded is not None and not still_manager(self)
        await self._stop_swarm(stop_tasks=not self.config.live_restore)
        await stop_member(self, leave=demoted)
        if self._forward_http is not None:
            await self._forward_http.close()
        log.info("daemon stopped")
        self.stopped.set()

    # swarm ------------------------------------------------------------------------------------
    async def swarm_init(self, request: SwarmInitRequest) -> str:
        return await membership.swarm_init(self, request)

    async def swarm_join(self, request: SwarmJoinRequest) -> None:
        await membership.swarm_join(self, request)

    async def swarm_leave(self, force: bool) -> None:
        await membership.swarm_leave(self, force)


async def serve(config: DaemonConfig) -> None:
    os.umask(DAEMON_UMASK)
    daemon = Daemon(config)
    await daemon.start()
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await daemon.stop()
