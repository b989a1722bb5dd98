"""Hollow nodes at a small scale (issue 14): a real manager daemon (`--runtime sim`),
50 hollow nodes from two `shoal sim` processes (40 + 10) joined with the real join
protocol, 20 services of 100 replicas created with the docker CLI. Everything runs,
spread evenly, one task per slot; then the 10-node process is killed (a failure wave):
those nodes go Down after the heartbeat deadline and their tasks run elsewhere, still
one per slot. Bounded waits only; every process and directory made here is removed by
its own handle."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..cluster_harness import Cluster, ClusterNode, NodeFactory
from ..harness import SHOAL, wait_until

pytestmark = pytest.mark.integration

STAYING = 40
LEAVING = 10
SERVICES = 20
REPLICAS = 100
TOTAL = SERVICES * REPLICAS
# 2,000 tasks over 51 nodes (the manager runs the sim runtime too): about 39 each.
PER_NODE_MIN, PER_NODE_MAX = 25, 55
JOIN_TIMEOUT_S = 180.0
CONVERGE_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 30.0


class SimProcess:
    """One `shoal sim` process, its log and data dir in a directory of its own."""

    def __init__(self, manager: ClusterNode, token: str, nodes: int, prefix: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="shoal-sim-", dir="/tmp"))
        self.log_path = self.root / "sim.log"
        self.prefix = prefix
        self.names = {f"{prefix}-{i}" for i in range(nodes)}
        argv = [
            str(SHOAL),
            "sim",
            "--nodes",
            str(nodes),
            "--join",
            manager.listen_addr,
            "--token",
            token,
            "--name-prefix",
            prefix,
            "--start-delay",
            "20",
            "--data-dir",
            str(self.root / "data"),
        ]
        with self.log_path.open("ab") as log:
            self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def kill9(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> int | None:
        """SIGTERM; SIGKILL after STOP_TIMEOUT_S. The exit code, None if killed."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is not None:
            return proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def sims() -> Iterator[list[SimProcess]]:
    made: list[SimProcess] = []
    yield made
    for sim in made:
        sim.cleanup()


def nodes_by_state(cluster: Cluster) -> dict[str, str]:
    """{hostname: state} of every node the manager lists."""
    return {n["Description"]["Hostname"]: n["Status"]["State"] for n in cluster.manager.api.nodes()}


def live_tasks(cluster: Cluster) -> list[dict[str, Any]]:
    return [t for t in cluster.manager.api.tasks() if t["DesiredState"] == "running"]


def check_running(
    cluster: Cluster,
    hostnames: dict[str, str],
    down: frozenset[str] | set[str] = frozenset(),
) -> Counter[str] | None:
    """The tasks per hostname once all TOTAL run, one per slot, none on a `down` node;
    None while not there yet."""
    tasks = live_tasks(cluster)
    running = [t for t in tasks if t["Status"]["State"] == "running"]
    if len(running) != TOTAL or len(tasks) != TOTAL:
        return None
    slots = Counter((t["ServiceID"], t["Slot"]) for t in tasks)
    duplicates = [s for s, n in slots.items() if n > 1]
    assert not duplicates, f"slots with more than one live task: {duplicates[:10]}"
    assert len(slots) == TOTAL
    placed = Counter(hostnames[t["NodeID"]] for t in running)
    return None if set(placed) & down else placed


def test_fifty_hollow_nodes_run_two_thousand_tasks_and_survive_a_failure_wave(
    node_factory: NodeFactory, sims: list[SimProcess]
) -> None:
    manager = node_factory("sim-manager", extra_args=["--runtime", "sim"])
    cluster = Cluster.init(manager)  # dispatcher heartbeat 1 s: Down after ~3 s
    token = cluster.join_token()
    staying = SimProcess(manager, token, STAYING, "hollow-a")
    leaving = SimProcess(manager, token, LEAVING, "hollow-b")
    sims += [staying, leaving]
    hollow = staying.names | leaving.names

    def all_ready() -> dict[str, str] | None:
        for sim in sims:
            assert sim.proc is not None and sim.proc.poll() is None, sim.log_tail()
        states = nodes_by_state(cluster)
        ready = {h for h, s in states.items() if s == "ready"}
        return states if hollow <= ready else None

    states = wait_until(all_ready, timeout=JOIN_TIMEOUT_S, what="50 hollow nodes ready")
    assert len(states) == STAYING + LEAVING + 1, states
    hostnames = {n["ID"]: n["Description"]["Hostname"] for n in manager.api.nodes()}
    assert len(set(hostnames.values())) == len(hostnames)  # a node each, no doubles

    for i in range(SERVICES):
        manager.create_service(f"svc-{i}", "--replicas", str(REPLICAS), "busybox", "sleep", "1000")
    placed = wait_until(
        lambda: check_running(cluster, hostnames),
        timeout=CONVERGE_TIMEOUT_S,
        what=f"{TOTAL} tasks running",
    )
    assert set(placed) == hollow | {"sim-manager"}, placed
    uneven = {h: n for h, n in placed.items() if not PER_NODE_MIN <= n <= PER_NODE_MAX}
    assert not uneven, f"nodes far from an even share of {TOTAL}: {uneven}"

    # The failure wave: the 10-node process dies at once.
    leaving.kill9()
    wait_until(
        lambda: all(nodes_by_state(cluster)[h] == "down" for h in leaving.names),
        timeout=JOIN_TIMEOUT_S,
        what="the 10 killed hollow nodes Down",
    )
    states = nodes_by_state(cluster)
    assert all(states[h] == "ready" for h in staying.names), states
    placed = wait_until(
        lambda: check_running(cluster, hostnames, down=leaving.names),
        timeout=CONVERGE_TIMEOUT_S,
        what=f"{TOTAL} tasks running again on the nodes left",
    )
    assert set(placed) == staying.names | {"sim-manager"}, placed
    # 2,000 over 41 nodes now: about 49 each; the moved tasks spread over all of them.
    uneven = {h: n for h, n in placed.items() if not 35 <= n <= 65}
    assert not uneven, f"nodes far from an even share after the wave: {uneven}"

    # The staying fleet stops cleanly on SIGTERM.
    assert staying.stop() == 0, staying.log_tail()
