"""Scheduling filters, in SwarmKit's pipeline order. Each says whether a node can take
a task and, for the pending message, explains how many nodes it turned away."""

from __future__ import annotations

from collections.abc import Callable

from shoal.manager.scheduler import constraint
from shoal.manager.scheduler.nodeinfo import NO_PORTS, HostPorts, NodeInfo, task_reservations
from shoal.types.task import Task


class Filter:
    """Base: `set_task` precomputes per task (False: the filter does not apply).
    `dynamic` filters depend on what was already placed on a node during a pass."""

    dynamic = False

    def set_task(self, task: Task) -> bool:
        return True

    def check(self, info: NodeInfo) -> bool:
        raise NotImplementedError

    def explain(self, nodes: int) -> str:
        raise NotImplementedError


class ReadyFilter(Filter):
    def check(self, info: NodeInfo) -> bool:
        n = info.node
        return n.status.state == "ready" and n.spec.availability == "active"

    def explain(self, nodes: int) -> str:
        if nodes == 1:
            return "1 node not available for new tasks"
        return f"{nodes} nodes not available for new tasks"


class ResourceFilter(Filter):
    dynamic = True

    def set_task(self, task: Task) -> bool:
        self.cpus, self.memory = task_reservations(task)
        return bool(self.cpus or self.memory)

    def check(self, info: NodeInfo) -> bool:
        return self.cpus <= info.available_cpus and self.memory <= info.available_memory

    def explain(self, nodes: int) -> str:
        if nodes == 1:
            return "insufficient resources on 1 node"
        return f"insufficient resources on {nodes} nodes"


class PluginFilter(Filter):
    """SwarmKit's: the node must have the task's log driver among its Log plugins. A
    node that reports no Log plugin at all is not turned away (an older engine), nor
    is a task whose driver is unnamed or `none`. (Volume and network plugins: not yet.)"""

    def set_task(self, task: Task) -> bool:
        driver = task.spec.log_driver or {}
        self.log_driver = str(driver.get("Name") or "")
        return self.log_driver not in ("", "none")

    def check(self, info: NodeInfo) -> bool:
        engine = info.node.description.engine if info.node.description else None
        names = [p.name for p in (engine.plugins if engine else None) or [] if p.type == "Log"]
        wanted = self.log_driver
        return not names or any(n == wanted or n == wanted + ":latest" for n in names)

    def explain(self, nodes: int) -> str:
        if nodes == 1:
            return "missing plugin on 1 node"
        return f"missing plugin on {nodes} nodes"


class ConstraintFilter(Filter):
    def set_task(self, task: Task) -> bool:
        placement = task.spec.placement
        exprs = placement.constraints if placement and placement.constraints else []
        if not exprs:
            return False
        try:
            self.constraints = constraint.parse(exprs)
        except constraint.ConstraintError:
            # validated at service create; an unparseable one matches nothing
            self.constraints = [constraint.Constraint("node.id", "==", "\x00")]
        return True

    def check(self, info: NodeInfo) -> bool:
        return constraint.matches_all(self.constraints, info.node)

    def explain(self, nodes: int) -> str:
        if nodes == 1:
            return "scheduling constraints not satisfied on 1 node"
        return f"scheduling constraints not satisfied on {nodes} nodes"


class PlatformFilter(Filter):
    def set_task(self, task: Task) -> bool:
        placement = task.spec.placement
        self.platforms = placement.platforms if placement and placement.platforms else []
        return bool(self.platforms)

    def check(self, info: NodeInfo) -> bool:
        p = info.node.description.platform
        for want in self.platforms:
            os_ok = not want.os or (p.os or "").lower() == want.os.lower()
            arch_ok = not want.architecture or _same_arch(want.architecture, p.architecture or "")
            if os_ok and arch_ok:
                return True
        return False

    def explain(self, nodes: int) -> str:
        if nodes == 1:
            return "unsupported platform on 1 node"
        return f"unsupported platform on {nodes} nodes"


_ARCH_ALIASES = {"x86_64": "amd64", "aarch64": "arm64"}


def _same_arch(a: str, b: str) -> bool:
    return _ARCH_ALIASES.get(a.lower(), a.lower()) == _ARCH_ALIASES.get(b.lower(), b.lower())


class HostPortFilter(Filter):
    """SwarmKit's: a task that binds a host-mode port goes to no node where an active
    task already holds that port and protocol. `ports_of` gives a task's ports."""

    dynamic = True

    def __init__(self, ports_of: Callable[[str], HostPorts]) -> None:
        self.ports_of = ports_of
        self.ports: HostPorts = NO_PORTS

    def set_task(self, task: Task) -> bool:
        self.ports = self.ports_of(task.id)
        return bool(self.ports)

    def check(self, info: NodeInfo) -> bool:
        used = info.used_host_ports
        return not any(p in used for p in self.ports)

    def explain(self, nodes: int) -> str:
        if nodes == 1:
            return "host-mode port already in use on 1 node"
        return f"host-mode port already in use on {nodes} nodes"


class MaxReplicasFilter(Filter):
    dynamic = True

    def set_task(self, task: Task) -> bool:
        placement = task.spec.placement
        self.max = placement.max_replicas if placement and placement.max_replicas else 0
        self.service_id = task.service_id
        return self.max > 0

    def check(self, info: NodeInfo) -> bool:
        return info.service_counts.get(self.service_id, 0) < self.max

    def explain(self, nodes: int) -> str:
        return "max replicas per node limit exceed"


def _no_ports(task_id: str) -> HostPorts:
    return NO_PORTS


def pipeline(ports_of: Callable[[str], HostPorts] = _no_ports) -> list[Filter]:
    return [
        ReadyFilter(),
        ResourceFilter(),
        PluginFilter(),
        ConstraintFilter(),
        PlatformFilter(),
        HostPortFilter(ports_of),
        MaxReplicasFilter(),
    ]


class Pipeline:
    """Runs the filters for one task over many nodes and keeps failure counts."""

    def __init__(self, ports_of: Callable[[str], HostPorts] = _no_ports) -> None:
        self.filters = pipeline(ports_of)
        self.active: list[Filter] = []
        self.failures: dict[int, int] = {}

    def set_task(self, task: Task) -> None:
        self.active = [f for f in self.filters if f.set_task(task)]
        self.failures = {}

    def process(self, info: NodeInfo) -> bool:
        for i, f in enumerate(self.active):
            if not f.check(info):
                self.failures[i] = self.failures.get(i, 0) + 1
                return False
        return True

    def process_dynamic(self, info: NodeInfo) -> bool:
        """Only the filters whose answer changes as tasks are placed: for nodes that
        already passed `process` for this task's group."""
        for i, f in enumerate(self.active):
            if f.dynamic and not f.check(info):
                self.failures[i] = self.failures.get(i, 0) + 1
                return False
        return True

    def explain(self) -> str:
        parts = sorted(self.failures.items(), key=lambda kv: -kv[1])
        return "; ".join(self.active[i].explain(n) for i, n in parts)
