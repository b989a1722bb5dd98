"""The allocator: gives networks their subnet and VXLAN ID, services their published
ports and virtual IPs, new tasks their network attachments, and moves tasks NEW →
PENDING once they have what they need (networks.py says what each gets; ipam.py how
addresses are kept).

One sweep transaction at start (and after any failure or resync) rebuilds the address
book from the store and allocates whatever is missing; then one transaction per burst
of events (bounded by the reconcile loop). Addresses are given back when a task dies or
is removed and when a service is removed or leaves a network. A task for which no
address is left stays NEW with a message saying so, and is tried again when addresses
are freed.
"""

from __future__ import annotations

import asyncio

import msgspec

from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.log import get_logger
from shoal.manager.allocator import ipam
from shoal.manager.allocator import networks as nets
from shoal.manager.loops import MAX_EVENTS_PER_ROUND, reconcile_loop
from shoal.manager.orchestrator.task import set_status
from shoal.manager.store import Event, Store, Tx
from shoal.types.service import Endpoint, EndpointPortConfig, EndpointSpec, Service
from shoal.types.task import Owner, TaskState, can_transition

PUBLISHED_PORT_RANGE = (30000, 32767)
log = get_logger("shoal.manager.allocator")
MSG_PENDING = "pending task scheduling"
# Tasks waiting for an address tried again in one round, at most.
MAX_RETRIES_PER_ROUND = MAX_EVENTS_PER_ROUND


