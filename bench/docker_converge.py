"""Docker-runtime convergence: shoal against the engine's own Swarm mode, one engine.

    .venv/bin/python bench/docker_converge.py [--replicas N] [--timeout SECONDS] [--rounds R]

On the machine's Docker Engine (/var/run/docker.sock; dockerd is started for the run
when none answers, and stopped afterwards), with one image made offline (`docker
import` of a busybox-static root filesystem), it times from `POST /services/create`
until N/N tasks are running (`GET /tasks`, polled every 50 ms) for a replicated
service of N `sleep 1000` containers:

1. under shoal: its own `shoal daemon --runtime docker` in a temporary directory,
   `swarm init`, the service created through shoal's API;
2. under Swarm mode: `swarm init` on the engine itself, the same service through the
   engine's API, then `swarm leave --force`;
3. the engine's floor: N plain `docker run -d` (create + start) in 8 parallel streams.

Prints on stdout the three times and the ratio shoal / Swarm mode (the issue's aim: at
most 0.5). Anchors from issue 4 on this machine: Swarm mode 16 s for 50 replicas, 50
`docker run -d` in 8 streams 4.6 s. Progress goes to stderr.

Afterwards it removes what it made, by its own handles: the services, the containers
(by the labels of its own service IDs and of its floor run), the daemon and its
directory, the image tag, the engine's swarm (only if this run created it; an engine
already in a swarm is refused) and dockerd (only if this run started it).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from shoal import httpunix

REPO_ROOT = Path(__file__).resolve().parent.parent
SHOAL_BIN = REPO_ROOT / ".venv" / "bin" / "shoal"
ENGINE_SOCKET = "/var/run/docker.sock"
API_PREFIX = "/v1.41"

DEFAULT_REPLICAS = 50
DEFAULT_TIMEOUT_S = 180.0
DEFAULT_ROUNDS = 1
POLL_INTERVAL_S = 0.05
HTTP_TIMEOUT_S = 60.0
DOCKERD_START_TIMEOUT_S = 60.0
DOCKERD_STOP_TIMEOUT_S = 30.0
DAEMON_START_TIMEOUT_S = 30.0
DAEMON_STOP_TIMEOUT_S = 30.0
REMOVE_TIMEOUT_S = 90.0
# The floor: plain create + start, this many at once (the anchor used 8).
FLOOR_STREAMS = 8
# Short stop grace (the containers run `sleep` as PID 1, which ignores SIGTERM), so
# cleanup does not wait Swarm's default 10 s; it does not change convergence.
STOP_GRACE_NS = 1_000_000_000
LOG_EXCERPT_LINES = 30

# Issue 4, measured on this machine.
ANCHOR_SWARM_S = 16.0
ANCHOR_RUN_S = 4.6
ANCHOR_REPLICAS = 50
AIM_RATIO = 0.5

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "sleep", "echo", "cat", "true")
SERVICE_ARGS = ["sleep", "1000"]
FLOOR_LABEL = "io.shoal.bench.floor"
SERVICE_ID_LABEL = "com.docker.swarm.service.id"
AGENT_ID_FILE = Path("data") / "agent" / "docker-agent-id"
AGENT_LABEL = "io.shoal.agent"
GWBRIDGE = "docker_gwbridge"


class BenchError(Exception):
    """The benchmark could not produce its figure; the message says why."""


# --- HTTP on a unix socket ---------------------------------------------------------------


class Api:
    """The Docker Engine API (shoal's or the engine's) on a unix socket."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, str] | None = None,
        ok: tuple[int, ...] = (200, 201, 204, 304),
        raw: bytes | None = None,
    ) -> Any:
        url = (API_PREFIX + path if path != "/_ping" else path) + (
            "?" + urllib.parse.urlencode(query) if query else ""
        )
        try:
            status, data = httpunix.request(
                self.socket_path, method, url, body, raw, timeout=HTTP_TIMEOUT_S
            )
        except (OSError, http.client.HTTPException) as e:
            raise BenchError(f"{method} {path}: {e!r}") from e
        if status not in ok:
            raise BenchError(f"{method} {path}: HTTP {status}: {data[:300]!r}")
        if not data:
            return None
        try:
            return json.loads(data)
        except ValueError:
            return data

    def answers(self) -> bool:
        try:
            return self.call("GET", "/_ping") in (b"OK", "OK")
        except BenchError:
            return False


def _tasks_running(api: Api, service_id: str) -> tuple[int, list[dict[str, Any]]]:
    filters = {"service": {service_id: True}, "desired-state": {"running": True}}
    tasks = api.call("GET", "/tasks", query={"filters": json.dumps(filters)}) or []
    running = sum(1 for t in tasks if (t.get("Status") or {}).get("State") == "running")
    return running, tasks


