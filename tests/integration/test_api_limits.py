"""Limits no request may cross (issue 15): numbers within their Docker types, bodies
within a size, a service within the cluster's replica limit; and a huge service that
is allowed is built in bounded steps, the API answering all the while, the manager's
memory bounded, and a manager restarted on its data dir starting and serving.

The store's index (what `Version.Index` counts) is read from the daemon's own SQLite
file, read-only: it moves on every committed write, so an unchanged index after a
refused request is "nothing changed".
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from shoal.api.body import MAX_BODY_BYTES
from shoal.httpunix import UnixHTTPConnection
from shoal.manager.controlapi.services import MAX_REPLICAS_PER_SERVICE

from .harness import Daemon, DaemonFactory, init_swarm, wait_until

pytestmark = pytest.mark.integration

HUGE = 200_000
# The aim is 100 ms; the bound asserted is generous, for a machine shared with others.
LATENCY_AIM_S = 0.1
LATENCY_BOUND_S = 2.0
RSS_BOUND_BYTES = 1024**3
BUILD_TIMEOUT_S = 240.0


def store_db(daemon: Daemon) -> Path:
    return daemon.data_dir / "swarm" / "store.db"


def store_index(daemon: Daemon) -> int:
    with sqlite3.connect(f"file:{store_db(daemon)}?mode=ro", uri=True) as db:
        row = db.execute("SELECT value FROM meta WHERE key='index'").fetchone()
    return int(row[0]) if row else 0


def task_count(daemon: Daemon) -> int:
    with sqlite3.connect(f"file:{store_db(daemon)}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT count(*) FROM objects WHERE kind='task'").fetchone()[0])


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def spec(name: str, replicas: int | str, constraint: str | None = None) -> str:
    placement = f', "Placement": {{"Constraints": ["{constraint}"]}}' if constraint else ""
    return (
        f'{{"Name": "{name}", "TaskTemplate": {{"ContainerSpec": {{"Image": "busybox", '
        f'"Command": ["sleep", "1000"]}}{placement}}}, '
        f'"Mode": {{"Replicated": {{"Replicas": {replicas}}}}}}}'
    )


@pytest.fixture(scope="module")
def swarm(daemon_factory: DaemonFactory) -> Daemon:
    daemon = daemon_factory(node_name="shoal-limits")
    init_swarm(daemon)
    return daemon


def refused(daemon: Daemon, body: str | bytes, status: int = 400) -> str:
    """POST it to /services/create: refused with `status`, Docker's error shape, and
    nothing changed in the store."""
    before = store_index(daemon)
    resp = daemon.http("POST", "/v1.41/services/create", body, {"Content-Type": "application/json"})
    assert resp.status == status, resp
    data = resp.json()
    assert list(data) == ["message"], data
    assert store_index(daemon) == before
    assert not daemon.api.services()
    return str(data["message"])


def test_poison_replicas_refused_while_decoding(swarm: Daemon) -> None:
    message = refused(swarm, spec("poison", "99999999999999999999"))
    assert message == (
        "json: cannot unmarshal number 99999999999999999999 into Go struct field "
        "ReplicatedService.Mode.Replicated.Replicas of type uint64"
    )
    assert "uint64" in refused(swarm, spec("poison", "-1"))
    assert "uint64" in refused(swarm, spec("poison", "18446744073709551616"))
    assert swarm.ping() == 200


def test_numbers_beyond_their_go_type_refused(swarm: Daemon) -> None:
    port = (
        '{"Name": "p", "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}}, '
        '"EndpointSpec": {"Ports": [{"TargetPort": 4294967296}]}}'
    )
    assert refused(swarm, port).endswith("EndpointSpec.Ports.TargetPort of type uint32")
    grace = (
        '{"Name": "g", "TaskTemplate": {"ContainerSpec": {"Image": "busybox", '
        '"StopGracePeriod": 9223372036854775808}}}'
    )
    assert refused(swarm, grace).endswith("StopGracePeriod of type time.Duration")
    opaque = (
        '{"Name": "m", "TaskTemplate": {"ContainerSpec": {"Image": "busybox", '
        '"Mounts": [{"TmpfsOptions": {"SizeBytes": 1' + "0" * 30 + "}}]}}}"
    )
    assert "cannot unmarshal number" in refused(swarm, opaque)
    resp = swarm.http("POST", "/v1.41/services/x/update?version=18446744073709551616", "{}")
    assert resp.status == 400 and "out of range" in resp.json()["message"], resp


def test_replicas_beyond_the_cluster_limit_refused(swarm: Daemon) -> None:
    message = refused(swarm, spec("toomany", MAX_REPLICAS_PER_SERVICE + 1))
    assert message.startswith("rpc error: code = InvalidArgument desc = Replicas ")
    assert str(MAX_REPLICAS_PER_SERVICE) in message
    result = swarm.docker(
        "service",
        "create",
        "--detach",
        "--replicas",
        str(MAX_REPLICAS_PER_SERVICE + 1),
        "busybox",
        "sleep",
        "1",
        check=False,
    )
    assert result.returncode != 0 and "limit" in result.stderr, result


def test_body_beyond_the_limit_refused_before_it_is_read(swarm: Daemon) -> None:
    big = spec("big", 1)[:-1] + ', "Labels": {"a": "' + "x" * MAX_BODY_BYTES + '"}}'
    message = refused(swarm, big, status=413)
    assert "too large" in message
    # chunked, with no Content-Length, and never ended: refused once the limit is passed
    conn = UnixHTTPConnection(str(swarm.socket), timeout=10)
    try:
        conn.putrequest("POST", "/v1.41/services/create")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        chunk = b"x" * 65536
        with contextlib.suppress(OSError):  # the daemon may answer and close first
            for _ in range(2 * MAX_BODY_BYTES // len(chunk)):
                conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        resp = conn.getresponse()
        assert resp.status == 413
        assert "too large" in json.loads(resp.read())["message"]
    finally:
        conn.close()
    assert swarm.ping() == 200


def test_huge_service_built_while_the_api_answers(swarm: Daemon) -> None:
    """200,000 replicas no node can take (tasks stay pending): `docker service ls`
    answers throughout, the manager stays under 1 GiB, and a restart on the data dir
    starts and serves."""
    assert swarm.proc is not None
    pid = swarm.proc.pid
    latencies: list[float] = []
    peak_rss = [0]
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            resp = swarm.http("GET", "/v1.41/services?status=true", timeout=60)
            latencies.append(time.monotonic() - t0)
            assert resp.status == 200
            peak_rss[0] = max(peak_rss[0], rss_bytes(pid))
            time.sleep(0.02)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    t0 = time.monotonic()
    try:
        resp = swarm.http(
            "POST",
            "/v1.41/services/create",
            spec("huge", HUGE, "node.labels.nowhere==true"),
            {"Content-Type": "application/json"},
        )
        assert resp.status == 201, resp
        cli: list[float] = []

        def built() -> bool:
            c0 = time.monotonic()
            swarm.docker("service", "ls")
            cli.append(time.monotonic() - c0)
            return task_count(swarm) >= HUGE

        wait_until(built, timeout=BUILD_TIMEOUT_S, what=f"{HUGE} tasks", interval=1.0)
        build_s = time.monotonic() - t0
        time.sleep(2)  # the allocator and scheduler catch up with the last chunks
    finally:
        stop.set()
        prober.join()
    worst = max(latencies)
    rss = rss_bytes(pid)
    hwm = rss_bytes(pid, "VmHWM")
    print(
        f"\n{HUGE} replicas built in {build_s:.1f} s; GET /services?status=true: "
        f"{len(latencies)} calls, max {worst * 1000:.0f} ms (aim {LATENCY_AIM_S * 1000:.0f} "
        f"ms), median {sorted(latencies)[len(latencies) // 2] * 1000:.0f} ms; `docker "
        f"service ls`: max {max(cli) * 1000:.0f} ms over {len(cli)} runs; manager RSS "
        f"{rss / 1024**2:.0f} MiB now, {hwm / 1024**2:.0f} MiB peak"
    )
    assert worst < LATENCY_BOUND_S
    assert hwm < RSS_BOUND_BYTES
    states = {t["Status"]["State"] for t in swarm.api.tasks(filters={"service": "huge"})[:1]}
    assert states <= {"new", "pending"}

    swarm.stop()
    t0 = time.monotonic()
    swarm.start()
    assert swarm.proc is not None
    wait_until(lambda: swarm.docker("service", "ls").stdout.count("huge") == 1)
    print(f"restarted with {HUGE} tasks: serving after {time.monotonic() - t0:.1f} s")
    assert task_count(swarm) == HUGE
    assert rss_bytes(swarm.proc.pid, "VmHWM") < RSS_BOUND_BYTES
    # The service goes at once; its tasks go in the background, and the daemon is
    # stopped while it removes them (the test does not wait out 200,000 deletions).
    swarm.api.remove_service("huge")
    assert "huge" not in swarm.docker("service", "ls").stdout