class Allocator:
    def __init__(self, store: Store, clock: Clock = SYSTEM_CLOCK) -> None:
        self._store = store
        self._clock = clock
        self._stopped = asyncio.Event()
        self._book = ipam.AddressBook()
        self._draft = ipam.Draft()
        # tasks left NEW for want of an address or of an allocated network, and
        # services still without a VIP on some network for want of an address
        self._waiting: set[str] = set()
        self._waiting_services: set[str] = set()
        self.allocated = 0
        self.released = 0
        # the last published port given per protocol (derived: restarts at the range's
        # start after a restart, as SwarmKit's does on a new leader)
        self._port_cursor: dict[str, int] = {}

    async def run(self) -> None:
        await reconcile_loop(
            self._store,
            ("task", "service", "network"),
            self._allocate_all,
            self._handle,
            self._stopped,
            name="allocator",
            after=self._committed,
            clock=self._clock,
        )

    def stop(self) -> None:
        self._stopped.set()

    async def _committed(self) -> None:
        """The last transaction committed: what it took and gave back is the book's."""
        self.released += len(self._draft.released)
        self._book.apply(self._draft)
        self._draft = ipam.Draft()

    def _allocate_all(self, tx: Tx) -> None:
        self._book = nets.rebuild(tx)
        self._draft = ipam.Draft()
        self._waiting = set()
        self._waiting_services = set()
        for n in tx.networks():
            nets.allocate_network(tx, self._book, n.id)
        for s in tx.services():
            self._allocate_service(tx, s)
        for t in tx.tasks():
            if t.state == TaskState.NEW:
                self._allocate_task(tx, t.id)

    def _handle(self, tx: Tx, events: list[Event]) -> None:
        self._draft = ipam.Draft()
        retry = False
        for ev in events:
            if ev.kind == "network":
                if ev.action == "remove":
                    self._book.drop_network(ev.obj.id)
                elif nets.allocate_network(tx, self._book, ev.obj.id):
                    retry = True
                    for s in tx.services():  # a service may have waited for it
                        if ev.obj.id in nets.spec_networks(s.spec):
                            self._allocate_service(tx, s)
            elif ev.kind == "service":
                if ev.action == "remove":
                    self._waiting_services.discard(ev.obj.id)
                    nets.release_service(self._book, self._draft, ev.obj)
                    retry = retry or bool(ev.obj.endpoint.virtual_ips)
                else:
                    self._allocate_service(tx, ev.obj.id)
            elif ev.kind == "task":
                t = ev.obj
                if ev.action == "remove" or nets.is_dead(t):
                    self._waiting.discard(t.id)
                    old = ev.old
                    if ev.action == "remove" or old is None or not nets.is_dead(old):
                        nets.release_task(self._book, self._draft, t)
                        retry = retry or bool(t.networks_attachments)
                elif t.state == TaskState.NEW:
                    self._allocate_task(tx, t.id)
        if retry:  # addresses were freed: services first, as they were first in line
            for service_id in list(self._waiting_services)[:MAX_RETRIES_PER_ROUND]:
                self._allocate_service(tx, service_id)
            for task_id in list(self._waiting)[:MAX_RETRIES_PER_ROUND]:
                self._allocate_task(tx, task_id)

    def _allocate_task(self, tx: Tx, task_id: str) -> None:
        t = tx.get_task(task_id)
        if t is None or not can_transition(t.state, TaskState.PENDING, Owner.ALLOCATOR):
            self._waiting.discard(task_id)
            return
        if t.desired > TaskState.COMPLETE:  # a job's tasks are desired COMPLETE
            self._waiting.discard(task_id)
            return  # removed before it was ever allocated; the reaper deletes it
        attachments = nets.task_attachments(tx, self._book, self._draft, t)
        if isinstance(attachments, str):  # it waits, saying why
            self._waiting.add(task_id)
            if t.status.message != attachments:
                tx.update(
                    msgspec.structs.replace(
                        t, status=msgspec.structs.replace(t.status, message=attachments)
                    )
                )
            return
        self._waiting.discard(task_id)
        t = msgspec.structs.replace(t, networks_attachments=attachments or None)
        tx.update(set_status(t, TaskState.PENDING, MSG_PENDING))
        self.allocated += 1

    def _allocate_service(self, tx: Tx, service: Service | str) -> None:
        s = tx.get_service(service if isinstance(service, str) else service.id)
        if s is None:
            self._waiting_services.discard(service if isinstance(service, str) else service.id)
            return
        spec = s.spec.allocated_endpoint_spec()
        used: set[tuple[str | None, int | None]] | None = None  # read only when needed
        ports: list[EndpointPortConfig] = []
        previous = {(p.protocol, p.target_port): p for p in (s.endpoint.ports or [])}
        wanted = {(p.protocol or "tcp", p.target_port) for p in spec.ports or ()}
        for p in spec.ports or []:
            proto = p.protocol or "tcp"
            mode = p.publish_mode or "ingress"
            published = p.published_port
            if not published and mode == "ingress":
                prev = previous.get((proto, p.target_port))
                published = prev.published_port if prev and prev.published_port else None
                if not published:
                    if used is None:
                        used = self._used_ports(tx, s.id, spec)
                        # and those it keeps from before, wherever they are in its list
                        used |= {
                            (q.protocol or "tcp", q.published_port)
                            for q in (s.endpoint.ports or ())
                            if q.published_port and (q.protocol, q.target_port) in wanted
                        }
                    published = self._pick_port(proto, used)
                    if published is None:
                        log.error("no published port left", service=s.spec.name)
                    else:
                        used.add((proto, published))
            ports.append(
                msgspec.structs.replace(
                    p, protocol=proto, publish_mode=mode, published_port=published
                )
            )
        vips, missing = nets.service_vips(tx, self._book, self._draft, s)
        if missing:
            self._waiting_services.add(s.id)
        else:
            self._waiting_services.discard(s.id)
        endpoint = Endpoint(spec=spec, ports=ports or None, virtual_ips=vips)
        if endpoint != s.endpoint:
            tx.update(msgspec.structs.replace(s, endpoint=endpoint))

    def _pick_port(self, proto: str, used: set[tuple[str | None, int | None]]) -> int | None:
        """The next free port of the range after the last one given for `proto`, wrapping
        around (SwarmKit's serial dynamic port space: a port just given back is not
        given again at once); None when every one is held."""
        lo, hi = PUBLISHED_PORT_RANGE
        start = self._port_cursor.get(proto, hi)
        size = hi - lo + 1
        for i in range(1, size + 1):
            n = lo + (start - lo + i) % size
            if (proto, n) not in used:
                self._port_cursor[proto] = n
                return n
        return None

    @staticmethod
    def _used_ports(
        tx: Tx, except_service: str, own: EndpointSpec
    ) -> set[tuple[str | None, int | None]]:
        """Every port held: by another service (given to it, or asked for in its spec: a
        service not allocated yet keeps the number it asked for), or asked for by this
        one (SwarmKit allocates those before the dynamic ones)."""
        used: set[tuple[str | None, int | None]] = {
            (p.protocol or "tcp", p.published_port) for p in own.ports or () if p.published_port
        }
        for s in tx.services():
            if s.id == except_service:
                continue
            ep = s.spec.endpoint_spec
            for p in (*(s.endpoint.ports or ()), *((ep.ports if ep else None) or ())):
                if p.published_port:
                    used.add((p.protocol or "tcp", p.published_port))
        return used

    def statistics(self) -> dict[str, int]:
        return {
            "allocated": self.allocated,
            "released": self.released,
            "waiting": len(self._waiting),
            "waiting_services": len(self._waiting_services),
        }
