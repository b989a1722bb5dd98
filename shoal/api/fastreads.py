"""The reads the API's front door answers beside the event loop (frontdoor.py).

`HEAD|GET /_ping`, `GET /services`, `GET /nodes` and `GET /info` (what `docker service
ls` and `docker node ls` send) are answered on the front door's thread from the store's
snapshot of what is durable (shoal/manager/store/snapshot.py), with the same code the
routes on the loop use (`service_list`, `node_list`), so the answer is the same one.
Anything else, and anything these cannot answer as the route would (a daemon outside a
swarm or locked, a filter to reject, a service whose status counts its tasks, nodes and
info with several managers, whose status the election gives), is left
to the loop: `answer` then returns None and the connection is handed over.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from shoal.api import filters
from shoal.api.body import bool_value
from shoal.api.context import DaemonContext
from shoal.api.nodes import NODE_FILTERS, node_list
from shoal.api.server import API_VERSION, MIN_API_VERSION, SERVER_HEADER
from shoal.api.services import SERVICE_FILTERS, is_replicated, replicated_status, service_list
from shoal.api.system import info_of
from shoal.errors import ShoalError
from shoal.types.base import encode_json

_PING_HEADERS = (
    ("Content-Type", "text/plain; charset=utf-8"),
    ("Cache-Control", "no-cache, no-store, must-revalidate"),
    ("Pragma", "no-cache"),
)
_JSON_HEADERS = (("Content-Type", "application/json"),)
# The headers dockerd sends on every answer (server.docker_headers).
DOCKER_HEADERS = (
    ("API-Version", API_VERSION),
    ("Docker-Experimental", "false"),
    ("Ostype", "linux"),
    ("Server", SERVER_HEADER),
)


@dataclass(frozen=True, slots=True)
class Answer:
    """An answer to send: its status, its headers (Content-Length aside), its body;
    `route` labels it in the API's latency metric."""

    route: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = _JSON_HEADERS
    status: int = 200


def _version_ok(version: str) -> bool:
    def t(v: str) -> tuple[int, ...]:
        return tuple(int(x) for x in v.split("."))

    return t(MIN_API_VERSION) <= t(version) <= t(API_VERSION)


def answer(
    daemon: DaemonContext, method: str, path: str, query: Mapping[str, str]
) -> Answer | None:
    """The answer to a read the front door can give, or None (the loop answers).
    `path` is without its query; `query` holds each parameter's first value."""
    if path.startswith("/v"):
        version, sep, rest = path[2:].partition("/")
        if not sep or not version.replace(".", "").isdigit() or version.count(".") != 1:
            return None
        if not _version_ok(version):
            return None  # the loop answers it's too old or too new
        path = "/" + rest
    if path == "/_ping" and method in ("GET", "HEAD"):
        if method == "HEAD":
            return Answer("/_ping", b"", _PING_HEADERS)
        return Answer("/_ping", b"OK", _PING_HEADERS)
    if method != "GET" or path not in ("/services", "/nodes", "/info"):
        return None
    manager = None if daemon.locked else daemon.manager
    if manager is None:
        return None
    if daemon.several_managers and path != "/services":
        return None  # managers' status from the election (roster.py): on the loop
    snap = manager.store.snapshot
    try:
        if path == "/info":
            body = info_of(daemon, (snap.nodes, snap.cluster))
            return Answer("/info", json.dumps(body, separators=(",", ":")).encode() + b"\n")
        if path == "/nodes":
            f = filters.parse(query.get("filters"), NODE_FILTERS)
            return Answer("/nodes", encode_json(node_list(snap.nodes, f)) + b"\n")
        f = filters.parse(query.get("filters"), SERVICE_FILTERS)
        status = None
        if bool_value(query, "status"):
            if not all(is_replicated(s) for s in snap.services):
                return None  # counted from the tasks, on the loop
            status = lambda s: replicated_status(s, snap.running_tasks(s.id))  # noqa: E731
        return Answer("/services", encode_json(service_list(snap.services, f, status)) + b"\n")
    except ShoalError:
        return None  # an error to answer: the route's own, on the loop
    except RuntimeError:
        # /info counts this node's agent's tasks, whose tables the loop changes: a count
        # that raced with a change ("changed size during iteration") is left to the loop
        return None
