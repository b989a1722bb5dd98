"""A process task's limits wired to its cgroups (cgroups.py): the plan spec.json records
for the shim, with dockerd's warning for each limit the kernel cannot apply, and the
removal of what a shim that did not get to it left in them (docs/process-runtime.md)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from shoal.agent.executor import cgroups, shim
from shoal.log import get_logger
from shoal.types.task import Task

# dockerd's warnings when the kernel lacks a controller: the limit is discarded.
MSG_LIMIT_DISCARDED = {
    "memory": "Your kernel does not support memory limit capabilities or the cgroup is "
    "not mounted. Limitation discarded.",
    "cpu": "Your kernel does not support CPU CFS quota or the cgroup is not mounted. "
    "Quota discarded.",
    "pids": "Your kernel does not support pids limit capabilities or the cgroup is not "
    "mounted. PIDs limit discarded.",
}

log = get_logger("shoal.agent.process")


def cgroup_plan(layout: cgroups.Layout | None, task: Task) -> dict[str, Any] | None:
    """The task's cgroups and limits, as spec.json records them (cgroups.plan);
    None without a `layout` (the task runs without cgroups)."""
    limits = task.spec.resources.limits if task.spec.resources else None
    memory, cpus, pids = (
        (limits.memory_bytes, limits.nano_cpus, limits.pids) if limits else (None, None, None)
    )
    if layout is None:
        wanted = {"memory": memory, "cpu": cpus, "pids": pids}
        missing = [c for c, v in wanted.items() if v]
        record = None
    else:
        record = cgroups.plan(layout, task.id, memory, cpus, pids)
        missing = record["missing"]
    for controller in missing:
        log.warning(MSG_LIMIT_DISCARDED[controller], task=task.id)
    return record


async def remove_cgroups(task_dir: Path, task_id: str) -> None:
    """End what is left in the task's cgroups and remove them (the record is spec.json)."""
    record = _cgroup_record(task_dir)
    if record is None:
        return
    if not await asyncio.to_thread(cgroups.kill_and_remove, record):
        log.warning("task cgroups not removed", task=task_id, dirs=cgroups.dirs_of(record))


def _cgroup_record(task_dir: Path) -> dict[str, Any] | None:
    try:
        launch = json.loads((task_dir / shim.SPEC_FILE).read_bytes())
    except (OSError, ValueError):
        return None
    record = launch.get("cgroups") if isinstance(launch, dict) else None
    return record if isinstance(record, dict) else None
