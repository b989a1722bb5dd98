"""Issue 8's DNS acceptance on the three-node namespace lab: from inside a task, its
node's resolver (127.0.0.11 in the task's namespace, named by the task's resolv.conf)
answers `tasks.web` with every running task's address across the three nodes, `web`
with the VIP `docker service inspect` shows, follows a scale up, a failed task and a
scale down, answers a dnsrr service
with its tasks' addresses, answers nothing of web to a task on another network, and
serves the task again after its node's daemon is killed and started.

The lab (namespaces, veths, bridge) is named here with a random suffix and removed by
those names at the end, even after a failure."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from ..cluster_harness import Cluster
from ..harness import wait_until
from .test_overlay import SLEEP, pid_of, task_addrs

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trio(netns_trio: Cluster) -> Cluster:
    return netns_trio


def nslookup(pid: int, name: str) -> tuple[int, str]:
    """busybox nslookup inside task process `pid`'s network and mount namespaces, so
    with the task's own /etc/resolv.conf, as the task would ask."""
    r = subprocess.run(
        ["nsenter", "-t", str(pid), "-n", "-m", "busybox", "nslookup", "-type=a", name],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return r.returncode, r.stdout + r.stderr


def addresses(pid: int, name: str) -> set[str]:
    """The addresses the task's resolver gives for `name` (empty when none)."""
    _, out = nslookup(pid, name)
    lines = out.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("Name:")), len(lines))
    return {line.split()[1] for line in lines[start:] if line.startswith("Address:")}


def vip(trio: Cluster, service: str, network: str) -> str:
    net_id = json.loads(trio.manager.docker("network", "inspect", network).stdout)[0]["Id"]
    svc = json.loads(trio.manager.docker("service", "inspect", service).stdout)[0]
    for v in svc["Endpoint"].get("VirtualIPs") or []:
        if v["NetworkID"] == net_id:
            return str(v["Addr"].split("/")[0])
    raise AssertionError(f"{service} has no VIP on {network}: {svc['Endpoint']}")


def test_service_discovery_by_dns_across_three_nodes(trio: Cluster) -> None:
    manager = trio.manager
    manager.docker("network", "create", "-d", "overlay", "--subnet", "10.200.0.0/24", "appnet")
    manager.docker("network", "create", "-d", "overlay", "--subnet", "10.201.0.0/24", "othernet")
    manager.docker(
        "service", "create", "--detach", "--name", "web", "--network", "appnet",
        "--replicas", "3", "--restart-condition", "none", "busybox", *SLEEP,
    )  # fmt: skip
    manager.docker("service", "create", "--detach", "--name", "client", "--network", "appnet",
                   "--constraint", "node.role==worker", "busybox", *SLEEP)  # fmt: skip
    manager.docker("service", "create", "--detach", "--name", "outsider", "--network",
                   "othernet", "busybox", *SLEEP)  # fmt: skip
    trio.wait_converged("web", 3, check=lambda c: len(c) == 3)
    client_placement = trio.wait_converged("client", 1)
    client = pid_of(client_placement)
    outsider = pid_of(trio.wait_converged("outsider", 1))

    # tasks.web: the three tasks' addresses, on three nodes.
    web = set(task_addrs(trio, "web", "appnet").values())
    assert len(web) == 3, web
    wait_until(lambda: addresses(client, "tasks.web") == web, what="tasks.web = the 3 tasks")
    # web: the VIP docker service inspect shows.
    web_vip = vip(trio, "web", "appnet")
    assert addresses(client, "web") == {web_vip}
    assert addresses(client, "WEB.") == {web_vip}
    assert addresses(client, "web.appnet") == {web_vip}

    # Scaled to five: five addresses.
    manager.docker("service", "scale", "--detach", "web=5")
    placement = trio.wait_converged("web", 5)
    by_task = task_addrs(trio, "web", "appnet")
    web5 = set(by_task.values())
    assert len(web5) == 5, web5
    wait_until(lambda: addresses(client, "tasks.web") == web5, what="tasks.web = the 5 tasks")

    # A task fails (killed; not restarted): its address leaves the answers.
    victim, pid = next(iter(next(iter(placement.values())).items()))
    os.kill(pid, signal.SIGKILL)
    wait_until(
        lambda: addresses(client, "tasks.web") == web5 - {by_task[victim]},
        what="tasks.web without the failed task",
    )
    # Scaled down: only the tasks kept answer.
    manager.docker("service", "scale", "--detach", "web=2")
    wait_until(
        lambda: (
            len(addresses(client, "tasks.web")) == 2
            and addresses(client, "tasks.web") <= web5 - {by_task[victim]}
        ),
        what="tasks.web = 2 of the running tasks",
    )

    # A task on another network cannot resolve web (the name is forwarded; the lab's
    # upstream is unreachable, so the answer is a prompt failure, not a hang).
    code, out = nslookup(outsider, "web")
    assert addresses(outsider, "web") == set(), out
    assert addresses(outsider, "tasks.web") == set()

    # dnsrr: the service's name resolves to its tasks' addresses.
    manager.docker(
        "service", "create", "--detach", "--name", "rr", "--network", "appnet",
        "--endpoint-mode", "dnsrr", "--replicas", "2", "busybox", *SLEEP,
    )  # fmt: skip
    trio.wait_converged("rr", 2)
    rr = set(task_addrs(trio, "rr", "appnet").values())
    assert len(rr) == 2, rr
    wait_until(lambda: addresses(client, "rr") == rr, what="rr = its 2 tasks")

    # The client's node daemon killed (-9) and started again: it adopts the task's
    # namespace and its resolver serves there again, from the view the manager resends.
    (client_node,) = [trio.nodes[h] for h, tasks in client_placement.items() if tasks]
    expected = addresses(client, "tasks.web")
    client_node.kill9()
    client_node.start()
    assert pid_of(trio.wait_converged("client", 1)) == client  # the same task, adopted
    wait_until(lambda: addresses(client, "rr") == rr, what="rr after the daemon restarted")
    assert addresses(client, "tasks.web") == expected

    manager.docker("service", "rm", "web", "client", "outsider", "rr")
    for net in ("appnet", "othernet"):
        wait_until(
            lambda n=net: manager.docker("network", "rm", n, check=False).returncode == 0,
            what=f"{net} removed after its services",
        )
