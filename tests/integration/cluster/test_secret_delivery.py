"""Issue 10's delivery acceptance on three nodes (process runtime): a one-replica
service using a secret, its task pinned to node-2.

- the secret reaches the task (`/run/secrets/<name>` in its mount namespace);
- its bytes (and their base64, as the API received them) are in no file under the
  other two nodes' data dirs, nor in their logs; nor on the task node's disk (its data
  dir, its log, the task's working dir, which the task writes to); nor in clear in the
  manager's database file, byte for byte;
- only node-2's agent ever receives it (`docker info`: "Secrets received", counted by
  each agent from the assignments it gets), and it drops it once the service is
  removed ("Secrets held" back to 0, the task's directory gone).
"""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from ..cluster_harness import Cluster, ClusterNode
from ..harness import wait_until

pytestmark = pytest.mark.integration

TASK_NODE = "node-2"
# What `/info` shows (DriverStatus, printed by `docker info` under the storage driver).
HELD = "Secrets held"
RECEIVED = "Secrets received"
STORE_FILES = ("store.db", "store.db-wal")


def driver_status(node: ClusterNode) -> dict[str, int]:
    return {k: int(v) for k, v in node.info()["DriverStatus"]}


def files_holding(root: Path, needles: list[bytes]) -> tuple[list[str], int]:
    """(files under `root` holding any of `needles`, files read); regular files on
    `root`'s own filesystem only (a tmpfs mounted below it is not disk)."""
    found: list[str] = []
    read = 0
    device = root.stat().st_dev
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.lstat(os.path.join(dirpath, d)).st_dev == device]
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if st.st_dev != device or not os.path.isfile(path) or os.path.islink(path):
                continue
            with open(path, "rb") as f:
                data = f.read()
            read += 1
            if any(n in data for n in needles):
                found.append(path)
    return found, read


def mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p.startswith(prefix)]


def test_secret_reaches_only_its_task_and_no_disk(cluster: Cluster, tmp_path: Path) -> None:
    m = cluster.manager
    nodes = cluster.nodes
    payload = b"shoal-it-" + secrets.token_hex(24).encode()  # 57 bytes, found nowhere else
    needles = [payload, base64.b64encode(payload)]
    received0 = {name: driver_status(n)[RECEIVED] for name, n in nodes.items()}
    workdir = tmp_path / "work"
    workdir.mkdir()

    m.docker("secret", "create", "s3", "-", input=payload.decode())
    m.create_service(
        "holder", "--secret", "s3", "--constraint", f"node.hostname=={TASK_NODE}",
        "--workdir", str(workdir),
        "busybox", "sh", "-c", "wc -c < /run/secrets/s3 > size; exec sleep 1000",
    )  # fmt: skip
    placed = cluster.wait_converged("holder", 1, per_node={"node-1": 0, TASK_NODE: 1, "node-3": 0})
    ((task_id, pid),) = placed[TASK_NODE].items()
    cat = ["nsenter", "-t", str(pid), "-m", "cat", "/run/secrets/s3"]
    assert subprocess.run(cat, capture_output=True, timeout=10).stdout == payload
    wait_until(lambda: (workdir / "size").exists(), what="the task to read its secret")
    assert (workdir / "size").read_text().strip() == str(len(payload))

    # Only the task's node received it, once.
    for name, node in nodes.items():
        status = driver_status(node)
        want = 1 if name == TASK_NODE else 0
        assert status[RECEIVED] - received0[name] == want, (name, status)
        assert status[HELD] == want, (name, status)

    # No byte of it on any disk: every file of every node's data dir and log, the
    # task's working dir; the task's tmpfs is not even in the host's tree.
    scanned = 0
    for name, node in nodes.items():
        for root in (node.root, node.log_path.parent):
            found, read = files_holding(root, needles)
            assert found == [], f"{name}: the secret is on disk in {found}"
            scanned += read
        assert mounts_under(node.root) == [], name
    found, _ = files_holding(workdir, needles)
    assert found == []
    # The manager's database, byte for byte (sealed records only).
    store = [m.data_dir / "swarm" / f for f in STORE_FILES if (m.data_dir / "swarm" / f).exists()]
    assert store, "the manager's store file was not found"
    for path in store:
        assert payload not in path.read_bytes(), path
    assert scanned > len(nodes)

    # Removed: the node drops it, and the task's directory (its tmpfs's mount point) goes.
    m.docker("service", "rm", "holder")
    task_node = nodes[TASK_NODE]
    wait_until(
        lambda: driver_status(task_node)[HELD] == 0,
        what=f"{TASK_NODE} to drop the secret",
    )
    wait_until(lambda: task_id not in task_node.live_pids(), what="the task to exit")
    wait_until(
        lambda: not (task_node.data_dir / "agent" / "tasks" / task_id).exists(),
        what="the task's directory to be removed",
    )
    for name, node in nodes.items():
        assert driver_status(node)[RECEIVED] - received0[name] == (name == TASK_NODE)
        found, _ = files_holding(node.root, needles)
        assert found == [], name
    m.docker("secret", "rm", "s3")
