"""A manager whose disk fills up: its data dir on a small tmpfs mounted by this test.

Writes then fail as dockerd fails them, a 500 with Docker's `{"message": ...}` naming
the disk (no stack trace, no reference to a log), and the docker CLI shows it; reads go
on; nothing committed before is damaged (after `kill -9` and a restart every
acknowledged service is there with its labels, and SQLite's integrity check passes);
once space is freed, writes succeed again and the cluster converges.

The tmpfs is mounted on the daemon's data dir before it starts and unmounted (by its
path, which this test made) after the daemon stopped, even after a failure."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import Daemon, DaemonFactory, Response, init_swarm, parse_table, wait_until

pytestmark = pytest.mark.integration

DISK_SIZE = "6m"
# A label large enough that a few writes need new pages of the store's WAL.
LABEL_BYTES = 48 * 1024
MAX_WRITES_UNTIL_FULL = 200
FILL_CHUNK = 64 * 1024
SLEEP = ("sleep", "1000")


def mount_tmpfs(where: Path, size: str) -> None:
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "shoal-test-disk", str(where)],
        check=True,
        capture_output=True,
        timeout=30,
    )


def unmount(where: Path) -> None:
    subprocess.run(["umount", str(where)], check=True, capture_output=True, timeout=30)


@pytest.fixture
def small_disk(daemon_factory: DaemonFactory) -> Iterator[Daemon]:
    """A daemon (not started) whose data dir is a tmpfs of DISK_SIZE."""
    if os.geteuid() != 0:
        pytest.fail("mounting a tmpfs needs root (the integration suite runs as root)")
    daemon = daemon_factory(node_name="fullhouse", start=False)
    mount_tmpfs(daemon.data_dir, DISK_SIZE)
    try:
        yield daemon
    finally:
        # The daemon goes first (gracefully: a leftover task is a leak), then the mount.
        killed = daemon.cleanup()
        if os.path.ismount(daemon.data_dir):
            unmount(daemon.data_dir)
        with contextlib.suppress(FileNotFoundError):
            daemon.data_dir.rmdir()
            daemon.root.rmdir()
        assert not killed, f"task processes outlived the daemon's stop: {killed}"
        assert not os.path.ismount(daemon.data_dir)


def fill(directory: Path) -> Path:
    """Write a file until the disk has no room left; returns its path."""
    filler = directory / "filler"
    # Unbuffered: every write reaches the disk (or fails) now, none at close.
    with filler.open("wb", buffering=0) as f:
        for size in (FILL_CHUNK, 4096, 512):
            with contextlib.suppress(OSError):
                while f.write(b"\0" * size):
                    pass
    st = os.statvfs(directory)
    assert st.f_bavail * st.f_frsize < 4096, st
    return filler


def create(daemon: Daemon, name: str, label: str) -> Response:
    spec = {
        "Name": name,
        "Labels": {"big": label},
        "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}},
        "Mode": {"Replicated": {"Replicas": 0}},
    }
    return daemon.http("POST", "/v1.41/services/create", spec, timeout=30)


def test_a_full_disk_fails_writes_clearly_and_loses_nothing(small_disk: Daemon) -> None:
    daemon = small_disk
    daemon.start()
    init_swarm(daemon)
    daemon.create_service("keeper", "--replicas", "1", "busybox", *SLEEP)
    (keeper_pid,) = daemon.wait_processes("keeper", 1, argv=SLEEP).values()

    acked: dict[str, str] = {}  # service name -> its label, acknowledged
    for i in range(3):
        label = f"before-{i}-" + "a" * 100
        resp = create(daemon, f"before-{i}", label)
        assert resp.status == 201, resp
        acked[f"before-{i}"] = label

    filler = fill(daemon.data_dir)
    refused: Response | None = None
    for i in range(MAX_WRITES_UNTIL_FULL):
        name, label = f"during-{i}", f"during-{i}-" + "b" * LABEL_BYTES
        resp = create(daemon, name, label)
        if resp.status == 201:
            acked[name] = label  # the store's files had room left for it: it counts
            continue
        refused = resp
        break
    assert refused is not None, f"{MAX_WRITES_UNTIL_FULL} writes succeeded on a full disk"

    # Docker's shape: a 500 with one message naming the disk, no trace of a traceback.
    assert refused.status == 500, refused
    assert refused.headers.get("content-type", "").startswith("application/json"), refused
    body = refused.json()
    assert set(body) == {"message"}, body
    message = body["message"]
    assert "no space left on device" in message, message
    assert str(daemon.data_dir) in message, message
    assert "Traceback" not in message and "reference" not in message, message
    # The docker CLI shows it as dockerd's errors are shown.
    cli = daemon.docker(
        "service", "create", "--detach", "--name", "refused", "busybox", *SLEEP, check=False
    )
    assert cli.returncode != 0, cli
    assert "Error response from daemon" in cli.stderr, cli.stderr
    assert "no space left on device" in cli.stderr, cli.stderr
    # Reads go on, and show nothing that was refused.
    names = daemon.service_names()
    assert names == {"keeper", *acked}, names
    assert daemon.running_tasks("keeper"), "the running task stays as it was"

    # Room again: writes succeed, and the orchestrator's loops work again.
    filler.unlink()
    resp = wait_until(
        lambda: (r := create(daemon, "after", "after")).status == 201 and r,
        what="a write to succeed once space was freed",
    )
    assert resp
    acked["after"] = "after"
    daemon.docker("service", "scale", "--detach", "keeper=2")
    daemon.wait_processes("keeper", 2, argv=SLEEP)

    # Nothing committed is damaged: a kill -9, a restart, and every write read back.
    daemon.kill9()
    daemon.start()
    listed = wait_until(lambda: {s["Spec"]["Name"]: s for s in daemon.api.services()})
    assert set(listed) == {"keeper", *acked}, sorted(listed)
    for name, label in acked.items():
        assert listed[name]["Spec"]["Labels"] == {"big": label}, name
    after = daemon.wait_processes("keeper", 2, argv=SLEEP)
    assert keeper_pid in after.values(), "the first task was adopted, not restarted"
    rows = parse_table(daemon.docker("service", "ls").stdout)
    assert {r["NAME"] for r in rows} == set(listed), rows

    # And the store's file is sound.
    daemon.stop()
    databases = list(daemon.data_dir.rglob("*.db"))
    assert databases, "no store database found in the data dir"
    for path in databases:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",), path
        finally:
            db.close()
    daemon.start()  # the fixture stops it gracefully: the tasks go with it
    wait_until(lambda: json.dumps(daemon.api.services()), what="the restarted daemon")
