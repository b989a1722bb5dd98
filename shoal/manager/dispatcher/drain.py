"""Draining: a leaving task gets its stop signal only once every node has taken it out
of its backends (docs/networking.md, "Draining: the order of events that makes an
update drop nothing").

Each session numbers the assignments that carry a network update (`network_seq`); the
node acknowledges the highest it has applied. When a task's desired state moves past
RUNNING, the network view has already marked it not running in the updates of that
same routing round; the task is then pending until every node that had a session at
that moment has acknowledged the sequence number it had been sent by then. A node
whose session ends stops counting (it has no backends to program, or its next session
starts with the whole view). Then the task's own node is told (`Assignment.drained`).

The tracker is bookkeeping only: no waiting here. That a node that never answers does
not block the stop forever is the agent's side: it waits for `drained` at most
min(DRAIN_TIMEOUT_S, the task's stop grace period) (agent/task_runner.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class _Pending:
    node_id: str  # the leaving task's node, which is told
    # node -> the network_seq it must have applied
    need: dict[str, int] = field(default_factory=dict)


class DrainTracker:
    def __init__(self) -> None:
        self._pending: dict[str, _Pending] = {}  # by task
        self._acked: dict[str, int] = {}  # node -> highest network_seq applied

    def __len__(self) -> int:
        return len(self._pending)

    def session_started(self, node_id: str) -> None:
        """A new session numbers from 1 again."""
        self._acked[node_id] = 0

    def leaving(self, task_id: str, task_node: str, sent: dict[str, int]) -> bool:
        """Task `task_id` on `task_node` is leaving; `sent` is, per node with a
        session, the highest network_seq sent to it so far (this round's included).
        True when it is drained already (every node has acknowledged that much)."""
        need = {n: seq for n, seq in sent.items() if self._acked.get(n, 0) < seq}
        if not need:
            self._pending.pop(task_id, None)
            return True
        self._pending[task_id] = _Pending(task_node, need)
        return False

    def acked(self, node_id: str, seq: int) -> dict[str, list[str]]:
        """Node `node_id` has applied up to `seq`: the tasks now drained, by their node."""
        if seq <= self._acked.get(node_id, 0):
            return {}
        self._acked[node_id] = seq
        return self._release(lambda p: p.need.get(node_id, seq + 1) <= seq, node_id)

    def session_ended(self, node_id: str) -> dict[str, list[str]]:
        """The node's session is gone: it is no longer waited for; the tasks that were
        waiting only for it are drained (by their node), and its own pending tasks are
        dropped (the node cannot be told; its next session's agent times out)."""
        self._acked.pop(node_id, None)
        for task_id in [t for t, p in self._pending.items() if p.node_id == node_id]:
            del self._pending[task_id]
        return self._release(lambda p: node_id in p.need, node_id)

    def forget(self, task_id: str) -> None:
        """The task was removed, or has stopped anyway: nothing to tell."""
        self._pending.pop(task_id, None)

    def _release(self, hit: Callable[[_Pending], bool], node_id: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for task_id, p in list(self._pending.items()):
            if not hit(p):
                continue
            del p.need[node_id]
            if not p.need:
                del self._pending[task_id]
                out.setdefault(p.node_id, []).append(task_id)
        return out
