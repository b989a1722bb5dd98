"""What the docker-runtime tests need of the machine's Docker Engine, made offline:

- `ensure_engine` answers whether dockerd runs on /var/run/docker.sock and, if not,
  starts one (`Dockerd`, its log in a temp file) for the session to stop at the end;
- `build_image` makes a small image with `docker import` of a root filesystem built
  from Debian's busybox-static (/bin/busybox and links to its applets);
- `Registry` runs Debian's docker-registry on loopback, for pull tests;
- `DockerDaemon` is the harness's daemon with `--runtime docker`, whose cleanup also
  removes the containers its agent made (found by the agent label, whose value the
  agent keeps in its data dir).

Everything is removed by its own handle (a process it started, a tag it made, a
container labelled with its agent's ID), so the suite can run again at once.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tarfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shoal.httpunix import UnixHTTPConnection

from ..harness import CommandFailed, Daemon, docker_cli

ENGINE_SOCKET = Path("/var/run/docker.sock")
ENGINE_HOST = f"unix://{ENGINE_SOCKET}"
BUSYBOX = Path("/bin/busybox")
# The applets the test images link to /bin/busybox.
APPLETS = (
    "sh",
    "ash",
    "sleep",
    "echo",
    "cat",
    "wget",
    "httpd",
    "true",
    "false",
    "ls",
    "hostname",
    "id",
    "env",
    "test",
    "[",
    "rm",
    "touch",
    "mkdir",
    "ps",
    "kill",
    "grep",
    "head",
    "nslookup",
    "nc",
    "ip",
)
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"

DOCKERD_START_TIMEOUT_S = 60.0
DOCKERD_STOP_TIMEOUT_S = 30.0
REGISTRY_START_TIMEOUT_S = 20.0
REGISTRY_PORT = 5000
ENGINE_CLI_TIMEOUT_S = 60.0
POLL_S = 0.1
LOG_TAIL_LINES = 40

# Where the docker executor keeps its agent ID (shoal/agent/executor/docker.py), under
# the daemon's data dir, and the label it puts on its containers.
AGENT_ID_PATH = Path("agent") / "docker-agent-id"
AGENT_LABEL = "io.shoal.agent"


def engine_answers() -> bool:
    try:
        conn = UnixHTTPConnection(str(ENGINE_SOCKET), timeout=2)
        try:
            conn.request("GET", "/_ping")
            resp = conn.getresponse()
            return resp.status == 200 and resp.read().strip() == b"OK"
        finally:
            conn.close()
    except OSError:
        return False


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Dockerd:
    """A dockerd this session started (and so stops). Without iptables rules: the
    tests need no outbound network, and the host's firewall stays as it was."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
        if not os.path.exists(dockerd):
            pytest.fail(
                "no Docker Engine answers on /var/run/docker.sock and dockerd is not "
                "installed (scripts/setup.sh installs Debian's docker.io)",
                pytrace=False,
            )
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [dockerd, "--host", ENGINE_HOST, "--iptables=false"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + DOCKERD_START_TIMEOUT_S
        while not engine_answers():
            if self.proc.poll() is not None:
                pytest.fail(
                    f"dockerd exited with {self.proc.returncode} while starting "
                    f"(log {self.log_path}):\n{_tail(self.log_path)}",
                    pytrace=False,
                )
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(
                    f"dockerd did not answer within {DOCKERD_START_TIMEOUT_S:g}s "
                    f"(log {self.log_path}):\n{_tail(self.log_path)}",
                    pytrace=False,
                )
            time.sleep(POLL_S)

    def log_note(self, line: str) -> None:
        with self.log_path.open("a") as log:
            log.write(f"===== test session: {line}\n")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(DOCKERD_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the engine through its own CLI ------------------------------------------------------


def engine_env(config_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env.update(DOCKER_HOST=ENGINE_HOST, DOCKER_CONFIG=str(config_dir), DOCKER_CLI_HINTS="false")
    return env


class Engine:
    """The docker CLI against the engine itself (not shoal), with a config of its own."""

    def __init__(self, config_dir: Path) -> None:
        self.config_dir = config_dir
        config_dir.mkdir(parents=True, exist_ok=True)

    def run(
        self, *args: str, check: bool = True, input: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        result = subprocess.run(
            [docker_cli(), *args],
            env=engine_env(self.config_dir),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=ENGINE_CLI_TIMEOUT_S,
        )
        if check and result.returncode != 0:
            raise CommandFailed(
                f"`docker {' '.join(args)}` (engine) exited {result.returncode}\n"
                f"{result.stdout.decode(errors='replace')}{result.stderr.decode(errors='replace')}"
            )
        return result

    def text(self, *args: str) -> str:
        return self.run(*args).stdout.decode().strip()

    def inspect(self, *refs: str) -> list[dict[str, Any]]:
        return list(json.loads(self.text("inspect", *refs)))

    def containers(self, *filters: str) -> list[str]:
        """IDs of every container (running or not) matching `label=...` filters."""
        args = ["ps", "-a", "-q", "--no-trunc"]
        for f in filters:
            args += ["--filter", f]
        return self.text(*args).split()

    def remove_containers(self, ids: list[str]) -> None:
        if ids:
            self.run("rm", "-f", "-v", *ids, check=False)

    def image_exists(self, ref: str) -> bool:
        return self.run("image", "inspect", ref, check=False).returncode == 0


def rootfs_tar(extra: dict[str, str] | None = None) -> bytes:
    """A root filesystem: /bin/busybox and its applet links, /tmp, /etc/passwd and
    /etc/group, and `extra` files (path → text), as a tar archive."""
    buf = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add_dir(name: str, mode: int = 0o755) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, now
            tar.addfile(info)

        def add_file(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, now
            tar.addfile(info, io.BytesIO(data))

        for d in ("bin", "etc", "data", "root"):
            add_dir(d)
        add_dir("tmp", 0o1777)
        add_file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname, link.mode, link.mtime = tarfile.SYMTYPE, "busybox", 0o777, now
            tar.addfile(link)
        add_file("etc/passwd", PASSWD.encode())
        add_file("etc/group", GROUP.encode())
        for path, text in (extra or {}).items():
            add_file(path.lstrip("/"), text.encode())
    return buf.getvalue()


def build_image(engine: Engine, tag: str, extra: dict[str, str] | None = None) -> str:
    """`docker import` of a busybox root filesystem as `tag`; returns the image ID."""
    if not BUSYBOX.exists():
        pytest.fail(
            f"{BUSYBOX} is missing: scripts/setup.sh installs Debian's busybox-static",
            pytrace=False,
        )
    engine.run("import", "-", tag, input=rootfs_tar(extra))
    return engine.text("image", "inspect", "--format", "{{.Id}}", tag)


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


# --- a local registry ------------------------------------------------------------------


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Registry:
    """Debian's docker-registry on 127.0.0.1 (port 5000 when free), storage in `root`.
    The engine trusts loopback registries over plain HTTP."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = REGISTRY_PORT if _port_free(REGISTRY_PORT) else _free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.log_path = root / "registry.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("docker-registry")
        if binary is None:
            pytest.fail(
                "docker-registry is not installed (scripts/setup.sh installs it)", pytrace=False
            )
        config = self.root / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.root / 'data'}\n"
            f"http:\n  addr: {self.addr}\n"
        )
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [binary, "serve", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + REGISTRY_START_TIMEOUT_S
        while True:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://{self.addr}/v2/", timeout=2) as resp:
                    if resp.status == 200:
                        return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(
                    f"docker-registry did not start:\n{_tail(self.log_path)}", pytrace=False
                )
            time.sleep(POLL_S)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --- shoal on the docker runtime ---------------------------------------------------------


class DockerDaemon(Daemon):
    """`shoal daemon --runtime docker` on the machine's engine."""

    def __init__(self, *args: Any, engine: Engine, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.engine = engine
        # Named volumes the tests made for this daemon's services: removed at cleanup,
        # once the containers that use them are gone.
        self.volumes: list[str] = []
        # Images pulled for this daemon's services: removed at cleanup too.
        self.images: list[str] = []

    def command(self) -> list[str]:
        cmd = super().command()
        cmd[cmd.index("--runtime") + 1] = "docker"
        return cmd

    @property
    def agent_id(self) -> str | None:
        try:
            return (self.data_dir / AGENT_ID_PATH).read_text().strip() or None
        except OSError:
            return None

    def own_containers(self) -> list[str]:
        """IDs of every container this daemon's agent made (running or not)."""
        agent = self.agent_id
        return self.engine.containers(f"label={AGENT_LABEL}={agent}") if agent else []

    def cleanup(self) -> list[int]:
        """Stop the daemon, then remove what it made on the engine; never raises for
        an engine that is gone (the daemon and its directory go all the same)."""
        try:
            self.stop()
            try:
                self.engine.remove_containers(self.own_containers())
                for volume in self.volumes:
                    self.engine.run("volume", "rm", volume, check=False)
                for image in self.images:
                    self.engine.run("rmi", "--force", image, check=False)
            except (AssertionError, OSError, subprocess.SubprocessError) as e:
                self._log(f"teardown could not clean the engine: {e}")
        finally:
            # The secrets tmpfs of tasks whose containers were removed here rather than
            # by the daemon: unmounted before the directory goes.
            for mount_point in mounts_under(self.root):
                self._log(f"teardown unmounts {mount_point}")
                subprocess.run(["umount", "-l", mount_point], check=False, capture_output=True)
            leftovers = super().cleanup()
        return leftovers


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below `root` in this mount namespace, deepest first."""
    prefix = str(root.resolve())
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


# make(node_name=None, start=True) -> a DockerDaemon (the `docker_daemon_factory` fixture)
DockerDaemonFactory = Callable[..., DockerDaemon]
