"""`docker events` against a real daemon, through the real docker CLI: windows in the
past (`--since`/`--until`), a live stream that shows a scale as it happens, an `--until`
still to come, and dockerd's filters."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator

import pytest

from .harness import CLI_TIMEOUT_S, Daemon

pytestmark = pytest.mark.integration

SLEEP = ("sleep", "1000")
FORMAT = "{{.Type}} {{.Action}} {{.Actor.ID}} {{json .Actor.Attributes}}"
# The remove event is stamped when the manager logs it (as dockerd stamps it), a
# moment after the CLI's `rm` returns: the window's end leaves it this much room.
LOG_MARGIN_S = 1.0
# How long a live `docker events` may take to print what happened.
LIVE_TIMEOUT_S = 15.0


def stamp(t: float) -> str:
    return f"{t:.6f}"


def events(daemon: Daemon, since: float, until: float, *args: str) -> list[str]:
    result = daemon.docker(
        "events", "--since", stamp(since), "--until", stamp(until), "--format", FORMAT, *args
    )
    return result.stdout.splitlines()


def line(type_: str, action: str, id_: str, **attributes: str) -> str:
    return f"{type_} {action} {id_} {json.dumps(attributes, sort_keys=True, separators=(',', ':'))}"


class LiveEvents:
    """A running `docker events`, its output lines read as they come."""

    def __init__(self, daemon: Daemon, *args: str, fmt: str = FORMAT) -> None:
        self.proc = daemon.docker_popen("events", "--format", fmt, *args)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for text in self.proc.stdout:
            self.lines.put(text.rstrip("\n"))
        self.lines.put(None)

    def next(self, timeout: float = LIVE_TIMEOUT_S) -> str | None:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"`docker events` printed nothing in {timeout}s") from None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=CLI_TIMEOUT_S)
        self._reader.join(timeout=CLI_TIMEOUT_S)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def live(cluster: Daemon) -> Iterator[list[LiveEvents]]:
    made: list[LiveEvents] = []
    yield made
    for proc in made:
        proc.close()


def test_a_past_window_lists_a_services_create_update_and_remove(cluster: Daemon) -> None:
    t0 = time.time()
    sid = cluster.create_service("ev-web", "--replicas", "1", "busybox", *SLEEP)
    cluster.docker("service", "scale", "--detach", "ev-web=2")
    cluster.docker("service", "rm", "ev-web")
    time.sleep(LOG_MARGIN_S)
    t1 = time.time()
    assert events(cluster, t0, t1, "--filter", "type=service") == [
        line("service", "create", sid, name="ev-web"),
        line("service", "update", sid, name="ev-web", **{"replicas.new": "2", "replicas.old": "1"}),
        line("service", "remove", sid, name="ev-web"),
    ]
    # dockerd's default format, and the window is a window: before t0 there is nothing
    plain = cluster.docker("events", "--since", stamp(t0), "--until", stamp(t1)).stdout
    assert f"service update {sid} (name=ev-web, replicas.new=2, replicas.old=1)" in plain
    assert events(cluster, t0 - 60, t0, "--filter", f"service={sid}") == []


def test_a_running_docker_events_shows_a_scale_as_it_happens(
    cluster: Daemon, live: list[LiveEvents]
) -> None:
    sid = cluster.create_service("ev-live", "--replicas", "1", "busybox", *SLEEP)
    # --since now: the first scale is shown whether it lands before or after the stream
    # is subscribed; the second one happens while it is surely streaming.
    watcher = LiveEvents(
        cluster,
        "--since",
        stamp(time.time()),
        "--filter",
        "type=service",
        "--filter",
        "event=update",
    )
    live.append(watcher)
    cluster.docker("service", "scale", "--detach", "ev-live=3")
    first = line(
        "service", "update", sid, name="ev-live", **{"replicas.new": "3", "replicas.old": "1"}
    )
    assert watcher.next() == first
    cluster.docker("service", "scale", "--detach", "ev-live=2")
    second = line(
        "service", "update", sid, name="ev-live", **{"replicas.new": "2", "replicas.old": "3"}
    )
    assert watcher.next() == second
    assert watcher.proc.poll() is None  # still streaming


def test_an_until_still_to_come_streams_until_then(cluster: Daemon, live: list[LiveEvents]) -> None:
    start = time.time()
    until = start + 3.0
    watcher = LiveEvents(
        cluster, "--since", stamp(start), "--until", stamp(until), "--filter", "type=secret"
    )
    live.append(watcher)
    sid = cluster.docker("secret", "create", "ev-soon", "-", input="s3cret").stdout.strip()
    assert watcher.next() == line("secret", "create", sid, name="ev-soon")
    assert watcher.next(timeout=until - time.time() + LIVE_TIMEOUT_S) is None  # it ended
    assert time.time() >= until - 0.5
    assert watcher.proc.wait(timeout=CLI_TIMEOUT_S) == 0
    cluster.docker("secret", "rm", "ev-soon")


def test_filters_by_event_name_label_and_type(cluster: Daemon) -> None:
    t0 = time.time()
    front = cluster.create_service(
        "ev-front", "--label", "tier=front", "--replicas", "0", "busybox", *SLEEP
    )
    back = cluster.create_service(
        "ev-back", "--label", "tier=back", "--replicas", "0", "busybox", *SLEEP
    )
    secret = cluster.docker("secret", "create", "ev-secret", "-", input="s").stdout.strip()
    config = cluster.docker("config", "create", "ev-config", "-", input="c").stdout.strip()
    cluster.docker("service", "scale", "--detach", "ev-back=1")
    cluster.docker("service", "rm", "ev-front")
    cluster.docker("secret", "rm", "ev-secret")
    time.sleep(LOG_MARGIN_S)
    t1 = time.time()
    created = [
        line("service", "create", front, name="ev-front"),
        line("service", "create", back, name="ev-back"),
        line("secret", "create", secret, name="ev-secret"),
        line("config", "create", config, name="ev-config"),
    ]
    assert events(cluster, t0, t1, "--filter", "event=create") == created
    assert events(cluster, t0, t1, "--filter", "event=remove") == [
        line("service", "remove", front, name="ev-front"),
        line("secret", "remove", secret, name="ev-secret"),
    ]
    assert events(cluster, t0, t1, "--filter", "service=ev-back") == [
        line("service", "create", back, name="ev-back"),
        line(
            "service", "update", back, name="ev-back", **{"replicas.new": "1", "replicas.old": "0"}
        ),
    ]
    assert events(cluster, t0, t1, "--filter", "label=tier=front") == [
        line("service", "create", front, name="ev-front"),
        line("service", "remove", front, name="ev-front"),
    ]
    assert events(cluster, t0, t1, "--filter", "type=config", "--filter", "type=secret") == [
        created[2],
        created[3],
        line("secret", "remove", secret, name="ev-secret"),
    ]
    assert events(cluster, t0, t1, "--filter", "scope=local") == []
    assert events(
        cluster, t0, t1, "--filter", "event=create", "--filter", f"service={front[:6]}"
    ) == [created[0]]
    cluster.docker("config", "rm", "ev-config")


def test_node_events_and_a_bad_window(cluster: Daemon) -> None:
    node_id = cluster.docker("node", "ls", "-q").stdout.split()[0]
    t0 = time.time()
    cluster.docker("node", "update", "--availability", "drain", node_id)
    cluster.docker("node", "update", "--availability", "active", node_id)
    time.sleep(LOG_MARGIN_S)
    t1 = time.time()
    drained = {"availability.new": "drain", "availability.old": "active"}
    back = {"availability.new": "active", "availability.old": "drain"}
    assert events(cluster, t0, t1, "--filter", f"node={cluster.node_name}") == [
        line("node", "update", node_id, name=cluster.node_name, **drained),
        line("node", "update", node_id, name=cluster.node_name, **back),
    ]
    bad = cluster.docker("events", "--since", stamp(t1), "--until", stamp(t0), check=False)
    assert bad.returncode != 0 and "cannot be after `until` time" in bad.stderr, bad
