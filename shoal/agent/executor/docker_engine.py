"""The Docker Engine as the docker executor sees it: a small async client over
aiodocker's connection, the engine's event stream fanned out to waiters, and the few
blocking calls the synchronous parts of the executor protocol need.

Engine errors are `EngineError(status, message)`, the message as the engine words it
(the task's `Err` shows it verbatim).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import stat
import struct
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiodocker
import aiohttp

from shoal.httpunix import UnixHTTPConnection
from shoal.log import get_logger

DEFAULT_ENGINE_HOST = "unix:///var/run/docker.sock"
# dockerd's plain-TCP port, for a tcp:// engine host without one.
DEFAULT_ENGINE_TCP_PORT = 2375
# The API version shoal speaks to the engine (Docker 20.10, Debian 12's docker.io).
ENGINE_API_VERSION = "v1.41"
# Short engine calls (inspect, create, start, remove); stop adds the grace period.
ENGINE_CALL_TIMEOUT_S = 60.0
ENGINE_CONNECT_TIMEOUT_S = 5.0
# A blocking call (ping, /info, the container list): must stay short, it holds the loop.
SYNC_TIMEOUT_S = 5.0
# The event stream: reconnect backoff, how far back the first subscription replays (so
# nothing between "headers received" and "subscribed" is missed), and how often a
# waiter looks at its container even without events (a safety net, not the mechanism).
EVENTS_BACKOFF_MIN_S = 0.1
EVENTS_BACKOFF_MAX_S = 5.0
EVENTS_REPLAY_S = 1.0
WATCH_RESYNC_S = 30.0
# The container events a waiter wakes up for.
WATCHED_ACTIONS = ("start", "die", "oom", "destroy", "health_status")
# What a waiter's queue receives when events may have been missed (a reconnection).
RESYNC = "resync"

_FRAME_HEADER = struct.Struct(">BxxxI")
STDOUT, STDERR = 1, 2

log = get_logger("shoal.agent.docker")


class EngineError(Exception):
    """The engine refused a request or could not be reached."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _timeout(total: float | None) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=total, connect=ENGINE_CONNECT_TIMEOUT_S)


def _filters(filters: dict[str, list[str]]) -> str:
    return json.dumps(filters, separators=(",", ":"))


