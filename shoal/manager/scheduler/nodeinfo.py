"""The scheduler's own view of a node: what it has left and what runs there."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from shoal.types.node import Node
from shoal.types.task import Task


def task_reservations(task: Task) -> tuple[int, int]:
    res = task.spec.resources.reservations if task.spec.resources else None
    if res is None:
        return 0, 0
    return res.nano_cpus or 0, res.memory_bytes or 0


def host_ports(task: Task) -> set[tuple[str, int]]:
    """Host-mode published ports a task needs (its service's EndpointSpec is copied into
    the task template's runtime data by the allocator; here: none known yet)."""
    return set()


@dataclass(slots=True)
class NodeInfo:
    node: Node
    available_cpus: int
    available_memory: int
    tasks: dict[str, Task] = field(default_factory=dict)
    # active (desired ≤ RUNNING, not finished) tasks per service on this node
    service_counts: Counter[str] = field(default_factory=Counter)
    used_host_ports: set[tuple[str, int]] = field(default_factory=set)

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

    def add_task(self, task: Task) -> bool:
        if task.id in self.tasks:
            return False
        self.tasks[task.id] = task
        self.service_counts[task.service_id] += 1
        cpus, mem = task_reservations(task)
        self.available_cpus -= cpus
        self.available_memory -= mem
        self.used_host_ports |= host_ports(task)
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
        self.used_host_ports -= host_ports(task)
        return True
