"""`docker service logs` of a service whose tasks run on every node of the trio: the
manager gathers each remote task's logs over that node's session, under the flow
window, and merges them in time order; -f keeps them coming."""

from __future__ import annotations

import re
import threading
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime

import pytest

from ..cluster_harness import Cluster
from ..harness import wait_until

pytestmark = pytest.mark.integration

# More lines per task than a few log frames hold: the agents must wait for acks.
LINES = 2000
PRINTER = f"i=0; while [ $i -lt {LINES} ]; do echo line $i; i=$((i+1)); done; sleep 1000"
# `--timestamps`: `<time> printer.<task>@<node>    | line N`
LINE = re.compile(r"^(?P<ts>\S+) printer\.\S+@(?P<node>\S+)\s+\| line (?P<n>\d+)$")
FOLLOW_TIMEOUT_S = 60.0


@pytest.fixture
def printer(cluster: Cluster) -> Iterator[None]:
    cluster.manager.docker(
        "service", "create", "--detach", "--name", "printer", "--mode", "global",
        "busybox", "sh", "-c", PRINTER,
    )  # fmt: skip
    cluster.wait_converged("printer", 3)
    yield


def by_node(lines: list[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for line in lines:
        m = LINE.match(line)
        assert m, line
        out[m.group("node")].append(int(m.group("n")))
    return out


def stamp(line: str) -> tuple[datetime, int]:
    """The line's time: RFC 3339 with up to nine fraction digits (the CLI trims zeros)."""
    m = LINE.match(line)
    assert m, line
    head, _, frac = m.group("ts").rstrip("Z").partition(".")
    return datetime.fromisoformat(head), int((frac + "000000000")[:9])


def wait_all_printed(cluster: Cluster) -> list[str]:
    def done() -> list[str] | None:
        out = cluster.manager.docker("service", "logs", "--timestamps", "printer").stdout
        lines = out.splitlines()
        return lines if len(lines) == 3 * LINES else None

    return wait_until(done, what=f"{3 * LINES} lines from the three nodes")


def test_logs_gather_every_node_in_time_order(cluster: Cluster, printer: None) -> None:
    lines = wait_all_printed(cluster)
    nodes = by_node(lines)
    assert sorted(nodes) == ["node-1", "node-2", "node-3"]
    for node, ns in nodes.items():
        assert ns == list(range(LINES)), f"{node}: lines missing or out of order"
    stamps = [stamp(line) for line in lines]
    assert stamps == sorted(stamps), "the nodes' lines are not merged in time order"
    tail = cluster.manager.docker("service", "logs", "--timestamps", "--tail", "5", "printer")
    tails = by_node(tail.stdout.splitlines())
    assert {n: ns for n, ns in tails.items()} == {
        n: list(range(LINES - 5, LINES)) for n in ("node-1", "node-2", "node-3")
    }


def test_following_logs_streams_every_nodes_lines(cluster: Cluster, printer: None) -> None:
    wait_all_printed(cluster)
    lines: list[str] = []
    with cluster.manager.docker_popen("service", "logs", "--timestamps", "-f", "printer") as follow:

        def read() -> None:
            assert follow.stdout is not None
            for line in follow.stdout:
                lines.append(line.rstrip("\n"))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            wait_until(
                lambda: len(lines) >= 3 * LINES,
                timeout=FOLLOW_TIMEOUT_S,
                what="every line, followed",
            )
        finally:
            follow.kill()
            reader.join(timeout=FOLLOW_TIMEOUT_S)
    nodes = by_node(lines)
    assert {n: ns for n, ns in nodes.items()} == {
        n: list(range(LINES)) for n in ("node-1", "node-2", "node-3")
    }
