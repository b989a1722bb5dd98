"""`/services/{id}/logs` and `/tasks/{id}/logs`: Docker's multiplexed stream.

Each message is a frame `[stream, 0, 0, 0, size (uint32, big-endian)]` + payload, even
for services (the CLI demultiplexes them). With `timestamps` the payload starts with an
RFC 3339 time; with `details` then with the task's swarm labels, which the CLI turns
into its `name.slot.task@node |` prefix, and the log driver's extra attributes (which
`docker service logs --details` shows): `k=v` pairs sorted by key, query-escaped, as
dockerd writes them.
"""

from __future__ import annotations

import struct
from urllib.parse import quote_plus

from aiohttp import web

from shoal.api.body import bool_query
from shoal.api.server import Router, docker_headers
from shoal.api.swarm import require_manager
from shoal.api.tasks import resolve_task
from shoal.errors import InvalidArgument
from shoal.manager.controlapi.services import resolve_service
from shoal.types.agent import LogMessage, LogOptions
from shoal.types.base import format_time
from shoal.types.task import Task

_HEADER = struct.Struct(">BxxxI")


def register(r: Router) -> None:
    r.add("GET", "/services/{id}/logs", service_logs)
    r.add("GET", "/tasks/{id}/logs", task_logs)


def _options(request: web.Request) -> LogOptions:
    q = request.query
    tail_raw = q.get("tail", "all")
    tail: int | None = None
    if tail_raw not in ("", "all"):
        try:
            tail = int(tail_raw)
        except ValueError as e:
            raise InvalidArgument(f"invalid tail value {tail_raw!r}") from e
        if tail < 0:
            tail = None

    def ts(name: str) -> int:
        raw = q.get(name, "")
        if not raw or raw == "0":
            return 0
        # "<seconds>[.<nanoseconds>]", as the CLI sends it: parsed exactly (a float
        # loses the nanoseconds, and `since` must include the line stamped with it).
        secs, _, frac = raw.partition(".")
        if not secs.lstrip("-").isdigit() or (frac and not frac.isdigit()):
            raise InvalidArgument(f"invalid {name} value {raw!r}")
        return int(secs) * 1_000_000_000 + int((frac + "000000000")[:9])

    stdout, stderr = bool_query(request, "stdout"), bool_query(request, "stderr")
    if not stdout and not stderr:
        raise InvalidArgument("Bad parameters: you must choose at least one stream")
    return LogOptions(
        follow=bool_query(request, "follow"),
        tail=tail,
        since_ns=ts("since"),
        until_ns=ts("until"),
        stdout=stdout,
        stderr=stderr,
    )


def frame(task: Task, m: LogMessage, timestamps: bool, details: bool) -> bytes:
    prefix = b""
    if timestamps:
        prefix += format_time(m.timestamp_ns).encode() + b" "
    if details:
        attrs = {
            **(m.attrs or {}),
            "com.docker.swarm.node.id": task.node_id or "",
            "com.docker.swarm.service.id": task.service_id,
            "com.docker.swarm.task.id": task.id,
        }
        pairs = (f"{quote_plus(k)}={quote_plus(v)}" for k, v in sorted(attrs.items()))
        prefix += ",".join(pairs).encode() + b" "
    payload = prefix + m.data
    return _HEADER.pack(m.stream, len(payload)) + payload


async def _stream(
    request: web.Request, service_id: str | None, task_id: str | None
) -> web.StreamResponse:
    m = require_manager(request)
    options = _options(request)
    timestamps, details = bool_query(request, "timestamps"), bool_query(request, "details")
    resp = web.StreamResponse()
    resp.enable_chunked_encoding()
    docker_headers(resp)
    await resp.prepare(request)
    try:
        async for task, msg in m.logbroker.logs(options, service_id=service_id, task_id=task_id):
            await resp.write(frame(task, msg, timestamps, details))
    except (ConnectionResetError, ConnectionError):
        return resp
    await resp.write_eof()
    return resp


async def service_logs(request: web.Request) -> web.StreamResponse:
    m = require_manager(request)
    service = resolve_service(m.store.view(), request.match_info["id"])
    return await _stream(request, service.id, None)


async def task_logs(request: web.Request) -> web.StreamResponse:
    m = require_manager(request)
    task = resolve_task(m.store.view(), request.match_info["id"])
    return await _stream(request, None, task.id)
