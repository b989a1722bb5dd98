"""`/swarm`: init, leave, inspect, update."""

from __future__ import annotations

from aiohttp import web

from shoal.api.body import bool_query, decode, int_query
from shoal.api.encode import empty, json_response, wire
from shoal.api.server import Router, context
from shoal.errors import WORKER_NOT_MANAGER, NotManager, SwarmLocked
from shoal.manager.controlapi.swarm import update_swarm
from shoal.manager.manager import Manager
from shoal.types.swarm import SwarmInitRequest, SwarmJoinRequest, SwarmSpec, SwarmUnlockRequest


def register(r: Router) -> None:
    r.add("POST", "/swarm/init", init)
    r.add("POST", "/swarm/join", join)
    r.add("POST", "/swarm/leave", leave)
    r.add("GET", "/swarm", inspect)
    r.add("POST", "/swarm/update", update)
    r.add("GET", "/swarm/unlockkey", unlockkey)
    r.add("POST", "/swarm/unlock", unlock)


def require_manager(request: web.Request) -> Manager:
    d = context(request)
    if d.locked:
        raise SwarmLocked()
    m = d.manager
    if m is None:
        # a worker is told so; a node outside any swarm gets the init/join hint
        raise NotManager(WORKER_NOT_MANAGER) if d.node_id else NotManager()
    return m


async def init(request: web.Request) -> web.Response:
    req = await decode(request, SwarmInitRequest)
    node_id = await context(request).swarm_init(req)
    return json_response(node_id)


async def join(request: web.Request) -> web.Response:
    req = await decode(request, SwarmJoinRequest)
    await context(request).swarm_join(req)
    return empty()


async def leave(request: web.Request) -> web.Response:
    await context(request).swarm_leave(bool_query(request, "force"))
    return empty()


async def inspect(request: web.Request) -> web.Response:
    m = require_manager(request)
    cluster = m.store.view().cluster()
    if cluster is None:
        raise NotManager()
    return json_response(wire(cluster))


async def update(request: web.Request) -> web.Response:
    m = require_manager(request)
    version = int_query(request, "version")
    spec = await decode(request, SwarmSpec)
    rotate_worker = bool_query(request, "rotateWorkerToken")
    rotate_manager = bool_query(request, "rotateManagerToken")
    rotate_unlock = bool_query(request, "rotateManagerUnlockKey")

    await update_swarm(
        m.store, version, spec, rotate_worker=rotate_worker, rotate_manager=rotate_manager
    )
    enc = spec.encryption_config
    await context(request).set_autolock(bool(enc and enc.auto_lock_managers), rotate_unlock)
    return empty()


async def unlockkey(request: web.Request) -> web.Response:
    require_manager(request)
    return json_response({"UnlockKey": context(request).unlock_key()})


async def unlock(request: web.Request) -> web.Response:
    req = await decode(request, SwarmUnlockRequest)
    await context(request).swarm_unlock(req.unlock_key or "")
    return empty()
