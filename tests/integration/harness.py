"""The integration harness: real `shoal daemon` processes, driven by the real docker
CLI and by docker-py, over a unix socket. Nothing is mocked.

- `Daemon` starts, stops (SIGTERM) and kills (SIGKILL) one daemon, runs `docker ...`
  against it, and reads what the process executor records of each task on disk
  (`<data dir>[/agent]/tasks/<task id>/{shim.pid,pid}`: the shim's and the task's).
- The fixtures that use it (conftest.py) stop every daemon at teardown, then kill any
  task process or shim it left behind by the pids recorded in its own data dir (never
  by name), so the suite can run again at once and touches nothing it did not start.

Unix socket paths must stay under ~100 characters, so each daemon lives in a short
`/tmp/shoal-XXXXXXXX` directory (removed afterwards); its log goes to pytest's
tmp_path (kept by pytest for the last runs) for post-mortems.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import docker
import pytest

from shoal.httpunix import UnixHTTPConnection

REPO = Path(__file__).resolve().parents[2]

# How long the daemon may take to answer its first ping, and to stop on SIGTERM.
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
# A docker CLI call that does not wait for convergence.
CLI_TIMEOUT_S = 30.0
# A docker CLI call that follows the progress display (create/scale/update without
# --detach): convergence plus the CLI's own 5 s "verify" wait, with room to spare.
PROGRESS_TIMEOUT_S = 120.0
# Default bound for wait_until.
WAIT_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.2
# Tries at a port found free that another process took before the daemon bound it.
PORT_ATTEMPTS = 3

# Where the process executor records each task (shoal/agent/executor/process.py and
# shim.py): `<executor dir>/tasks/<task id>/{shim.pid,pid}`, the executor dir being the
# data dir or its `agent/` subdirectory. Read defensively: names may still move.
TASKS_SUBDIRS = (Path("agent") / "tasks", Path("tasks"))
CHILD_PID_FILES = ("pid", "child.pid")
SHIM_PID_FILES = ("shim.pid",)

T = TypeVar("T")


def _find_shoal() -> Path:
    beside = Path(sys.executable).parent / "shoal"
    if beside.exists():
        return beside
    return REPO / ".venv" / "bin" / "shoal"


SHOAL = _find_shoal()


def docker_cli() -> str:
    path = shutil.which("docker")
    if path is None:
        pytest.fail(
            "the docker CLI is not installed: the integration tests drive shoal with it "
            "(scripts/setup.sh installs one)",
            pytrace=False,
        )
    return path


# --------------------------------------------------------------------------- polling


class CommandFailed(AssertionError):
    """A command (the docker CLI, `ip`) exited non-zero or did not finish: a test
    failure when it happens once, but what a daemon mid-restart answers while a test
    waits for it, so `wait_until` polls again."""


# What a predicate may raise while the system converges: a daemon not answering yet
# (connection refused, a reset, docker-py's errors, which are OSErrors or
# DockerExceptions), an HTTP exchange cut short, a CLI call that failed. Anything else
# (a TypeError, an assertion in the predicate) is a bug and surfaces at once.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    http.client.HTTPException,
    docker.errors.DockerException,
    CommandFailed,
)


def wait_until(
    predicate: Callable[[], T],
    timeout: float = WAIT_TIMEOUT_S,
    interval: float = POLL_INTERVAL_S,
    what: str = "",
    transient: tuple[type[BaseException], ...] = TRANSIENT_ERRORS,
) -> T:
    """Poll `predicate` until it returns something truthy and return that. An error in
    `transient` means "not yet"; any other propagates. On timeout, fail with the last
    value (or the last transient error) the predicate gave."""
    deadline = time.monotonic() + timeout
    last: Any = None
    last_exc: BaseException | None = None
    while True:
        try:
            last = predicate()
            last_exc = None
        except transient as exc:
            last_exc = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            description = what or getattr(predicate, "__name__", repr(predicate))
            detail = f"last error: {last_exc!r}" if last_exc else f"last value: {last!r}"
            raise AssertionError(f"timed out after {timeout}s waiting for {description}; {detail}")
        time.sleep(interval)


def holds_for(
    predicate: Callable[[], Any],
    seconds: float,
    interval: float = POLL_INTERVAL_S,
    what: str = "",
) -> None:
    """Assert that `predicate` stays truthy for `seconds` (checked every `interval`)."""
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if not value:
            description = what or getattr(predicate, "__name__", repr(predicate))
            raise AssertionError(f"{description} stopped holding: {value!r}")
        if time.monotonic() >= deadline:
            return
        time.sleep(interval)


# --------------------------------------------------------------------------- /proc


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) of a process, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = raw[raw.rfind(")") + 2 :].split()
    return fields[0], int(fields[19])


def pid_alive(pid: int) -> bool:
    """True if the process exists and is not a zombie."""
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return {}
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.decode(errors="replace").partition("=")
        if sep:
            env[key] = value
    return env


def is_command(pid: int, *argv: str) -> bool:
    """Does the live process `pid` run `argv` (the program compared by basename)?"""
    cmd = cmdline(pid)
    return (
        pid_alive(pid)
        and len(cmd) == len(argv)
        and os.path.basename(cmd[0]) == os.path.basename(argv[0])
        and cmd[1:] == list(argv[1:])
    )


def _boot_ticks_now() -> int:
    """Now, in the clock ticks since boot that /proc/<pid>/stat uses for start times."""
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return int(uptime * os.sysconf("SC_CLK_TCK"))


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except (FileNotFoundError, NotADirectoryError, PermissionError, IsADirectoryError):
        return None
    try:
        return int(text.split()[0]) if text else None
    except ValueError:
        return None


# --------------------------------------------------------------------------- tables


def parse_table(text: str) -> list[dict[str, str]]:
    """Rows of a docker CLI table (`service ls`, `service ps`, `node ls`) as dicts keyed
    by header. Columns are cut at the header's positions (tabwriter aligns them), so
    cells with single spaces ("Running 3 seconds ago") stay whole."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    header = lines[0]
    starts = [0] + [m.end() for m in re.finditer(r"\s{2,}", header.rstrip())]
    bounds = list(zip(starts, [*starts[1:], None], strict=True))
    names = [header[a:b].strip() for a, b in bounds]
    return [
        {n: line[a:b].strip() for n, (a, b) in zip(names, bounds, strict=True)}
        for line in lines[1:]
    ]