def _describe(tasks: list[dict[str, Any]]) -> str:
    states: dict[str, int] = {}
    errors: set[str] = set()
    for t in tasks:
        status = t.get("Status") or {}
        states[str(status.get("State"))] = states.get(str(status.get("State")), 0) + 1
        if status.get("Err"):
            errors.add(str(status["Err"]))
    out = ", ".join(f"{n} {s}" for s, n in states.items()) or "no tasks"
    return out + (f"; errors: {' | '.join(sorted(errors)[:3])}" if errors else "")


# --- the run -------------------------------------------------------------------------------


@dataclass
class Figures:
    replicas: int
    shoal_s: float
    swarm_s: float
    floor_s: float
    rounds: int = 1

    def line(self) -> str:
        ratio = self.shoal_s / self.swarm_s
        verdict = "met" if ratio <= AIM_RATIO else "missed"
        return (
            f"docker converge: {self.replicas} replicas: shoal {self.shoal_s:.2f} s, "
            f"Swarm mode {self.swarm_s:.2f} s, {self.replicas} x docker run -d in "
            f"{FLOOR_STREAMS} streams {self.floor_s:.2f} s; shoal/Swarm {ratio:.2f} "
            f"(aim <= {AIM_RATIO}: {verdict}); anchors for {ANCHOR_REPLICAS}: Swarm mode "
            f"{ANCHOR_SWARM_S:g} s, docker run {ANCHOR_RUN_S:g} s"
            + (f" [fastest of {self.rounds} rounds]" if self.rounds > 1 else "")
        )


