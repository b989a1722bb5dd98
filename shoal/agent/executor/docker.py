"""The `docker` executor: each task a container on the node's Docker Engine.

As SwarmKit's container adapter in dockerd does it: `prepare` pulls the image if the
engine does not have it (with the credentials the client sent) and creates the
container, named and labelled as Swarm names and labels them; `start` starts it and
returns once it runs and, if it has a healthcheck, once it is healthy; `wait` returns
its exit status, or fails the task when the container turns unhealthy (after stopping
it), so the restart policy replaces it. Task state comes from the engine: one
`/events` subscription wakes waiters up, and they read the container's state with
`inspect`.

The container is found by its `com.docker.swarm.task.id` label, never created twice
for one task, so a restarted agent adopts the containers an earlier one started.
Containers carry a label naming this agent (`io.shoal.agent`, kept in the agent's
data dir): `known_task_ids` lists only those, so several shoal nodes can share an
engine without touching each other's containers.

Image policy: a task runs the image its spec names. When the engine already has that
reference (a digest pinned by the manager, or a tag) nothing is pulled; otherwise it is
pulled first. Swarm pulls tags on every start; the manager pins digests (the CLI asks
`/distribution`), so a new digest is what triggers a pull here.

Secrets and configs go as dockerd mounts them: onto a tmpfs of the task's own
(`<agent dir>/deps/<task id>`), read-only, each file bind-mounted read-only at its
target (shoal/agent/secrets.py); the tmpfs goes when the container is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

from shoal.agent import secrets as task_secrets
from shoal.agent.executor.base import ExecutorError, ExitStatus, RuntimeState
from shoal.agent.executor.docker_engine import (
    DEFAULT_ENGINE_HOST,
    RESYNC,
    WATCH_RESYNC_S,
    EngineClient,
    EngineError,
    EngineEvents,
    list_containers_sync,
    sync_call,
)
from shoal.agent.executor.docker_spec import (
    LABEL_AGENT,
    LABEL_TASK_ID,
    NodeInfo,
    bound_host_ports,
    create_body,
    engine_stop_timeout,
    exit_status,
    health_status,
    on_swarm_networks,
    pull_reference,
    stop_grace_s,
    task_name,
    with_host_ports,
)
from shoal.agent.network.plumbing import Plumbing
from shoal.log import get_logger
from shoal.types.agent import Dependency, LogMessage, LogOptions
from shoal.types.base import now_ns, parse_time
from shoal.types.meta import NO_TASK_META, TaskMeta
from shoal.types.node import EngineDescription, EnginePlugin, NodeDescription, NodeResources
from shoal.types.service import ContainerSpec, Platform
from shoal.types.task import Task

EXECUTOR_NAME = "docker"
AGENT_ID_FILE = "docker-agent-id"
# Under the agent's data dir: one tmpfs per task that has secrets or configs.
DEPS_DIR = "deps"
AGENT_ID_BYTES = 16
# Container creates and starts in flight at once: enough to keep the engine busy (it
# is the bottleneck), few enough not to swamp it.
MAX_CONCURRENT_STARTS = 8
# How long a waiter waits for the event stream before it relies on polling alone.
EVENTS_CONNECT_TIMEOUT_S = 10.0
# /info is read when the executor is made, and again by describe() once this old.
INFO_TTL_S = 60.0
# How long an image the engine had is taken to be there still (a create that finds
# it gone pulls it again).
IMAGE_KNOWN_TTL_S = 30.0
NANOS_PER_CPU = 1_000_000_000

ERR_DESTROYED = "dockerexec: container destroyed"
ERR_UNHEALTHY = "unhealthy container"

log = get_logger("shoal.agent.docker")


def _load_agent_id(data_dir: Path) -> str:
    """This agent's ID, made once and kept in its data dir."""
    path = data_dir / AGENT_ID_FILE
    with contextlib.suppress(OSError):
        existing = path.read_text().strip()
        if existing:
            return existing
    data_dir.mkdir(parents=True, exist_ok=True)
    agent_id = secrets.token_hex(AGENT_ID_BYTES)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(agent_id + "\n")
    os.replace(tmp, path)
    return agent_id


