"""Log drivers under the process runtime, and `docker service logs --since`,
`--details` and a task ID: `--log-driver gelf` sends each line to a real UDP listener
as GELF (Docker's fields, gzip by default, zlib on request, chunked when large) while
`service logs` keeps working; the cluster's TaskDefaults.LogDriver applies to services
that name none; a driver no node has leaves the task pending as Swarm says."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from .gelf_listener import GelfListener
from .harness import Daemon, remove_all_services, wait_until

pytestmark = pytest.mark.integration

# Long enough that its compressed message needs several GELF chunks.
LONG_LINE = "head -c 6000 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo"


@pytest.fixture
def listener(cluster: Daemon) -> Iterator[GelfListener]:
    with GelfListener() as gl:
        yield gl


def test_gelf_sends_each_line_to_the_udp_listener(cluster: Daemon, listener: GelfListener) -> None:
    script = f"echo hello $WHO; echo oops >&2; {LONG_LINE}; exec sleep 1000"
    cluster.create_service(
        "gelfy",
        "--log-driver", "gelf",
        "--log-opt", f"gelf-address={listener.address}",
        "--log-opt", "env=WHO",
        "--env", "WHO=world",
        "busybox", "sh", "-c", script,
    )  # fmt: skip
    (task_id,) = cluster.wait_processes("gelfy", 1)
    image = cluster.service("gelfy")["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
    got = listener.receive(3)
    by_text = {m["short_message"][:5]: m for m in got}
    hello, oops = by_text["hello"], by_text["oops"]
    assert hello["short_message"] == "hello world"
    assert hello["level"] == 6 and oops["level"] == 3  # stdout info, stderr error
    long = next(m for m in got if m not in (hello, oops))
    assert re.fullmatch(r"[0-9a-f]{12000}", long["short_message"])
    assert listener.chunked == 1 and listener.datagrams > 3
    for m in got:
        assert m["version"] == "1.1"
        assert m["host"] == cluster.node_name
        assert abs(m["timestamp"] - time.time()) < 600
        assert m["_container_id"] == task_id
        assert m["_container_name"] == f"gelfy.1.{task_id}"
        assert m["_image_name"] == image  # as the service has it (the CLI adds :latest)
        assert m["_command"] == f"sh -c {script}"
        assert m["_tag"] == task_id[:12]
        assert m["_created"].endswith("Z") and "_image_id" in m
        assert m["_WHO"] == "world"
    # The node keeps the lines too (Docker's dual logging): `service logs` works.
    out = cluster.docker("service", "logs", "--raw", "gelfy")
    assert "hello world" in out.stdout and "oops" in out.stderr


def test_gelf_compression_type_zlib(cluster: Daemon, listener: GelfListener) -> None:
    cluster.create_service(
        "zl",
        "--log-driver", "gelf",
        "--log-opt", f"gelf-address={listener.address}",
        "--log-opt", "gelf-compression-type=zlib",
        "busybox", "sh", "-c", "echo zipped; exec sleep 1000",
    )  # fmt: skip
    raw = listener.sock
    raw.settimeout(30)
    data = raw.recv(65536)
    assert data[:1] == b"\x78", data[:4]  # a zlib stream, not gzip's 1f 8b
    listener.datagrams += 1
    assert listener._feed(data)["short_message"] == "zipped"  # noqa: SLF001


def test_the_cluster_default_log_driver_applies_to_services_naming_none(
    cluster: Daemon, listener: GelfListener
) -> None:
    api = cluster.api
    swarm = api.inspect_swarm()
    spec = swarm["Spec"]
    spec["TaskDefaults"] = {
        "LogDriver": {"Name": "gelf", "Options": {"gelf-address": listener.address}}
    }
    api.update_swarm(version=swarm["Version"]["Index"], swarm_spec=spec)
    try:
        assert api.inspect_swarm()["Spec"]["TaskDefaults"]["LogDriver"]["Name"] == "gelf"
        cluster.create_service(
            "defaulted", "busybox", "sh", "-c", "echo by default; exec sleep 1000"
        )
        (task_id,) = cluster.wait_processes("defaulted", 1)
        (m,) = listener.receive(1)
        assert m["short_message"] == "by default" and m["_container_id"] == task_id
        # Docker's task shows the service's template: the default is not written into it.
        assert "LogDriver" not in api.inspect_task(task_id)["Spec"]
    finally:
        swarm = api.inspect_swarm()
        spec = swarm["Spec"]
        spec["TaskDefaults"] = {}
        api.update_swarm(version=swarm["Version"]["Index"], swarm_spec=spec)


def test_a_log_driver_no_node_has_leaves_the_task_pending(cluster: Daemon) -> None:
    cluster.create_service("splunky", "--log-driver", "splunk", "busybox", "sleep", "1000")

    def pending() -> str | None:
        out = cluster.docker(
            "service", "ps", "--no-trunc", "--format", "{{.CurrentState}}|{{.Error}}", "splunky"
        ).stdout
        return out if "missing plugin on 1 node" in out else None

    out = wait_until(pending, what="the task pending for its log driver")
    assert out.startswith("Pending"), out
    assert "no suitable node (missing plugin on 1 node)" in out


def test_bad_gelf_options_reject_the_task_with_dockers_message(cluster: Daemon) -> None:
    cluster.create_service("nogelf", "--log-driver", "gelf", "busybox", "sleep", "1000")

    def rejected() -> str | None:
        out = cluster.docker(
            "service", "ps", "--no-trunc", "--format", "{{.CurrentState}}|{{.Error}}", "nogelf"
        ).stdout
        return out if "Rejected" in out else None

    out = wait_until(rejected, what="the task rejected")
    assert "gelf-address is a required parameter" in out, out


# ---------------------------------------------------------------- service logs options

COUNTER = "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.2; done"


@pytest.fixture(scope="module")
def counter(swarm: Daemon) -> Iterator[str]:
    """A service printing `line N` five times a second, its log carrying the attribute
    of `--log-opt env=WHO`; yields its task's ID."""
    swarm.create_service(
        "counter",
        "--log-driver", "json-file",  # the CLI drops --log-opt without --log-driver
        "--log-opt", "env=WHO",
        "--env", "WHO=me",
        "busybox", "sh", "-c", COUNTER,
    )  # fmt: skip
    (task_id,) = swarm.wait_processes("counter", 1)
    wait_until(
        lambda: swarm.docker("service", "logs", "--raw", "counter").stdout.count("\n") >= 20,
        what="twenty lines (four seconds) in the logs",
    )
    yield task_id
    remove_all_services(swarm)


