"""`docker service logs`: what a service printed, with the CLI's own prefixes, --tail,
--timestamps, --raw, -f, one task's logs, and stdout and stderr kept apart (the 8-byte
frame header of Docker's multiplexed stream)."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from .harness import Daemon, remove_all_services, wait_until

pytestmark = pytest.mark.integration

COUNTER = "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.2; done"
# `logger.1.<task id, 12 chars>@<node>    | line N`
LINE = re.compile(r"^logger\.1\.(?P<task>[0-9a-z]{12})@(?P<node>\S+)\s+\| line (?P<n>\d+)$")
TIMESTAMP = re.compile(
    r"^(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)) (?P<rest>.*)$"
)


@pytest.fixture(scope="module")
def logger(swarm: Daemon) -> Iterator[str]:
    """A service printing `line N` five times a second; yields its task's ID."""
    swarm.create_service("logger", "busybox", "sh", "-c", COUNTER)
    (task_id,) = swarm.wait_processes("logger", 1)
    wait_until(
        lambda: len(numbers(swarm.docker("service", "logs", "--raw", "logger").stdout)) >= 5,
        what="five lines in the logs",
    )
    yield task_id
    remove_all_services(swarm)


def numbers(text: str) -> list[int]:
    return [int(m.group(1)) for m in re.finditer(r"line (\d+)$", text, re.M)]


def assert_consecutive(ns: list[int]) -> None:
    assert ns, "no line"
    assert ns == list(range(ns[0], ns[0] + len(ns))), ns


def test_logs_show_every_line_with_the_task_prefix(swarm: Daemon, logger: str) -> None:
    out = swarm.docker("service", "logs", "logger").stdout
    lines = out.splitlines()
    assert len(lines) >= 5, out
    matches = [LINE.match(line) for line in lines]
    assert all(matches), out
    assert {m.group("task") for m in matches if m} == {logger[:12]}
    assert {m.group("node") for m in matches if m} == {swarm.node_name}
    ns = numbers(out)
    assert ns[0] == 0, "the logs start with the first line printed"
    assert_consecutive(ns)


def test_logs_tail(swarm: Daemon, logger: str) -> None:
    out = swarm.docker("service", "logs", "--tail", "3", "logger").stdout
    lines = out.splitlines()
    assert len(lines) == 3, out
    assert all(LINE.match(line) for line in lines), out
    ns = numbers(out)
    assert_consecutive(ns)
    assert ns[0] > 0, "--tail 3 gives the last lines, not the first"


def test_logs_timestamps(swarm: Daemon, logger: str) -> None:
    out = swarm.docker("service", "logs", "--tail", "2", "--timestamps", "logger").stdout
    lines = out.splitlines()
    assert len(lines) == 2, out
    for line in lines:
        m = TIMESTAMP.match(line)
        assert m, line
        assert LINE.match(m.group("rest")), line
        ts = m.group("ts").replace("Z", "+00:00")
        when = datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", ts))
        # A real wall-clock time of this run, not a zero value.
        assert abs(datetime.now(UTC) - when) < timedelta(minutes=10), line


def test_logs_raw(swarm: Daemon, logger: str) -> None:
    out = swarm.docker("service", "logs", "--raw", "--tail", "2", "logger").stdout
    lines = out.splitlines()
    assert len(lines) == 2, out
    assert all(re.fullmatch(r"line \d+", line) for line in lines), out


def test_logs_of_one_task(swarm: Daemon, logger: str) -> None:
    # The CLI first tries GET /services/<id> (404), then GET /tasks/<id>.
    out = swarm.docker("service", "logs", "--tail", "2", logger).stdout
    lines = out.splitlines()
    assert len(lines) == 2, out
    assert all(LINE.match(line) for line in lines), out


def test_logs_follow(swarm: Daemon, logger: str) -> None:
    start = numbers(swarm.docker("service", "logs", "--raw", "--tail", "1", "logger").stdout)[-1]
    lines: list[str] = []
    with swarm.docker_popen("service", "logs", "-f", "--tail", "1", "logger") as proc:
        assert proc.stdout is not None

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            wait_until(lambda: len(lines) >= 6, timeout=20, what="six followed lines")
            assert proc.poll() is None, "`logs -f` must keep following"
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            reader.join(timeout=10)
    assert all(LINE.match(line) for line in lines), lines
    ns = numbers("\n".join(lines))
    assert_consecutive(ns)
    assert ns[-1] > start + 2, "lines printed after -f started were streamed"


def test_logs_keep_stdout_and_stderr_apart(swarm: Daemon) -> None:
    script = "echo to-stdout; echo to-stderr >&2; exec sleep 1000"
    swarm.create_service("twostreams", "busybox", "sh", "-c", script)
    try:
        swarm.wait_processes("twostreams", 1)

        def logs() -> tuple[str, str] | None:
            result = swarm.docker("service", "logs", "twostreams")
            if "to-stdout" in result.stdout and "to-stderr" in result.stderr:
                return result.stdout, result.stderr
            return None

        out, err = wait_until(logs, what="both lines in the logs")
        assert "to-stderr" not in out, out
        assert "to-stdout" not in err, err
        assert re.search(r"^twostreams\.1\.[0-9a-z]{12}@\S+\s+\| to-stderr$", err, re.M), err
    finally:
        swarm.docker("service", "rm", "twostreams", check=False)
