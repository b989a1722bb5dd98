"""Process tasks on a swarm network, with real namespaces: each in its own network,
UTS and mount namespaces (plumbing + the process executor's shim), and the plumbing's
adoption after a restart. The manager side is not involved: tasks are built by hand."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from shoal.agent.executor.process import ProcessExecutor
from shoal.agent.network import netns
from shoal.agent.network.plumbing import Plumbing
from shoal.types.agent import LogOptions
from shoal.types.meta import TaskMeta
from shoal.types.network import NetworkAttachment, NetworkSpec
from shoal.types.service import ContainerSpec, TaskSpec
from shoal.types.task import Task, TaskState, TaskStatus

from ..cluster_harness import NetnsLab
from .test_plumbing import Recorder, listing, network

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

SERVER = """
import http.server, socket
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = socket.gethostname().encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("0.0.0.0", 80), H).serve_forever()
"""


def task(net_att: NetworkAttachment, slot: int, hostname: str | None = None) -> Task:
    spec = ContainerSpec(image="busybox", command=[sys.executable, "-c", SERVER], hostname=hostname)
    return Task(
        id=secrets.token_hex(12),
        spec=TaskSpec(container_spec=spec),
        service_id="svcweb",
        slot=slot,
        node_id="node1",
        status=TaskStatus(timestamp="", state=TaskState.ASSIGNED.wire, message=""),
        desired_state=TaskState.RUNNING.wire,
        networks_attachments=[net_att],
    )


def get(netns_path: str, url: str) -> str | None:
    r = subprocess.run(
        ["nsenter", f"--net={netns_path}", "curl", "-s", "-m", "2", url],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    return r.stdout if r.returncode == 0 else None


def answer(netns_path: str, url: str, deadline_s: float = 10.0) -> str | None:
    """The body served at `url`, retried while the server starts listening."""
    end = time.monotonic() + deadline_s
    while True:
        body = get(netns_path, url)
        if body is not None or time.monotonic() > end:
            return body
        time.sleep(0.05)


def in_task(pid: int, *argv: str) -> str:
    return subprocess.run(
        ["nsenter", "-t", str(pid), "-m", "-u", "-n", *argv],
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout  # fmt: skip


@pytest.fixture
def node() -> Iterator[tuple[str, str]]:
    lab = NetnsLab()
    try:
        yield lab.add_host()
    finally:
        assert lab.teardown() == []


def test_three_replicas_on_port_80_each_in_its_own_namespaces(
    node: tuple[str, str], tmp_path: Path
) -> None:
    ns, addr = node
    before = listing(ns)
    hosts_before = Path("/etc/hosts").read_bytes()
    net = f"10.212.{secrets.randbelow(250)}"
    n1 = network(f"{net}.0/24")
    plumbing = Plumbing(tmp_path / "agent", tmp_path / "agent", addr, f"/run/netns/{ns}")
    recorder = Recorder()
    plumbing.add_listener(recorder)
    executor = ProcessExecutor(tmp_path / "agent", "node-1", {})
    executor.plumbing = plumbing
    tasks = [
        task(NetworkAttachment(network=n1, addresses=[f"{net}.{i + 2}/24"]), i + 1,
             hostname="web-{{.Task.Slot}}" if i == 0 else None)
        for i in range(3)
    ]  # fmt: skip
    meta = TaskMeta(service_name="web")

    async def run() -> None:
        controllers = [executor.controller(t, meta) for t in tasks]
        try:
            states = [await c.start() for c in controllers]
            assert all(s.running for s in states)
            paths = [plumbing.task_netns(t.id) for t in tasks]
            assert all(p is not None for p in paths)
            assert [e[1] for e in recorder.events] == [t.id for t in tasks]
            first = paths[0]
            assert first is not None
            # every replica listens on port 80, each answering with its own hostname
            bodies = [
                await asyncio.to_thread(answer, first, f"http://{net}.{i + 2}/") for i in range(3)
            ]
            assert bodies == ["web-1", tasks[1].id[:12], tasks[2].id[:12]]
            pid = states[0].pid
            assert pid is not None
            assert in_task(pid, "hostname").strip() == "web-1"
            hosts = in_task(pid, "cat", "/etc/hosts")
            assert f"{net}.2\tweb-1\n" in hosts and "127.0.0.1\tlocalhost\n" in hosts
            assert in_task(pid, "cat", "/etc/resolv.conf").startswith("nameserver 127.0.0.11\n")
            assert Path("/etc/hosts").read_bytes() == hosts_before  # noqa: ASYNC240
            # a task's end takes its namespace and interfaces away
            await controllers[2].shutdown(0.0)
            await controllers[2].wait()
            assert not netns.exists(Path(paths[2] or ""))
            assert ("detached", tasks[2].id, ()) in recorder.events
            assert get(first, f"http://{net}.4/") is None
        finally:
            for c in controllers:
                await c.remove()
            await plumbing.close()
        assert not plumbing.netns_dir.exists()
        assert not plumbing.record.path.exists()

    asyncio.run(run())
    assert listing(ns) == before


def test_a_restarted_agent_adopts_what_is_still_wanted_and_removes_the_rest(
    node: tuple[str, str], tmp_path: Path
) -> None:
    ns, addr = node
    before = listing(ns)
    net = f"10.213.{secrets.randbelow(250)}"
    n1 = network(f"{net}.0/24")
    att = lambda a: [NetworkAttachment(network=n1, addresses=[a])]  # noqa: E731

    async def run() -> None:
        first = Plumbing(tmp_path, tmp_path, addr, f"/run/netns/{ns}")
        kept = await first.attach("kept", att(f"{net}.2/24"))
        dropped = await first.attach("dropped", att(f"{net}.3/24"))
        # the daemon is killed: nothing is closed. The next one starts from the record.
        second = Plumbing(tmp_path, tmp_path, addr, f"/run/netns/{ns}")
        recorder = Recorder()
        second.add_listener(recorder)
        try:
            await second.start(known_tasks={"kept"})
            assert recorder.events == [("attached", "kept", (kept, n1.id))]
            assert netns.exists(Path(kept))
            assert not netns.exists(Path(dropped))
            assert set(second.record.tasks) == {"kept"}
            # the kept task still has its interface and address
            out = subprocess.run(  # noqa: ASYNC221
                ["nsenter", f"--net={kept}", "ip", "-o", "addr", "show", "eth0"],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            assert f"{net}.2/24" in out
        finally:
            await second.close()
        assert not second.record.path.exists()
        assert not netns.exists(Path(kept))

    asyncio.run(run())
    assert listing(ns) == before


def test_without_the_plumbing_attachments_are_not_honoured_and_the_task_log_says_so(
    tmp_path: Path,
) -> None:
    """What a daemon that is not root does (no plumbing): the task runs in the node's
    namespaces, and its log says its attachments were not honoured."""
    n1 = network("10.214.0.0/24")
    n1 = msgspec.structs.replace(n1, spec=NetworkSpec(name="appnet"))
    executor = ProcessExecutor(tmp_path / "agent", "node-1", {})
    t = task(NetworkAttachment(network=n1, addresses=["10.214.0.2/24"]), 1)
    t = msgspec.structs.replace(
        t, spec=TaskSpec(container_spec=ContainerSpec(image="busybox", command=["hostname"]))
    )

    async def run() -> list[bytes]:
        c = executor.controller(t, TaskMeta(service_name="web"))
        try:
            await c.start()
            status = await c.wait()
            assert status.exit_code == 0
            return [m.data async for m in c.logs(LogOptions(stdout=True, stderr=True))]
        finally:
            await c.remove()

    lines = asyncio.run(run())
    assert lines[0].startswith(b"shoal: network attachments not honoured (appnet): "), lines
    assert lines[1] == (socket.gethostname() + "\n").encode(), lines
