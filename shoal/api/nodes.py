"""`/nodes`: list, inspect, update, remove."""

from __future__ import annotations

import time
from collections.abc import Iterable

from aiohttp import web

from shoal.api import filters
from shoal.api.body import bool_query, decode, int_query
from shoal.api.encode import empty, json_response, json_structs_response, wire
from shoal.api.server import Router, context, reads
from shoal.api.swarm import require_manager
from shoal.errors import FailedPrecondition, InvalidArgument
from shoal.manager.ca.removed import remove_node
from shoal.manager.controlapi.nodes import resolve_node, update_node
from shoal.manager.roster import with_status
from shoal.types.node import Node, NodeSpec

NODE_FILTERS = ("id", "label", "node.label", "membership", "name", "role")


def register(r: Router) -> None:
    r.add("GET", "/nodes", list_nodes)
    r.add("GET", "/nodes/{id}", inspect)
    r.add("POST", "/nodes/{id}/update", update)
    r.add("DELETE", "/nodes/{id}", remove)


def _matches(n: Node, f: filters.Filters) -> bool:
    if "id" in f and not filters.match_prefix(n.id, f["id"]):
        return False
    if "name" in f and not filters.match_prefix(n.description.hostname, f["name"]):
        return False
    if "role" in f:
        for r in f["role"]:
            if r not in ("manager", "worker"):
                raise InvalidArgument(f"Invalid role filter value: '{r}'")
        if n.spec.role not in f["role"]:
            return False
    if "membership" in f and "accepted" not in f["membership"]:
        return False
    if "label" in f and not filters.match_label(n.description.engine.labels, f["label"]):
        return False
    return not ("node.label" in f and not filters.match_label(n.spec.labels, f["node.label"]))


def _shown(request: web.Request, node: Node) -> Node:
    """With several managers, a manager's status as the election and its node's state
    say (shoal/manager/roster.py)."""
    d = context(request)
    return with_status(node, d.leader_id) if d.several_managers else node


@reads("node")
async def list_nodes(request: web.Request) -> web.Response:
    m = require_manager(request)
    f = filters.parse(request.query.get("filters"), NODE_FILTERS)
    nodes = sorted(m.store.view().nodes(), key=lambda n: (n.created_at, n.id))
    return json_structs_response([_shown(request, n) for n in node_list(nodes, f)])


def node_list(nodes: Iterable[Node], f: filters.Filters) -> list[Node]:
    """What `GET /nodes` answers: the nodes (by CreatedAt, ID) that match the filters
    (with several managers, shown with their manager status: `_shown`)."""
    return [n for n in nodes if _matches(n, f)]


@reads("node")
async def inspect(request: web.Request) -> web.Response:
    m = require_manager(request)
    return json_response(
        wire(_shown(request, resolve_node(m.store.view(), request.match_info["id"])))
    )


async def update(request: web.Request) -> web.Response:
    m = require_manager(request)
    version = int_query(request, "version")
    spec = await decode(request, NodeSpec)
    await update_node(m.store, request.match_info["id"], version, spec)
    return empty()


async def remove(request: web.Request) -> web.Response:
    m = require_manager(request)
    node = resolve_node(m.store.view(), request.match_info["id"])
    if node.id == context(request).node_id:
        raise FailedPrecondition(
            "rpc error: code = FailedPrecondition desc = node "
            f"{node.id} is a cluster manager and is a member of the raft cluster. It must be "
            "demoted to worker before removal"
        )
    force = bool_query(request, "force")
    if node.status.state != "down" and not force:
        raise FailedPrecondition(
            f"rpc error: code = FailedPrecondition desc = node {node.id} is not down and can't "
            "be removed"
        )
    now_ns = time.time_ns()
    await m.store.update(lambda tx: remove_node(tx, node.id, now_ns))
    return empty()
