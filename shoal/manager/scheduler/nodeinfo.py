"""The scheduler's own view of a node: what it has left and what runs there."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from shoal.types.meta import TaskMeta
from shoal.types.node import Node
from shoal.types.task import Task


def task_reservations(task: Task) -> tuple[int, int]:
    res = task.spec.resources.reservations if task.spec.resources else None
    if res is None:
        return 0, 0
    return res.nano_cpus or 0, res.memory_bytes or 0


HostPorts = frozenset[tuple[str, int]]
NO_PORTS: HostPorts = frozenset()


def host_ports(meta: TaskMeta) -> HostPorts:
    """The (protocol, port) pairs a task binds on its node: its service's ports published
    in host mode with a number (kept beside the task when it was made; a host-mode port
    without one is picked by the node and needs no filter, as in SwarmKit)."""
    if not meta.host_ports:
        return NO_PORTS
    return frozenset((p.protocol, p.published) for p in meta.host_ports if p.published)


@dataclass(slots=True)
class NodeInfo:
    node: Node
    available_cpus: int
    available_memory: int
    tasks: dict[str, Task] = field(default_factory=dict)
    # active (desired ≤ RUNNING, not finished) tasks per service on this node
    service_counts: Counter[str] = field(default_factory=Counter)
    # host-mode ports held by this node's active tasks, and which task holds which
    used_host_ports: Counter[tuple[str, int]] = field(default_factory=Counter)
    task_ports: dict[str, HostPorts] = field(default_factory=dict)

    @classmethod
    def of(cls, node: Node) -> NodeInfo:
        r = node.description.resources
        return cls(node=node, available_cpus=r.nano_cpus, available_memory=r.memory_bytes)

    @property
    def id(self) -> str:
        return self.node.id

    @property
    def active_count(self) -> int:
        return len(self.tasks)

    def add_task(self, task: Task, ports: HostPorts = NO_PORTS) -> bool:
        if task.id in self.tasks:
            return False
        self.tasks[task.id] = task
        self.service_counts[task.service_id] += 1
        cpus, mem = task_reservations(task)
        self.available_cpus -= cpus
        self.available_memory -= mem
        if ports:
            self.task_ports[task.id] = ports
            self.used_host_ports.update(ports)
        return True

    def remove_task(self, task_id: str) -> bool:
        task = self.tasks.pop(task_id, None)
        if task is None:
            return False
        self.service_counts[task.service_id] -= 1
        if self.service_counts[task.service_id] <= 0:
            del self.service_counts[task.service_id]
        cpus, mem = task_reservations(task)
        self.available_cpus += cpus
        self.available_memory += mem
        ports = self.task_ports.pop(task_id, NO_PORTS)
        if ports:
            self.used_host_ports.subtract(ports)
            for p in ports:
                if self.used_host_ports[p] <= 0:
                    del self.used_host_ports[p]
        return True