def test_logs_since_a_lines_timestamp_start_at_that_line(swarm: Daemon, counter: str) -> None:
    lines = swarm.docker("service", "logs", "--timestamps", "--raw", "counter").stdout.splitlines()
    stamp, text = lines[5].split(" ", 1)
    out = swarm.docker("service", "logs", "--raw", "--since", stamp, "counter").stdout
    got = out.splitlines()
    assert got[0] == text, (stamp, got[:3])
    assert lines[4].split(" ", 1)[1] not in got


def test_logs_since_a_relative_time(swarm: Daemon, counter: str) -> None:
    every = swarm.docker("service", "logs", "--raw", "counter").stdout.splitlines()
    recent = swarm.docker("service", "logs", "--raw", "--since", "1s", "counter").stdout
    assert 0 < len(recent.splitlines()) < len(every), recent
    assert "line 0" not in recent.splitlines()


def test_logs_details_show_the_drivers_attributes(swarm: Daemon, counter: str) -> None:
    out = swarm.docker("service", "logs", "--details", "--tail", "2", "counter").stdout
    lines = out.splitlines()
    assert len(lines) == 2, out
    for line in lines:
        assert re.fullmatch(r"counter\.1\.[0-9a-z]{12}@\S+\s+\| WHO=me line \d+", line), line
    plain = swarm.docker("service", "logs", "--tail", "1", "counter").stdout
    assert "WHO=me" not in plain


def test_logs_of_a_task_id_with_details_and_since(swarm: Daemon, counter: str) -> None:
    stamped = swarm.docker("service", "logs", "--timestamps", "--raw", counter).stdout
    stamp, text = stamped.splitlines()[3].split(" ", 1)
    out = swarm.docker(
        "service", "logs", "--details", "--since", stamp, "--no-task-ids", counter
    ).stdout
    lines = out.splitlines()
    assert all(re.fullmatch(r"counter\.1@\S+\s+\| WHO=me line \d+", x) for x in lines), out
    assert lines[0].endswith(f"| WHO=me {text}"), (text, lines[:2])