class DockerConvergeBench:
    def __init__(self, workdir: Path, console: Console) -> None:
        self.workdir = workdir
        self.console = console
        self.engine = Api(ENGINE_SOCKET)
        # Each round's daemon gets a directory of its own (a fresh swarm).
        self.round_dir = workdir / "round-0"
        self.shoal = Api(str(self.round_dir / "shoal.sock"))
        self.token = secrets.token_hex(4)
        self.image = f"shoal-bench/busybox:{self.token}"
        self.dockerd: subprocess.Popen[bytes] | None = None
        self.daemon: subprocess.Popen[bytes] | None = None
        self.swarm_created = False
        self.gwbridge_existed = True  # until measure_swarm looks
        self.image_made = False
        # (api, service id) of every service made, for cleanup.
        self.services: list[tuple[Api, str]] = []
        self._logs: list[Any] = []

    # --- the measurements

    def run(self, replicas: int, timeout_s: float, rounds: int) -> Figures:
        """The fastest of `rounds` runs of each, taken in turns (the engine's speed
        drifts with what else the machine does)."""
        self.ensure_engine()
        self.make_image()
        shoal, swarm, floor = [], [], []
        for i in range(rounds):
            if rounds > 1:
                self.console.print(f"round {i + 1} of {rounds}")
            shoal.append(self.measure_shoal(replicas, timeout_s))
            swarm.append(self.measure_swarm(replicas, timeout_s))
            floor.append(self.measure_floor(replicas))
        return Figures(replicas, min(shoal), min(swarm), min(floor), rounds)

    def spec(self, name: str, replicas: int) -> dict[str, Any]:
        return {
            "Name": name,
            "TaskTemplate": {
                "ContainerSpec": {
                    "Image": self.image,
                    "Args": SERVICE_ARGS,
                    "StopGracePeriod": STOP_GRACE_NS,
                }
            },
            "Mode": {"Replicated": {"Replicas": replicas}},
        }

    def converge(self, label: str, api: Api, replicas: int, timeout_s: float) -> float:
        name = f"bench-{label}-{self.token}"
        t0 = time.perf_counter()
        service_id = str(api.call("POST", "/services/create", self.spec(name, replicas))["ID"])
        self.services.append((api, service_id))
        columns = (
            TextColumn(f"{label:>6}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("running"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=self.console) as progress:
            bar = progress.add_task(label, total=replicas)
            while True:
                running, tasks = _tasks_running(api, service_id)
                elapsed = time.perf_counter() - t0
                progress.update(bar, completed=min(running, replicas))
                if running >= replicas:
                    break
                if elapsed > timeout_s:
                    raise BenchError(
                        f"{label}: {running}/{replicas} running after {timeout_s:g} s; "
                        + _describe(tasks)
                    )
                self.check_daemon()
                time.sleep(POLL_INTERVAL_S)
        self.console.print(f"{label}: {replicas} replicas running after {elapsed:.2f} s")
        self.remove_service(api, service_id)
        return elapsed

    def measure_shoal(self, replicas: int, timeout_s: float) -> float:
        self.start_daemon()
        self.shoal.call(
            "POST",
            "/swarm/init",
            {"ListenAddr": f"127.0.0.1:{_free_port()}", "AdvertiseAddr": "127.0.0.1"},
        )
        elapsed = self.converge("shoal", self.shoal, replicas, timeout_s)
        self.stop_daemon()
        return elapsed

    def measure_swarm(self, replicas: int, timeout_s: float) -> float:
        info = self.engine.call("GET", "/info")
        if (info.get("Swarm") or {}).get("LocalNodeState") != "inactive":
            raise BenchError("the engine is already in a swarm: this benchmark will not touch it")
        # Swarm mode makes the docker_gwbridge network and leaves it after `swarm leave`:
        # remove it afterwards only if it is this run that made it.
        networks = self.engine.call("GET", "/networks")
        self.gwbridge_existed = any(n.get("Name") == GWBRIDGE for n in networks)
        self.engine.call(
            "POST",
            "/swarm/init",
            {"ListenAddr": f"127.0.0.1:{_free_port()}", "AdvertiseAddr": "127.0.0.1"},
        )
        self.swarm_created = True
        elapsed = self.converge("swarm", self.engine, replicas, timeout_s)
        self.leave_swarm()
        return elapsed

    def measure_floor(self, replicas: int) -> float:
        label = f"{FLOOR_LABEL}={self.token}"

        def run_one(i: int) -> None:
            created = self.engine.call(
                "POST",
                "/containers/create",
                {
                    "Image": self.image,
                    "Cmd": SERVICE_ARGS,
                    "Labels": {FLOOR_LABEL: self.token},
                    "StopTimeout": 1,
                },
                query={"name": f"bench-floor-{self.token}-{i}"},
            )
            self.engine.call("POST", f"/containers/{created['Id']}/start")

        t0 = time.perf_counter()
        with ThreadPoolExecutor(FLOOR_STREAMS) as pool:
            list(pool.map(run_one, range(replicas)))
        elapsed = time.perf_counter() - t0
        self.console.print(
            f" floor: {replicas} x create+start in {FLOOR_STREAMS} streams: {elapsed:.2f} s"
        )
        self.remove_containers(label)
        return elapsed

    # --- the engine

    def ensure_engine(self) -> None:
        if self.engine.answers():
            return
        dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
        if not os.path.exists(dockerd):
            raise BenchError("no Docker Engine answers and dockerd is not installed")
        self.console.print("starting dockerd for this run")
        log = open(self.workdir / "dockerd.log", "wb")  # closed by cleanup()
        self._logs.append(log)
        # Without iptables rules: nothing here needs them, and the host's firewall stays.
        self.dockerd = subprocess.Popen(
            [dockerd, "--host", f"unix://{ENGINE_SOCKET}", "--iptables=false"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        self.wait_for(self.engine.answers, DOCKERD_START_TIMEOUT_S, "dockerd", self.dockerd)

    def make_image(self) -> None:
        if not BUSYBOX.exists():
            raise BenchError(f"{BUSYBOX} is missing (Debian's busybox-static)")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for d, mode in (("bin", 0o755), ("tmp", 0o1777)):
                info = tarfile.TarInfo(d)
                info.type, info.mode = tarfile.DIRTYPE, mode
                tar.addfile(info)
            data = BUSYBOX.read_bytes()
            info = tarfile.TarInfo("bin/busybox")
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
            for applet in APPLETS:
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(link)
        repo, tag = self.image.split(":")
        self.engine.call(
            "POST",
            "/images/create",
            query={"fromSrc": "-", "repo": repo, "tag": tag},
            raw=buf.getvalue(),
        )
        self.image_made = True

    def remove_containers(self, label: str) -> None:
        filters = json.dumps({"label": [label]})
        deadline = time.monotonic() + REMOVE_TIMEOUT_S
        while time.monotonic() < deadline:
            found = self.engine.call(
                "GET", "/containers/json", query={"all": "1", "filters": filters}
            )
            if not found:
                return
            for c in found:
                with contextlib.suppress(BenchError):
                    self.engine.call(
                        "DELETE", f"/containers/{c['Id']}", query={"force": "1"}, ok=(204, 404, 409)
                    )
            time.sleep(POLL_INTERVAL_S * 4)
        self.warn(f"containers labelled {label} still there after {REMOVE_TIMEOUT_S:g} s")

    def remove_service(self, api: Api, service_id: str) -> None:
        with contextlib.suppress(BenchError):
            api.call("DELETE", f"/services/{service_id}", ok=(200, 204, 404, 503))
        self.services = [(a, s) for a, s in self.services if s != service_id]
        self.remove_containers(f"{SERVICE_ID_LABEL}={service_id}")

    def leave_swarm(self) -> None:
        if self.swarm_created:
            self.engine.call("POST", "/swarm/leave", query={"force": "1"}, ok=(200, 503))
            self.swarm_created = False
            if not self.gwbridge_existed:
                with contextlib.suppress(BenchError):
                    self.engine.call("DELETE", f"/networks/{GWBRIDGE}", ok=(204, 404))

    # --- shoal's daemon

    def start_daemon(self) -> None:
        if not SHOAL_BIN.exists():
            raise BenchError(f"{SHOAL_BIN} not found: run scripts/setup.sh first")
        index = int(self.round_dir.name.split("-")[1]) + 1
        self.round_dir = self.workdir / f"round-{index}"
        self.round_dir.mkdir()
        self.shoal = Api(str(self.round_dir / "shoal.sock"))
        log = open(self.workdir / "daemon.log", "ab")  # closed by cleanup()
        self._logs.append(log)
        self.daemon = subprocess.Popen(
            [
                str(SHOAL_BIN),
                "daemon",
                "--data-dir",
                str(self.round_dir / "data"),
                "--host",
                f"unix://{self.round_dir / 'shoal.sock'}",
                "--runtime",
                "docker",
                "--node-name",
                "bench",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        self.wait_for(self.shoal.answers, DAEMON_START_TIMEOUT_S, "the shoal daemon", self.daemon)

    def check_daemon(self) -> None:
        if self.daemon is not None and (code := self.daemon.poll()) is not None:
            raise BenchError(f"the shoal daemon exited with status {code}")

    def stop_daemon(self) -> None:
        daemon, self.daemon = self.daemon, None
        if daemon is not None:
            _stop(daemon, DAEMON_STOP_TIMEOUT_S)
        agent_id = _read(self.round_dir / AGENT_ID_FILE)
        if agent_id:
            self.remove_containers(f"{AGENT_LABEL}={agent_id}")

    def wait_for(
        self, ready: Callable[[], bool], timeout_s: float, what: str, proc: subprocess.Popen[bytes]
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if proc.poll() is not None:
                raise BenchError(f"{what} exited with status {proc.returncode} while starting")
            if time.monotonic() > deadline:
                raise BenchError(f"{what} did not answer within {timeout_s:g} s")
            time.sleep(POLL_INTERVAL_S)

    # --- cleanup

    def cleanup(self) -> None:
        """Remove everything this run made, by its own handles; never raises."""
        try:
            for api, service_id in list(self.services):
                self.remove_service(api, service_id)
            with contextlib.suppress(BenchError):
                self.stop_daemon()
            with contextlib.suppress(BenchError):
                self.leave_swarm()
            with contextlib.suppress(BenchError):
                self.remove_containers(f"{FLOOR_LABEL}={self.token}")
            if self.image_made:
                with contextlib.suppress(BenchError):
                    self.engine.call("DELETE", f"/images/{self.image}", ok=(200, 404, 409))
            if self.dockerd is not None:
                _stop(self.dockerd, DOCKERD_STOP_TIMEOUT_S)
        finally:
            for log in self._logs:
                log.close()
            shutil.rmtree(self.workdir, ignore_errors=True)

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]docker_converge: warning: {message}[/yellow]", highlight=False)

    def print_log_excerpt(self) -> None:
        for name in ("daemon.log", "dockerd.log"):
            with contextlib.suppress(OSError):
                lines = (self.workdir / name).read_text(errors="replace").splitlines()
                self.console.print(f"--- last lines of {name} ---", highlight=False)
                for line in lines[-LOG_EXCERPT_LINES:]:
                    self.console.print(line, markup=False, highlight=False)


def _stop(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time to N/N running containers: shoal's docker runtime vs Swarm mode."
    )
    parser.add_argument("--replicas", type=int, default=DEFAULT_REPLICAS, metavar="N")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS")
    parser.add_argument(
        "--rounds", type=int, default=DEFAULT_ROUNDS, metavar="R", help="take the fastest of R"
    )
    args = parser.parse_args(argv)
    if args.replicas < 1 or args.timeout <= 0 or args.rounds < 1:
        parser.error("--replicas and --rounds must be at least 1, --timeout positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=True, soft_wrap=True)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="shoal-dbench-", dir="/tmp"))
    bench = DockerConvergeBench(workdir, console)
    try:
        figures = bench.run(args.replicas, args.timeout, args.rounds)
        print(figures.line(), flush=True)
        return 0
    except BenchError as e:
        console.print(f"[red]docker_converge: {e}[/red]", highlight=False)
        bench.print_log_excerpt()
        return 1
    except KeyboardInterrupt:
        console.print("docker_converge: interrupted; cleaning up")
        return 130
    finally:
        bench.cleanup()


if __name__ == "__main__":
    sys.exit(main())