# --------------------------------------------------------------------------- HTTP


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.body[:300]!r}>"


# --------------------------------------------------------------------------- daemon


class Daemon:
    """One `shoal daemon --runtime process`, in its own short directory."""

    def __init__(
        self,
        root: Path,
        log_path: Path,
        node_name: str,
        labels: Sequence[str] = (),
        tcp_port: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.socket = root / "shoal.sock"
        self.docker_config = root / "docker-config"
        self.log_path = log_path
        self.node_name = node_name
        self.labels = list(labels)
        self.tcp_port = tcp_port
        # More `shoal daemon` options (`--visualizer-addr ...`), after the harness's own.
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        # Killed with SIGKILL and not started again: its tasks outlive it by design
        # (as containers outlive a killed dockerd), so what it leaves is no leak.
        self.abandoned = False
        self._client: docker.DockerClient | None = None
        # Processes started after this moment may be ours; nothing older ever is.
        self._born_ticks = _boot_ticks_now()
        # Every task pid seen, with its start time, so teardown can kill it even after
        # the executor removed its directory (and never a reused pid).
        self._seen: dict[int, int] = {}
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.docker_config.mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------- lifecycle

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def tcp_host(self) -> str:
        assert self.tcp_port is not None, "daemon started without a tcp host"
        return f"tcp://127.0.0.1:{self.tcp_port}"

    def command(self) -> list[str]:
        cmd = [
            str(SHOAL),
            "daemon",
            "--data-dir",
            str(self.data_dir),
            "--host",
            self.host,
            "--runtime",
            "process",
            "--node-name",
            self.node_name,
        ]
        if self.tcp_port is not None:
            cmd += ["--host", self.tcp_host]
        for label in self.labels:
            cmd += ["--label", label]
        return cmd + self.extra_args

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start the daemon and wait until `HEAD /_ping` answers 200. A TCP port found
        free and taken by another process before the daemon bound it is replaced by
        another free one (a port cannot be handed over without that window)."""
        for attempt in range(PORT_ATTEMPTS):
            try:
                self._start(timeout)
                return
            except AssertionError as exc:
                last = attempt == PORT_ATTEMPTS - 1
                if self.tcp_port is None or not port_taken(str(exc)) or last:
                    raise
                self._log(f"tcp port {self.tcp_port} was taken meanwhile; trying another")
                self.tcp_port = free_tcp_port()

    def _start(self, timeout: float) -> None:
        assert not self.running(), "daemon already running"
        if not SHOAL.exists():
            pytest.fail(f"{SHOAL} does not exist: run scripts/setup.sh", pytrace=False)
        self.starts += 1
        self.abandoned = False
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start #{self.starts}: {' '.join(self.command())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.root,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"shoal daemon exited with {self.proc.returncode} while starting:\n"
                    + self.log_tail()
                )
            if self.ping() == 200:
                return
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"shoal daemon did not answer HEAD /_ping within {timeout}s:\n"
                    + self.log_tail()
                )
            time.sleep(0.1)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM (graceful: the daemon stops its tasks too), SIGKILL after `timeout`.
        Returns the exit code, or None if the daemon had to be killed."""
        self._close_client()
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is not None:
            return proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            self._log(f"daemon ignored SIGTERM for {timeout}s; killed")
            return None

    def terminate(self) -> None:
        """SIGTERM, without waiting (`stop()` then waits): daemons stopped together
        take the longest one's time, not the sum (managers on etcd wait for each
        other's members as they go)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def kill9(self) -> None:
        """SIGKILL the daemon alone: its tasks' processes keep running."""
        self._close_client()
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        self.abandoned = True

    def cleanup(self) -> list[int]:
        """Stop the daemon, then kill what it left behind, by recorded pid only.
        Returns the pids that had to be killed: a leak (see `leaks`) unless the daemon
        was abandoned (killed with SIGKILL and not started again)."""
        self.stop()
        leftovers = self._leftover_pids()
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                # A task that is its own process group leader may have children.
                if os.getpgid(pid) == pid:
                    os.killpg(pid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
        if leftovers:
            self._log(f"teardown killed leftover task processes: {leftovers}")
            with contextlib.suppress(AssertionError):
                wait_until(lambda: not any(pid_alive(p) for p in leftovers), timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)
        return leftovers

    def _leftover_pids(self) -> list[int]:
        # Refresh what the data dir records (registers new pids in self._seen).
        self.pids_of_tasks()
        self.shim_pids()
        out = []
        for pid, started in self._seen.items():
            st = _stat(pid)
            # Same start time as when we saw it: the same process, not a reused pid.
            if st is not None and st[1] == started and st[0] not in ("Z", "X"):
                out.append(pid)
        return sorted(out)

    # ---------------------------------------------------------------- diagnostics

    def _log(self, line: str) -> None:
        with self.log_path.open("a") as log:
            log.write(f"===== test harness: {line}\n")

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # ---------------------------------------------------------------- clients

    def ping(self) -> int | None:
        try:
            return self.http("HEAD", "/_ping", timeout=2).status
        except OSError:
            return None

    def http(
        self,
        method: str,
        path: str,
        body: bytes | str | dict[str, Any] | list[Any] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> Response:
        """A raw HTTP request on the daemon's unix socket."""
        hdrs = dict(headers or {})
        if isinstance(body, dict | list):
            body = json.dumps(body)
            hdrs.setdefault("Content-Type", "application/json")
        data = body.encode() if isinstance(body, str) else body
        conn = UnixHTTPConnection(str(self.socket), timeout=timeout)
        try:
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            payload = resp.read()
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, payload)
        finally:
            conn.close()

    def docker_env(self, host: str | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env.update(
            DOCKER_HOST=host or self.host,
            DOCKER_CONFIG=str(self.docker_config),
            DOCKER_CLI_HINTS="false",
        )
        return env

    def docker(
        self,
        *args: str,
        check: bool = True,
        timeout: float = CLI_TIMEOUT_S,
        host: str | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against this daemon (`input` on its stdin, else nothing).
        With check, a non-zero exit fails the test with the command's output."""
        argv = [docker_cli(), *args]
        try:
            result = subprocess.run(
                argv,
                env=self.docker_env(host),
                input=input,
                stdin=subprocess.DEVNULL if input is None else None,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            raise CommandFailed(
                f"`docker {' '.join(args)}` did not finish within {timeout}s\n"
                f"stdout so far:\n{_text(exc.stdout)}\nstderr so far:\n{_text(exc.stderr)}"
            ) from None
        if check and result.returncode != 0:
            raise CommandFailed(
                f"`docker {' '.join(args)}` exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def docker_popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [docker_cli(), *args],
            env=self.docker_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def client(self) -> docker.DockerClient:
        """A docker-py client (API version negotiated, as a user gets it by default)."""
        return docker.DockerClient(base_url=self.host)

    @property
    def api(self) -> docker.APIClient:
        """docker-py's low-level client, shared by the helpers below."""
        if self._client is None:
            self._client = self.client()
        return self._client.api

    def _close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # ---------------------------------------------------------------- cluster state

    def service(self, name: str) -> dict[str, Any]:
        return self.api.inspect_service(name)

    def service_names(self) -> set[str]:
        return {s["Spec"]["Name"] for s in self.api.services()}

    def tasks(self, service: str | None = None) -> list[dict[str, Any]]:
        filters = {"service": service} if service else None
        return self.api.tasks(filters=filters)

    def running_tasks(self, service: str) -> list[dict[str, Any]]:
        return [
            t
            for t in self.tasks(service)
            if t["Status"]["State"] == "running" and t["DesiredState"] == "running"
        ]

    # ---------------------------------------------------------------- host processes

    def task_dirs(self) -> list[Path]:
        """The executor's per-task directories."""
        dirs: list[Path] = []
        for sub in TASKS_SUBDIRS:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                dirs += sorted(p for p in (self.data_dir / sub).iterdir() if p.is_dir())
        return dirs

    def _pid_files(self, names: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for task_dir in self.task_dirs():
            for name in names:
                pid = _read_pid(task_dir / name)
                if pid is not None:
                    found[task_dir.name] = pid
                    st = _stat(pid)
                    if st is not None and st[1] >= self._born_ticks - 100:
                        self._seen.setdefault(pid, st[1])
                    break
        return found

    def pids_of_tasks(self) -> dict[str, int]:
        """{task id: pid of the task's own process} as recorded in the data dir, for
        every task the executor has a directory for (live or not)."""
        return self._pid_files(CHILD_PID_FILES)

    def shim_pids(self) -> dict[str, int]:
        """{task id: pid of the task's supervisor (shim)}."""
        return self._pid_files(SHIM_PID_FILES)

    def live_pids(self, task_ids: Sequence[str] | None = None) -> dict[str, int]:
        """{task id: pid} of recorded task processes that are alive (optionally only
        for `task_ids`)."""
        pids = self.pids_of_tasks()
        if task_ids is not None:
            wanted = set(task_ids)
            pids = {t: p for t, p in pids.items() if t in wanted}
        return {t: p for t, p in pids.items() if pid_alive(p)}

    def service_pids(self, service: str) -> dict[str, int]:
        """{task id: pid} of the live processes of the service's tasks (any task the
        API still lists, so leftovers of replaced tasks count too)."""
        return self.live_pids([t["ID"] for t in self.tasks(service)])

    def wait_processes(
        self,
        service: str,
        count: int,
        argv: Sequence[str] | None = None,
        timeout: float = WAIT_TIMEOUT_S,
    ) -> dict[str, int]:
        """Wait until the service has exactly `count` running tasks, each with a live
        process (running `argv` if given), and no live process for any other of its
        tasks. Returns {task id: pid}."""

        def converged() -> dict[str, int] | None:
            running = {t["ID"] for t in self.running_tasks(service)}
            live = self.service_pids(service)
            if len(running) != count or set(live) != running:
                return None
            if argv is not None and not all(is_command(p, *argv) for p in live.values()):
                return None
            # wait_until needs a truthy value: a sentinel entry when none should run.
            return live if count else {"": 0}

        result = wait_until(
            converged, timeout=timeout, what=f"{service} to run {count} task process(es)"
        )
        return {t: p for t, p in result.items() if t}

    def create_service(self, name: str, *args: str, detach: bool = True) -> str:
        """`docker service create [--detach] --name NAME ARGS...`; returns the ID."""
        flags = ["--detach"] if detach else []
        result = self.docker(
            "service",
            "create",
            *flags,
            "--name",
            name,
            *args,
            timeout=CLI_TIMEOUT_S if detach else PROGRESS_TIMEOUT_S,
        )
        return result.stdout.splitlines()[0].strip()


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def port_taken(text: str) -> bool:
    """Does this error say the port was in use (errno EADDRINUSE's text)?"""
    return "address already in use" in text.lower()


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


DaemonFactory = Callable[..., Daemon]


def stop_together(daemons: Sequence[Daemon]) -> None:
    """Stop the daemons all at once (SIGTERM to each, then each waited for, in
    order), whatever fails: a test's own teardown before the factory's."""
    for daemon in daemons:
        with contextlib.suppress(OSError):
            daemon.terminate()
    for daemon in daemons:
        with contextlib.suppress(Exception):
            daemon.stop()


def cleanup_daemons(daemons: Sequence[Daemon]) -> None:
    """Clean up every daemon (all sent SIGTERM at once, then each waited for and
    cleaned up, the last made first), whatever fails on the way (an ExitStack); then
    fail if one that was stopped gracefully left a task process
    behind, which its stop should have ended: the leak fails the test whose teardown
    found it, and the processes are killed all the same."""
    leaks: dict[str, list[int]] = {}

    def clean(daemon: Daemon) -> None:
        killed = daemon.cleanup()
        if killed and not daemon.abandoned:
            leaks[f"{daemon.node_name} ({daemon.root})"] = killed

    for daemon in daemons:  # all asked to stop at once, then each waited for
        with contextlib.suppress(OSError):
            daemon.terminate()
    with contextlib.ExitStack() as stack:
        for daemon in daemons:
            stack.callback(clean, daemon)
    if leaks:
        pytest.fail(
            "task processes outlived their daemon's graceful stop (killed at teardown): "
            + "; ".join(f"{name}: pids {pids}" for name, pids in leaks.items()),
            pytrace=False,
        )


def swarm_init_args() -> list[str]:
    """`docker swarm init` as the acceptance runs it, on a cluster port the kernel picks
    at the daemon's bind (port 0) rather than 2377: several daemons run side by side,
    and a port chosen before the bind could be taken before it."""
    return ["swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", "127.0.0.1:0"]


def init_swarm(daemon: Daemon) -> subprocess.CompletedProcess[str]:
    return daemon.docker(*swarm_init_args())


def remove_all_services(daemon: Daemon, timeout: float = WAIT_TIMEOUT_S) -> None:
    """Remove every service and wait until none of their processes is left."""
    if not daemon.running():
        return
    pids = daemon.live_pids()
    for svc in daemon.api.services():
        with contextlib.suppress(docker.errors.NotFound):
            daemon.api.remove_service(svc["ID"])
    wait_until(lambda: not daemon.api.services(), timeout=timeout, what="no service left")
    wait_until(
        lambda: not [p for p in pids.values() if pid_alive(p)],
        timeout=timeout,
        what="the processes of the removed services to exit",
    )