def _parse_labels(items: list[Any] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, _, value = str(item).partition("=")
        if key:
            out[key] = value
    return out


class DockerExecutor:
    """Runs tasks as containers on the Docker Engine at `host`."""

    name = EXECUTOR_NAME

    def __init__(
        self,
        data_dir: Path,
        hostname: str,
        engine_labels: dict[str, str],
        host: str = DEFAULT_ENGINE_HOST,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.hostname = hostname
        self.deps_dir = self.data_dir / DEPS_DIR
        self.dependencies: dict[str, Dependency] = {}
        # told the moment a running task turns unhealthy, before it is stopped (the
        # agent takes it out of the node's backends)
        self.on_unhealthy: Callable[[str], None] | None = None
        self.engine_labels = dict(engine_labels)
        self.host = host
        # Raises EngineError when no engine answers: the daemon says so at startup.
        self._info: dict[str, Any] = sync_call(host, "GET", "info") or {}
        self._info_at = time.monotonic()
        self.agent_id = _load_agent_id(self.data_dir)
        self.client = EngineClient(host)
        self.events = EngineEvents(self.client, [f"{LABEL_AGENT}={self.agent_id}"])
        self.starts = asyncio.Semaphore(MAX_CONCURRENT_STARTS)
        # The node's overlay plumbing (set by the daemon when it runs as root).
        self.plumbing: Plumbing | None = None
        self._pulls: dict[str, asyncio.Future[None]] = {}
        # Image references the engine had lately (monotonic time seen): one image
        # inspect per image, not one per task.
        self._images: dict[str, float] = {}

    # --- the Executor protocol ---------------------------------------------------------

    def describe(self) -> NodeDescription:
        if time.monotonic() - self._info_at > INFO_TTL_S:
            try:
                self._info = sync_call(self.host, "GET", "info") or self._info
            except EngineError as e:
                log.warning("cannot refresh the engine's /info", error=e.message)
            self._info_at = time.monotonic()
        info = self._info
        labels = _parse_labels(info.get("Labels"))
        labels.update(self.engine_labels)
        return NodeDescription(
            hostname=self.hostname,
            platform=Platform(
                os=str(info.get("OSType") or "linux"),
                architecture=str(info.get("Architecture") or ""),
            ),
            resources=NodeResources(
                nano_cpus=int(info.get("NCPU") or 0) * NANOS_PER_CPU,
                memory_bytes=int(info.get("MemTotal") or 0),
            ),
            engine=EngineDescription(
                engine_version=str(info.get("ServerVersion") or ""),
                labels=labels or None,  # dockerd omits none
                plugins=_plugins(info.get("Plugins") or {}),
            ),
        )

    def node_info(self, node_id: str) -> NodeInfo:
        return NodeInfo(
            id=node_id,
            hostname=self.hostname,
            os=str(self._info.get("OSType") or "linux"),
            architecture=str(self._info.get("Architecture") or ""),
        )

    def controller(self, task: Task, meta: TaskMeta = NO_TASK_META) -> DockerController:
        return DockerController(self, task, meta)

    def known_task_ids(self) -> list[str]:
        """Tasks of the containers this agent made (a blocking call: the protocol is
        synchronous; the engine answers a label-filtered list in milliseconds)."""
        try:
            found = list_containers_sync(self.host, {"label": [f"{LABEL_AGENT}={self.agent_id}"]})
        except EngineError as e:
            log.warning("cannot list the engine's containers", error=e.message)
            return []
        ids = {str((c.get("Labels") or {}).get(LABEL_TASK_ID) or "") for c in found}
        ids.discard("")
        # A task whose container is gone may still hold its secrets tmpfs: known too, so
        # the agent removes it (and the tmpfs with it).
        with contextlib.suppress(OSError):
            ids.update(p.name for p in self.deps_dir.iterdir())
        return sorted(ids)

    async def close(self) -> None:
        """Stop watching the engine; the containers keep running (adoption)."""
        await self.events.close()
        await self.client.close()

    def statistics(self) -> dict[str, int]:
        return {"pulls_in_flight": len(self._pulls), **self.events.statistics()}

    # --- shared by controllers ---------------------------------------------------------

    def image_known(self, image: str) -> bool:
        seen = self._images.get(image)
        return seen is not None and time.monotonic() - seen < IMAGE_KNOWN_TTL_S

    def note_image(self, image: str) -> None:
        self._images[image] = time.monotonic()

    def forget_image(self, image: str) -> None:
        self._images.pop(image, None)

    async def pull(self, image: str, registry_auth: str | None) -> None:
        """Pull `image` through the engine; one pull per reference at a time, however
        many tasks need it. ExecutorError with the engine's message on failure."""
        from_image, tag = pull_reference(image)
        key = f"{from_image}@{tag}"
        future = self._pulls.get(key)
        if future is None:
            future = asyncio.ensure_future(self.client.pull(from_image, tag, registry_auth))
            self._pulls[key] = future
            future.add_done_callback(lambda f: self._pull_done(key, f))
        try:
            await asyncio.shield(future)
        except EngineError as e:
            raise ExecutorError(e.message) from None

    def _pull_done(self, key: str, future: asyncio.Future[None]) -> None:
        self._pulls.pop(key, None)
        if not future.cancelled():
            future.exception()  # retrieved here: no "never retrieved" noise


def _plugins(plugins: dict[str, Any]) -> list[EnginePlugin]:
    """The engine's plugins as Swarm reports them (overlay is always there)."""
    found: set[tuple[str, str]] = {("Network", "overlay")}
    for kind in ("Volume", "Network", "Authorization", "Log"):
        for name in plugins.get(kind) or []:
            found.add((kind, str(name)))
    return [EnginePlugin(type=t, name=n) for t, n in sorted(found)]


class DockerController:
    """One task's container. Every method finds the container afresh by its task-ID
    label (cached once found), so a controller made by a restarted agent picks up
    what an earlier one did."""

    def __init__(self, executor: DockerExecutor, task: Task, meta: TaskMeta) -> None:
        self.task_id = task.id
        self.task = task
        self.meta = meta
        self._x = executor
        self._engine = executor.client
        self._deps = executor.deps_dir / task.id
        self._cid: str | None = None
        # True once prepare() created the container (so start() need not look first).
        self._created_here = False

    # --- finding the container ----------------------------------------------------------

    async def _find(self) -> dict[str, Any] | None:
        """The inspect answer of the task's container, or None when it has none."""
        try:
            if self._cid is not None:
                info = await self._engine.inspect_container(self._cid)
                if info is not None:
                    return info
                self._cid = None
            found = await self._engine.list_containers(
                {"label": [f"{LABEL_TASK_ID}={self.task_id}"]}
            )
            if not found:
                return None
            if len(found) > 1:
                log.warning("several containers for one task", task=self.task_id, count=len(found))
                found.sort(key=lambda c: (c.get("State") != "running", c.get("Created", 0)))
            info = await self._engine.inspect_container(str(found[0]["Id"]))
        except EngineError as e:
            raise ExecutorError(e.message) from None
        if info is not None:
            self._cid = str(info["Id"])
        return info

    async def _inspect(self, cid: str) -> dict[str, Any] | None:
        try:
            return await self._engine.inspect_container(cid)
        except EngineError as e:
            raise ExecutorError(e.message) from None

    @staticmethod
    def _state(info: dict[str, Any]) -> dict[str, Any]:
        state = info.get("State")
        return state if isinstance(state, dict) else {}

    def _runtime_state(self, info: dict[str, Any]) -> RuntimeState:
        state = self._state(info)
        cid = str(info["Id"])
        if state.get("Running"):
            return RuntimeState(
                exists=True,
                running=True,
                pid=state.get("Pid"),
                container_id=cid,
                host_ports=bound_host_ports(info, self.meta.host_ports)
                if not self._overlay()
                else None,
            )
        if state.get("Status") == "created":
            return RuntimeState(exists=True, running=False, container_id=cid)
        return RuntimeState(exists=True, running=False, container_id=cid, exit=exit_status(state))

    # --- the Controller protocol -----------------------------------------------------

    async def inspect(self) -> RuntimeState:
        info = await self._find()
        if info is None:
            return RuntimeState(exists=False, running=False)
        return self._runtime_state(info)

    async def prepare(self) -> None:
        # Created by name, as Swarm does: the name holds the task ID, so a container an
        # earlier agent made for this task makes the create fail with a conflict.
        node = self._x.node_info(self.task.node_id or "")
        body = create_body(
            self.task,
            node,
            self._x.agent_id,
            self.meta.service_name,
            self.meta.default_log_driver,
        )
        if self._overlay():
            body = on_swarm_networks(body, self.task)
        elif self.meta.host_ports:
            body = with_host_ports(body, self.meta.host_ports)
        image = str(body["Image"])
        await self._ensure_image(image)
        files = task_secrets.files_of(self.task, self._x.dependencies, self._template_context(body))
        if files:
            binds = await asyncio.to_thread(task_secrets.prepare_binds, self._deps, files)
            body["HostConfig"]["Mounts"].extend(binds)
        for attempt in range(2):
            try:
                async with self._x.starts:
                    self._cid = await self._engine.create_container(
                        task_name(self.task, self.meta.service_name), body
                    )
                self._created_here = True
                return
            except EngineError as e:
                if e.status == 409 and await self._find() is not None:
                    return  # created before (by this agent or an earlier one)
                if e.status != 404 or attempt:
                    raise ExecutorError(e.message) from None
                # The image went away between the check and the create.
                self._x.forget_image(image)
                await self._ensure_image(image)

    async def _ensure_image(self, image: str) -> None:
        if self._x.image_known(image):
            return
        try:
            if await self._engine.image_exists(image):
                self._x.note_image(image)
                return
        except EngineError as e:
            raise ExecutorError(e.message) from None
        try:
            await self._x.pull(image, self.meta.registry_auth)
        except ExecutorError as e:
            # What the engine would answer the create, with the pull's reason.
            raise ExecutorError(f"No such image: {image} (pull: {e})") from None

    async def start(self) -> RuntimeState:
        if self._created_here and self._cid is not None:
            # Made by prepare() just before: it is there, and not started yet.
            cid = self._cid
            with self._x.events.watch(cid) as events:
                try:
                    async with self._x.starts:
                        await self._engine.start_container(cid)
                except EngineError as e:
                    raise ExecutorError(e.message) from None
                await self._attach(cid)
                return await self._wait_healthy(cid, events)
        info = await self._find()
        if info is None:
            await self.prepare()
            info = await self._find()
            if info is None:
                raise ExecutorError(ERR_DESTROYED)
        cid = str(info["Id"])
        state = self._state(info)
        if not state.get("Running") and state.get("Status") != "created":
            return self._runtime_state(info)  # started and exited already
        # Watch before starting: the health events must not slip by.
        with self._x.events.watch(cid) as events:
            if not state.get("Running"):
                try:
                    async with self._x.starts:
                        await self._engine.start_container(cid)
                except EngineError as e:
                    raise ExecutorError(e.message) from None
            await self._attach(cid)
            return await self._wait_healthy(cid, events)

    def _overlay(self) -> bool:
        """True when the node's plumbing attaches this task to its swarm networks."""
        return bool(self.task.networks_attachments) and self._x.plumbing is not None

    async def _attach(self, cid: str) -> None:
        """Once the container runs: an interface per swarm network in its namespace
        (agent/network/plumbing.py), unless it has them already (an adopted task)."""
        plumbing = self._x.plumbing
        if plumbing is None or not self._overlay() or plumbing.task_netns(self.task_id):
            return
        info = await self._inspect(cid)
        pid = self._state(info or {}).get("Pid")
        if not pid:
            return  # exited already: wait() reports how
        try:
            await plumbing.attach(
                self.task_id,
                self.task.networks_attachments or [],
                f"/proc/{pid}/ns/net",
                host_ports=list(self.meta.host_ports),
            )
        except Exception as e:  # noqa: BLE001 - netlink errors too: the task cannot run
            await plumbing.detach(self.task_id)
            await self._stop(cid, 0)
            raise ExecutorError(f"cannot attach the task to its networks: {e}") from e

    async def _wait_healthy(self, cid: str, events: asyncio.Queue[str]) -> RuntimeState:
        """Once it runs: at once without a healthcheck, else once healthy (as Swarm's
        Start). Unhealthy first: stop it and fail the start."""
        unhealthy = False
        while True:
            info = await self._inspect(cid)
            if info is None:
                raise ExecutorError(ERR_DESTROYED)
            state = self._state(info)
            if not state.get("Running"):
                if unhealthy:
                    raise ExecutorError(_unhealthy_error(exit_status(state)))
                return self._runtime_state(info)  # wait() reports the exit
            health = health_status(state)
            if health is None or health == "healthy":
                return self._runtime_state(info)
            if health == "unhealthy" and not unhealthy:
                unhealthy = True
                await self._stop(cid, self._grace_s())
                continue
            await _next_event(events)

    async def wait(self) -> ExitStatus:
        cid = self._cid
        if cid is None:
            info = await self._find()
            if info is None:
                raise ExecutorError(ERR_DESTROYED)
            cid = str(info["Id"])
        with self._x.events.watch(cid) as events:
            await self._x.events.wait_connected(EVENTS_CONNECT_TIMEOUT_S)
            unhealthy = False
            while True:
                info = await self._inspect(cid)
                if info is None:
                    raise ExecutorError(ERR_DESTROYED)
                state = self._state(info)
                if not state.get("Running") and state.get("Status") != "created":
                    status = exit_status(state)
                    if unhealthy:
                        raise ExecutorError(_unhealthy_error(status))
                    return status
                if health_status(state) == "unhealthy" and not unhealthy:
                    # As Swarm: an unhealthy task is stopped and fails, and its restart
                    # policy replaces it.
                    unhealthy = True
                    log.info("container unhealthy: stopping it", task=self.task_id)
                    if self._x.on_unhealthy is not None:
                        self._x.on_unhealthy(self.task_id)
                    await self._stop(cid, self._grace_s())
                    continue
                await _next_event(events)

    async def shutdown(self, grace_s: float) -> None:
        info = await self._find()
        if info is None or not self._state(info).get("Running"):
            return
        await self._stop(str(info["Id"]), grace_s)

    async def remove(self) -> None:
        info = await self._find()
        if info is not None:
            try:
                await self._engine.remove_container(str(info["Id"]))
            except EngineError as e:
                raise ExecutorError(e.message) from None
            self._cid = None
        if self._x.plumbing is not None:
            await self._x.plumbing.detach(self.task_id)
        await asyncio.to_thread(task_secrets.release_binds, self._deps)

    async def logs(self, options: LogOptions) -> AsyncIterator[LogMessage]:
        if not options.stdout and not options.stderr:
            return
        info = await self._find()
        if info is None:
            return
        params = {
            "stdout": "1" if options.stdout else "0",
            "stderr": "1" if options.stderr else "0",
            "timestamps": "1",
            "details": "1",
            "follow": "1" if options.follow else "0",
            "tail": "all" if options.tail is None else str(max(options.tail, 0)),
        }
        if options.since_ns:
            params["since"] = _engine_time(options.since_ns)
        if options.until_ns:
            params["until"] = _engine_time(options.until_ns)
        tty = bool((info.get("Config") or {}).get("Tty"))
        try:
            async for stream, payload in self._engine.logs(str(info["Id"]), params, tty):
                # "<RFC 3339 time> <k=v,... attributes, maybe none> <line>"
                stamp, sep, rest = payload.partition(b" ")
                try:
                    ts = parse_time(stamp.decode()) if sep else now_ns()
                except ValueError:
                    ts, rest = now_ns(), payload
                raw_attrs, _, data = rest.partition(b" ")
                yield LogMessage(
                    task_id=self.task_id,
                    timestamp_ns=ts,
                    stream=stream,
                    data=data,
                    attrs=_parse_attrs(raw_attrs),
                )
        except EngineError as e:
            raise ExecutorError(e.message) from None

    # --- helpers ------------------------------------------------------------------------

    def _template_context(self, body: dict[str, Any]) -> dict[str, Any]:
        """What config templates may name about this task (shoal/agent/templates.py)."""
        t = self.task
        node = self._x.node_info(t.node_id or "")
        env = dict(str(e).partition("=")[::2] for e in body.get("Env") or [])
        return {
            "Service": {"ID": t.service_id, "Name": self.meta.service_name, "Labels": {}},
            "Task": {
                "ID": t.id,
                "Name": task_name(t, self.meta.service_name),
                "Slot": t.slot if t.slot is not None else "",
            },
            "Node": {
                "ID": node.id,
                "Hostname": node.hostname,
                "Platform": {
                    "OS": node.os,
                    "Architecture": node.architecture or platform.machine(),
                },
            },
            "env": env,
        }

    def _grace_s(self) -> float:
        return stop_grace_s(self.task.spec.container_spec or ContainerSpec())

    async def _stop(self, cid: str, grace_s: float) -> None:
        """The container's stop signal, then SIGKILL after `grace_s` (the engine does
        both); returns once it has stopped."""
        try:
            await self._engine.stop_container(cid, engine_stop_timeout(grace_s))
        except EngineError as e:
            if e.status != 404:
                raise ExecutorError(e.message) from None


async def _next_event(events: asyncio.Queue[str]) -> str:
    """The next action on the container (or RESYNC when nothing came for a while)."""
    try:
        async with asyncio.timeout(WATCH_RESYNC_S):
            return await events.get()
    except TimeoutError:
        return RESYNC


def _unhealthy_error(status: ExitStatus) -> str:
    if status.exit_code:
        return f"task: non-zero exit ({status.exit_code}): {ERR_UNHEALTHY}"
    return ERR_UNHEALTHY


def _parse_attrs(raw: bytes) -> dict[str, str] | None:
    """The engine's `details` of a log line: query-escaped `k=v` pairs, comma-separated."""
    attrs = {}
    for pair in raw.decode(errors="replace").split(","):
        key, sep, value = pair.partition("=")
        if sep:
            attrs[unquote_plus(key)] = unquote_plus(value)
    return attrs or None


def _engine_time(ns: int) -> str:
    secs, frac = divmod(ns, 1_000_000_000)
    return f"{secs}.{frac:09d}"
