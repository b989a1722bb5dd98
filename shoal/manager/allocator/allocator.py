"""The allocator: gives new tasks what they need before scheduling (network
attachments, later) and moves them NEW → PENDING; fills each service's Endpoint
from its EndpointSpec, picking published ports for ingress ports given none."""

from __future__ import annotations

import asyncio

import msgspec

from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.manager.loops import reconcile_loop
from shoal.manager.orchestrator.task import set_status
from shoal.manager.store import Event, Store, Tx
from shoal.types.service import Endpoint, EndpointPortConfig, Service
from shoal.types.task import Owner, TaskState, can_transition

PUBLISHED_PORT_RANGE = (30000, 32767)
MSG_PENDING = "pending task scheduling"


class Allocator:
    def __init__(self, store: Store, clock: Clock = SYSTEM_CLOCK) -> None:
        self._store = store
        self._clock = clock
        self._stopped = asyncio.Event()
        self.allocated = 0

    async def run(self) -> None:
        await reconcile_loop(
            self._store,
            ("task", "service"),
            self._allocate_all,
            self._handle,
            self._stopped,
            name="allocator",
            clock=self._clock,
        )

    def stop(self) -> None:
        self._stopped.set()

    def _allocate_all(self, tx: Tx) -> None:
        for s in tx.services():
            self._allocate_service(tx, s)
        for t in tx.tasks():
            if t.state == TaskState.NEW:
                self._allocate_task(tx, t.id)

    def _handle(self, tx: Tx, events: list[Event]) -> None:
        for ev in events:
            if ev.action == "remove":
                continue
            if ev.kind == "service":
                self._allocate_service(tx, ev.obj.id)
            elif ev.kind == "task" and ev.obj.state == TaskState.NEW:
                self._allocate_task(tx, ev.obj.id)

    def _allocate_task(self, tx: Tx, task_id: str) -> None:
        t = tx.get_task(task_id)
        if t is None or not can_transition(t.state, TaskState.PENDING, Owner.ALLOCATOR):
            return
        if t.desired > TaskState.COMPLETE:  # a job's tasks are desired COMPLETE
            return  # removed before it was ever allocated; the reaper deletes it
        tx.update(set_status(t, TaskState.PENDING, MSG_PENDING))
        self.allocated += 1

    def _allocate_service(self, tx: Tx, service: Service | str) -> None:
        s = tx.get_service(service if isinstance(service, str) else service.id)
        if s is None:
            return
        spec = s.spec.allocated_endpoint_spec()
        used = self._used_ports(tx, s.id)
        ports: list[EndpointPortConfig] = []
        previous = {(p.protocol, p.target_port): p for p in (s.endpoint.ports or [])}
        for p in spec.ports or []:
            proto = p.protocol or "tcp"
            mode = p.publish_mode or "ingress"
            published = p.published_port
            if not published and mode == "ingress":
                prev = previous.get((proto, p.target_port))
                published = prev.published_port if prev and prev.published_port else None
                if not published:
                    published = next(
                        n
                        for n in range(PUBLISHED_PORT_RANGE[0], PUBLISHED_PORT_RANGE[1] + 1)
                        if (proto, n) not in used
                    )
                used.add((proto, published))
            ports.append(
                msgspec.structs.replace(
                    p, protocol=proto, publish_mode=mode, published_port=published
                )
            )
        endpoint = Endpoint(spec=spec, ports=ports or None, virtual_ips=s.endpoint.virtual_ips)
        if endpoint != s.endpoint:
            tx.update(msgspec.structs.replace(s, endpoint=endpoint))

    @staticmethod
    def _used_ports(tx: Tx, except_service: str) -> set[tuple[str | None, int | None]]:
        return {
            (p.protocol, p.published_port)
            for s in tx.services()
            if s.id != except_service
            for p in (s.endpoint.ports or [])
        }

    def statistics(self) -> dict[str, int]:
        return {"allocated": self.allocated}