class EngineClient:
    """The calls the executor makes, on one aiodocker connection pool (created on first
    use, inside the event loop)."""

    def __init__(self, host: str = DEFAULT_ENGINE_HOST) -> None:
        self.host = host
        self._docker: aiodocker.Docker | None = None

    @property
    def docker(self) -> aiodocker.Docker:
        if self._docker is None:
            self._docker = aiodocker.Docker(url=self.host, api_version=ENGINE_API_VERSION)
        return self._docker

    async def close(self) -> None:
        if self._docker is not None:
            docker, self._docker = self._docker, None
            await docker.close()

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout_s: float | None = ENGINE_CALL_TIMEOUT_S,
    ) -> Any:
        """One request; the decoded JSON answer ("" when there is no body)."""
        try:
            return await self.docker._query_json(
                path,
                method,
                params=params,
                data=body,
                headers=headers,
                timeout=_timeout(timeout_s),
            )
        except aiodocker.DockerError as e:
            raise EngineError(e.status, e.message) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise EngineError(0, f"cannot reach the Docker Engine at {self.host}: {e!r}") from e

    @contextlib.asynccontextmanager
    async def stream(
        self,
        method: str,
        path: str,
        params: dict[str, str],
        headers: dict[str, str] | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A streamed answer (no time limit), closed however the caller leaves it: a
        stream cut short must not leave its connection behind."""
        try:
            async with self.docker._query(
                path, method, params=params, headers=headers, timeout=_timeout(None)
            ) as resp:
                try:
                    yield resp
                finally:
                    resp.close()
        except aiodocker.DockerError as e:
            raise EngineError(e.status, e.message) from None
        except (aiohttp.ClientError, OSError) as e:
            raise EngineError(0, f"cannot reach the Docker Engine at {self.host}: {e!r}") from e

    # --- containers -------------------------------------------------------------------

    async def inspect_container(self, ref: str) -> dict[str, Any] | None:
        try:
            info = await self.call("GET", f"containers/{quote(ref, safe='')}/json")
        except EngineError as e:
            if e.status == 404:
                return None
            raise
        return info if isinstance(info, dict) else None

    async def list_containers(self, filters: dict[str, list[str]]) -> list[dict[str, Any]]:
        found = await self.call(
            "GET", "containers/json", params={"all": "1", "filters": _filters(filters)}
        )
        return list(found or [])

    async def create_container(self, name: str, body: dict[str, Any]) -> str:
        created = await self.call("POST", "containers/create", params={"name": name}, body=body)
        return str(created["Id"])

    async def start_container(self, cid: str) -> None:
        await self.call("POST", f"containers/{cid}/start")  # 304 when already started

    async def stop_container(self, cid: str, grace_s: int) -> None:
        await self.call(
            "POST",
            f"containers/{cid}/stop",
            params={"t": str(grace_s)},
            timeout_s=grace_s + ENGINE_CALL_TIMEOUT_S,
        )

    async def remove_container(self, cid: str) -> None:
        try:
            await self.call("DELETE", f"containers/{cid}", params={"force": "1", "v": "1"})
        except EngineError as e:
            if e.status != 404:
                raise

    # --- images -----------------------------------------------------------------------

    async def image_exists(self, ref: str) -> bool:
        try:
            await self.call("GET", f"images/{ref}/json")
        except EngineError as e:
            if e.status == 404:
                return False
            raise
        return True

    async def pull(self, from_image: str, tag: str, registry_auth: str | None) -> None:
        """Pull through the engine; EngineError with the engine's message on failure
        (an HTTP error, or an `error` in the progress stream)."""
        headers = {"X-Registry-Auth": registry_auth} if registry_auth else {}
        params = {"fromImage": from_image, "tag": tag}
        async with self.stream("POST", "images/create", params, headers) as resp:
            async for line in resp.content:
                if not line.strip():
                    continue
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if isinstance(message, dict) and message.get("error"):
                    raise EngineError(500, str(message["error"]))

    # --- logs -------------------------------------------------------------------------

    async def logs(
        self, cid: str, params: dict[str, str], tty: bool
    ) -> AsyncIterator[tuple[int, bytes]]:
        """(stream, payload) of each entry of `GET /containers/{id}/logs`: demultiplexed
        frames, or lines for a TTY container (all on stdout)."""
        try:
            async with self.stream("GET", f"containers/{cid}/logs", params) as resp:
                content = resp.content
                if tty:
                    async for line in content:
                        yield STDOUT, line
                    return
                while True:
                    try:
                        header = await content.readexactly(_FRAME_HEADER.size)
                    except asyncio.IncompleteReadError:
                        return
                    stream, size = _FRAME_HEADER.unpack(header)
                    try:
                        payload = await content.readexactly(size)
                    except asyncio.IncompleteReadError as e:
                        payload = e.partial
                    yield stream, payload
        except EngineError as e:
            if e.status != 404:  # a container removed meanwhile has no more logs
                raise

    # --- events -----------------------------------------------------------------------

    async def events(self, filters: dict[str, list[str]], since: float) -> AsyncIterator[Any]:
        """The engine's events from `since` (a replay) on, then live; the first item is
        None, once the engine has answered (the stream is connected)."""
        params = {"filters": _filters(filters), "since": f"{since:.9f}"}
        async with self.stream("GET", "events", params) as resp:
            yield None
            async for line in resp.content:
                if line.strip():
                    with contextlib.suppress(ValueError):
                        yield json.loads(line)


class EngineEvents:
    """One `/events` subscription for the executor's containers, fanned out by container
    ID to whoever waits on one (start until healthy, wait until exit).

    Events only wake waiters up: a waiter then inspects its container, so a duplicate
    or an event that arrives late does no harm. After a reconnection every waiter gets
    RESYNC (events may have been lost), and the subscription replays from the time of
    the last event it saw.
    """

    def __init__(self, client: EngineClient, labels: list[str]) -> None:
        self._client = client
        self._filters = {
            "type": ["container"],
            "label": list(labels),
            "event": list(WATCHED_ACTIONS),
        }
        self._watchers: dict[str, set[asyncio.Queue[str]]] = {}
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._since: float | None = None
        self.received = 0
        self.reconnects = 0

    @contextlib.contextmanager
    def watch(self, container_id: str) -> Iterator[asyncio.Queue[str]]:
        """A queue of the actions of `container_id`'s events (and RESYNC)."""
        self._ensure_running()
        queue: asyncio.Queue[str] = asyncio.Queue()
        self._watchers.setdefault(container_id, set()).add(queue)
        try:
            yield queue
        finally:
            queues = self._watchers.get(container_id)
            if queues is not None:
                queues.discard(queue)
                if not queues:
                    del self._watchers[container_id]

    async def wait_connected(self, timeout_s: float) -> bool:
        self._ensure_running()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._connected.wait()
        return self._connected.is_set()

    def statistics(self) -> dict[str, int]:
        return {
            "watched_containers": len(self._watchers),
            "events_received": self.received,
            "reconnects": self.reconnects,
        }

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="docker-events")

    def _broadcast(self, action: str) -> None:
        for queues in self._watchers.values():
            for q in queues:
                q.put_nowait(action)

    async def _run(self) -> None:
        backoff = EVENTS_BACKOFF_MIN_S
        while True:
            since = self._since if self._since is not None else time.time() - EVENTS_REPLAY_S
            try:
                async for event in self._client.events(self._filters, since):
                    if event is None:
                        self._connected.set()
                        self._broadcast(RESYNC)
                        backoff = EVENTS_BACKOFF_MIN_S
                        continue
                    self._dispatch(event)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("engine event stream failed; reconnecting", error=repr(e))
            self._connected.clear()
            self.reconnects += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, EVENTS_BACKOFF_MAX_S)

    def _dispatch(self, event: Any) -> None:
        if not isinstance(event, dict):
            return
        self.received += 1
        time_nano = event.get("timeNano")
        if isinstance(time_nano, int):
            self._since = time_nano / 1e9
        actor = event.get("Actor") or {}
        queues = self._watchers.get(str(actor.get("ID") or event.get("id") or ""))
        if queues:
            action = str(event.get("Action") or event.get("status") or "")
            for q in queues:
                q.put_nowait(action)


