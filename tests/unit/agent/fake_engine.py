"""A fake Docker Engine for the docker executor's unit tests: the few endpoints the
executor calls, with containers, images and events held in memory, served on a unix
socket from a thread of its own (the executor makes blocking calls too).

Tests change a container's state the way the engine would (`set_health`, `exit`,
`destroy`), and each change emits the event the engine emits.

Nothing here sleeps. A test waits for what the engine sees (`when`: a condition on its
state, checked after each request it answers and each change a test makes), and holds
pulls back (`hold_pulls`) until it lets them finish.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import secrets
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

INFO = {
    "NCPU": 4,
    "MemTotal": 8 << 30,
    "OSType": "linux",
    "Architecture": "x86_64",
    "ServerVersion": "20.10.24-fake",
    "Labels": ["zone=a", "disk=ssd"],
    "Plugins": {"Volume": ["local"], "Network": ["bridge", "host"], "Log": ["json-file"]},
}
START_TIMEOUT_S = 10.0


class FakeEngine:
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.containers: dict[str, dict[str, Any]] = {}
        self.images: set[str] = set()
        self.pullable: dict[str, str] = {}  # fromImage:tag -> image reference made
        self.pulls: list[tuple[str, str, str | None]] = []
        self.logs: dict[str, list[tuple[int, str, bytes]]] = {}
        # Inspect answers that showed a running container, by container ID.
        self.running_inspects: dict[str, int] = {}
        # The last event emitted for each container (what `replay` sends again).
        self.last_event: dict[str, str] = {}
        self._pulls_open: asyncio.Event | None = None
        self._conditions: list[tuple[Callable[[], bool], concurrent.futures.Future[None]]] = []
        self._subscribers: list[asyncio.Queue[dict[str, Any]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()

    # --- lifecycle (from the test's thread) -------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="fake-engine", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise RuntimeError("the fake engine did not start")

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(START_TIMEOUT_S)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(START_TIMEOUT_S)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the engine's loop (state changes go through here)."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(self._call(fn), self._loop).result(START_TIMEOUT_S)

    def when(self, condition: Callable[[], bool]) -> concurrent.futures.Future[None]:
        """A future done once `condition()` holds: checked on the engine's loop now, and
        again after every request the engine answers and every `call`. Await it with
        `asyncio.wrap_future`."""
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.call(lambda: self._conditions.append((condition, done)))
        return done

    def hold_pulls(self) -> None:
        """Pulls answer their progress stream's headers, then wait for `release_pulls`."""
        self.call(lambda: self._gate().clear())

    def release_pulls(self) -> None:
        self.call(lambda: self._gate().set())

    async def _call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        finally:
            self._check_conditions()

    def _check_conditions(self) -> None:
        waiting = []
        for condition, done in self._conditions:
            if done.done():
                continue  # given up on (cancelled) by the test
            if condition():
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    done.set_result(None)
            else:
                waiting.append((condition, done))
        self._conditions = waiting

    def _gate(self) -> asyncio.Event:
        if self._pulls_open is None:
            self._pulls_open = asyncio.Event()
            self._pulls_open.set()
        return self._pulls_open

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        loop.run_until_complete(self._start_app())
        self._ready.set()
        loop.run_forever()
        loop.close()

    async def _start_app(self) -> None:
        app = web.Application(middlewares=[self._after_request])
        r = app.router
        r.add_get("/_ping", self._ping)
        r.add_get("/v1.41/info", self._info)
        r.add_post("/v1.41/containers/create", self._create)
        r.add_get("/v1.41/containers/json", self._list)
        r.add_get("/v1.41/containers/{id}/json", self._inspect)
        r.add_post("/v1.41/containers/{id}/start", self._start)
        r.add_post("/v1.41/containers/{id}/stop", self._stop)
        r.add_delete("/v1.41/containers/{id}", self._delete)
        r.add_get("/v1.41/containers/{id}/logs", self._logs)
        r.add_get("/v1.41/images/{name:.+}/json", self._image)
        r.add_post("/v1.41/images/create", self._pull)
        r.add_get("/v1.41/events", self._events)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.UnixSite(self._runner, self.socket_path).start()

    @web.middleware
    async def _after_request(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
            return response
        finally:
            self._check_conditions()

    async def _shutdown(self) -> None:
        self._gate().set()  # a test that failed with a pull held back
        for _, done in self._conditions:
            done.cancel()
        for q in self._subscribers:
            q.put_nowait({})
        if self._runner is not None:
            await self._runner.cleanup()

    # --- state changes (on the engine's loop) -----------------------------------------

    def emit(self, cid: str, action: str) -> None:
        c = self.containers.get(cid)
        labels = dict(c["Config"]["Labels"]) if c else {}
        event = {
            "Type": "container",
            "Action": action,
            "Actor": {"ID": cid, "Attributes": labels},
            "time": int(time.time()),
            "timeNano": time.time_ns(),
        }
        self.last_event[cid] = action
        for q in self._subscribers:
            q.put_nowait(event)

    def replay(self, cid: str) -> None:
        """The container's last event once more, as the engine replays events after a
        reconnection (a duplicate the executor must take in its stride)."""
        self.emit(cid, self.last_event[cid])

    def set_health(self, cid: str, status: str) -> None:
        self.containers[cid]["State"]["Health"] = {"Status": status}
        self.emit(cid, f"health_status: {status}")

    def exit(self, cid: str, code: int, oom: bool = False) -> None:
        state = self.containers[cid]["State"]
        state.update(Status="exited", Running=False, Pid=0, ExitCode=code, OOMKilled=oom)
        if oom:
            self.emit(cid, "oom")
        self.emit(cid, "die")

    def destroy(self, cid: str) -> None:
        self.emit(cid, "destroy")
        self.containers.pop(cid, None)

    def add_container(self, name: str, labels: dict[str, str], running: bool = True) -> str:
        cid = secrets.token_hex(32)
        self.containers[cid] = {
            "Id": cid,
            "Name": f"/{name}",
            "Created": time.time(),
            "Config": {"Labels": labels, "Tty": False},
            "State": {"Status": "running" if running else "created", "Running": running, "Pid": 42},
        }
        return cid

    # --- the API ----------------------------------------------------------------------

    async def _ping(self, request: web.Request) -> web.Response:
        return web.Response(text="OK")

    async def _info(self, request: web.Request) -> web.Response:
        return web.json_response(INFO)

    def _find(self, ref: str) -> dict[str, Any] | None:
        if ref in self.containers:
            return self.containers[ref]
        return next((c for c in self.containers.values() if c["Name"] == f"/{ref}"), None)

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        name = request.query.get("name", "")
        if self._find(name) is not None:
            return _error(409, f'Conflict. The container name "/{name}" is already in use')
        if body["Image"] not in self.images:
            return _error(404, f"No such image: {body['Image']}")
        cid = self.add_container(name, body.get("Labels") or {}, running=False)
        self.containers[cid]["Config"].update(
            Tty=bool(body.get("Tty")), Healthcheck=body.get("Healthcheck"), Body=body
        )
        self.emit(cid, "create")
        return web.json_response({"Id": cid, "Warnings": []}, status=201)

    async def _list(self, request: web.Request) -> web.Response:
        wanted = json.loads(request.query.get("filters", "{}")).get("label", [])
        out = []
        for c in self.containers.values():
            labels = c["Config"]["Labels"]
            if all(labels.get(k) == v for k, _, v in (w.partition("=") for w in wanted)):
                out.append(
                    {
                        "Id": c["Id"],
                        "Labels": labels,
                        "State": c["State"]["Status"],
                        "Created": c["Created"],
                    }
                )
        return web.json_response(out)

    async def _inspect(self, request: web.Request) -> web.Response:
        c = self._find(request.match_info["id"])
        if c is None:
            return _error(404, f"No such container: {request.match_info['id']}")
        if c["State"]["Running"]:
            self.running_inspects[c["Id"]] = self.running_inspects.get(c["Id"], 0) + 1
        return web.json_response(c)

    async def _start(self, request: web.Request) -> web.Response:
        c = self._find(request.match_info["id"])
        if c is None:
            return _error(404, "No such container")
        if c["State"]["Running"]:
            return web.Response(status=304)
        c["State"].update(Status="running", Running=True, Pid=4242)
        if c["Config"].get("Healthcheck"):
            c["State"]["Health"] = {"Status": "starting"}
        self.emit(c["Id"], "start")
        return web.Response(status=204)

    async def _stop(self, request: web.Request) -> web.Response:
        c = self._find(request.match_info["id"])
        if c is None:
            return _error(404, "No such container")
        c["StopTimeout"] = request.query.get("t")
        if not c["State"]["Running"]:
            return web.Response(status=304)
        self.exit(c["Id"], 143)
        return web.Response(status=204)

    async def _delete(self, request: web.Request) -> web.Response:
        c = self._find(request.match_info["id"])
        if c is None:
            return _error(404, "No such container")
        self.destroy(c["Id"])
        return web.Response(status=204)

    async def _logs(self, request: web.Request) -> web.StreamResponse:
        c = self._find(request.match_info["id"])
        if c is None:
            return _error(404, "No such container")
        resp = web.StreamResponse()
        resp.content_type = "application/vnd.docker.multiplexed-stream"
        await resp.prepare(request)
        # dockerd: "[time ][attrs ]line"; with details, the attributes (none here) and
        # their space are always there.
        details = b" " if request.query.get("details") in ("1", "true") else b""
        for stream, stamp, data in self.logs.get(c["Id"], []):
            payload = f"{stamp} ".encode() + details + data
            await resp.write(struct.pack(">BxxxI", stream, len(payload)) + payload)
        await resp.write_eof()
        return resp

    async def _image(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name in self.images:
            return web.json_response({"Id": "sha256:fake", "RepoTags": [name]})
        return _error(404, f"No such image: {name}")

    async def _pull(self, request: web.Request) -> web.StreamResponse:
        key = f"{request.query['fromImage']}:{request.query.get('tag', '')}"
        self.pulls.append(
            (
                request.query["fromImage"],
                request.query.get("tag", ""),
                request.headers.get("X-Registry-Auth"),
            )
        )
        resp = web.StreamResponse()
        resp.content_type = "application/json"
        await resp.prepare(request)
        await self._gate().wait()
        made = self.pullable.get(key)
        if made is None:
            line = {"errorDetail": {"message": "pull access denied"}, "error": "pull access denied"}
        else:
            self.images.add(made)
            line = {"status": f"Downloaded newer image for {made}"}
        await resp.write(json.dumps(line).encode() + b"\r\n")
        await resp.write_eof()
        return resp

    async def _events(self, request: web.Request) -> web.StreamResponse:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._subscribers.append(q)
        resp = web.StreamResponse()
        resp.content_type = "application/json"
        await resp.prepare(request)
        try:
            while True:
                event = await q.get()
                if not event:
                    break
                await resp.write(json.dumps(event).encode() + b"\n")
        finally:
            self._subscribers.remove(q)
        return resp


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)
