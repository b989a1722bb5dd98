"""A process task's networks: on swarm networks, its own network namespace with an
interface on each (network/plumbing.py), hostname, /etc/hosts and /etc/resolv.conf,
recorded in its spec.json for the shim to join; detached when the task ends."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from shoal.agent.executor import shim
from shoal.agent.executor.base import ExecutorError
from shoal.agent.executor.process_spec import LaunchSpec
from shoal.agent.network import taskfiles
from shoal.agent.network.plumbing import Plumbing
from shoal.log import get_logger

log = get_logger("shoal.agent.process")


async def attach(specs: LaunchSpec, task_dir: Path, launch: dict[str, Any]) -> None:
    """A task on swarm networks: its own network namespace with an interface on
    each (plumbing.py), its own hostname, /etc/hosts and /etc/resolv.conf. Without
    the plumbing (the daemon is not root) the attachments are not honoured, and
    the task's log and the daemon's say so; the task runs on the node's network."""
    attachments = specs.task.networks_attachments or []
    if not attachments:
        return
    plumbing = specs.executor.plumbing
    if plumbing is None:
        names = ", ".join(a.network.spec.name or a.network.id for a in attachments)
        message = (
            f"network attachments not honoured ({names}): the process runtime gives "
            "a task its own network namespace only when the daemon runs as root; "
            "the task shares the node's network"
        )
        log.warning(message, task=specs.task_id)
        with (task_dir / shim.LOG_FILE).open("ab") as f:
            f.write(shim.encode_record(time.time_ns(), shim.STDERR, f"shoal: {message}\n".encode()))
        return
    hostname = specs.hostname(launch["env"])
    try:
        path = await plumbing.attach(
            specs.task_id, attachments, host_ports=list(specs.meta.host_ports)
        )
    except Exception as e:  # noqa: BLE001 - netlink errors too: the task cannot start
        await plumbing.detach(specs.task_id)
        raise ExecutorError(f"cannot attach the task to its networks: {e}") from e
    binds = await asyncio.to_thread(taskfiles.write, task_dir, hostname, attachments)
    launch["netns"] = path
    launch["hold"] = plumbing.sandboxes_of(specs.task_id)
    launch["hostname"] = hostname
    # First, before any copy of the tree (a root of its own) is made of it.
    launch["mounts"] = [{"detach": str(plumbing.netns_dir)}, *launch["mounts"], *binds]


async def detach(plumbing: Plumbing | None, task_id: str) -> None:
    """Release the task's network namespace and its addresses (none without plumbing)."""
    if plumbing is not None:
        await plumbing.detach(task_id)