# --- blocking calls -----------------------------------------------------------------------


def _connection(host: str, timeout: float) -> http.client.HTTPConnection:
    if host.startswith("unix://"):
        return UnixHTTPConnection(host[len("unix://") :], timeout)
    parts = urlsplit(host if "://" in host else f"tcp://{host}")
    if parts.scheme not in ("tcp", "http"):
        raise ValueError(f"unsupported engine host {host!r}: use unix:///path or tcp://addr:port")
    return http.client.HTTPConnection(
        parts.hostname or "localhost", parts.port or DEFAULT_ENGINE_TCP_PORT, timeout=timeout
    )


def sync_call(
    host: str,
    method: str,
    path: str,
    query: dict[str, str] | None = None,
    timeout: float = SYNC_TIMEOUT_S,
) -> Any:
    """A blocking request (for the synchronous parts of the executor protocol); the
    decoded JSON answer. EngineError when the engine fails or cannot be reached."""
    url = f"/{ENGINE_API_VERSION}/{path.lstrip('/')}"
    if query:
        url += "?" + urlencode(query)
    try:
        conn = _connection(host, timeout)
        try:
            conn.request(method, url)
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
    except (OSError, http.client.HTTPException) as e:
        raise EngineError(0, f"cannot reach the Docker Engine at {host}: {e}") from e
    if resp.status >= 400:
        try:
            message = str(json.loads(body)["message"])
        except (ValueError, KeyError, TypeError):
            message = body.decode(errors="replace").strip()
        raise EngineError(resp.status, message)
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return body.decode(errors="replace")


def engine_answers(host: str = DEFAULT_ENGINE_HOST, timeout: float = SYNC_TIMEOUT_S) -> bool:
    """True when a Docker Engine answers `GET /_ping` at `host`."""
    if host.startswith("unix://"):
        try:
            if not stat.S_ISSOCK(os.stat(host[len("unix://") :]).st_mode):
                return False
        except OSError:
            return False
    try:
        conn = _connection(host, timeout)
        try:
            conn.request("GET", "/_ping")
            resp = conn.getresponse()
            return resp.status == 200 and resp.read().strip() == b"OK"
        finally:
            conn.close()
    except (OSError, http.client.HTTPException, ValueError):
        return False


def list_containers_sync(host: str, filters: dict[str, list[str]]) -> list[dict[str, Any]]:
    found = sync_call(host, "GET", "containers/json", {"all": "1", "filters": _filters(filters)})
    return list(found or [])
