"""The real Swarm's leader-kill stall, on this machine: three `dockerd` managers, each
in a network namespace of its own.

    .venv/bin/python bench/ha_swarm.py [--rounds 5]

(or `bench/ha.py --swarm`, which prints it beside shoal's figure and the ratio).

Each dockerd runs with its own `--data-root`, `--exec-root`, unix socket (`-H`),
`--pidfile`, `--iptables=false --ip6tables=false --bridge=none`, inside a namespace of
a NetnsLab (tests/integration/cluster_harness.py). It is started with `nsenter
--net=/var/run/netns/NS` rather than `ip netns exec`, which remounts /sys in a mount
namespace of its own and so hides the cgroup hierarchies under /sys/fs/cgroup (dockerd
then exits: "Devices cgroup isn't mounted"). dockerd starts its own containerd, which
dies with it (its parent-death signal).

`docker swarm init` on the first, `docker swarm join` with the manager token on the
others, a service with no replica (`--no-resolve-image`: no registry here). Each
round: the leader (`docker node inspect self` on each daemon) is killed with SIGKILL,
and `docker service update --detach --label-add roundN=acked` is sent through a
survivor again and again until one is acknowledged; the time from the kill to that
acknowledgement is the round's figure. The killed dockerd is started again on its
data, and the next round waits until every manager is Reachable again and one leads.
At the end every round's label must be there, through every manager.

Everything it starts it stops by its own handle: each dockerd by its process (SIGTERM,
then SIGKILL), the mounts dockerd leaves under this run's own directory (its data root
is bind-mounted onto itself; a killed dockerd does not undo that) by their paths, the
namespaces by the lab's names.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: the repository's tests
    sys.path.insert(0, str(REPO_ROOT))

from tests.integration.cluster_harness import NetnsLab  # noqa: E402

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
CALL_TIMEOUT_S = 30.0
ROUND_TIMEOUT_S = 120.0
RETRY_S = 0.05
# Swarm's Raft: ElectionTick 10 ticks of one second (`docker info`: Election Tick 10).
SWARM_ANCHOR_S = 10.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Dockerd:
    """One dockerd in network namespace `netns`, everything of its own under `root`."""

    def __init__(self, name: str, root: Path, netns: str, addr: str) -> None:
        self.name = name
        self.root = root
        self.netns = netns
        self.addr = addr
        self.socket = root / "docker.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        root.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        return [
            "nsenter", f"--net=/var/run/netns/{self.netns}",
            "dockerd",
            "--data-root", str(self.root / "data"),
            "--exec-root", str(self.root / "exec"),
            "--pidfile", str(self.root / "dockerd.pid"),
            "-H", f"unix://{self.socket}",
            "--iptables=false", "--ip6tables=false", "--bridge=none",
            "--log-level", "warn",
        ]  # fmt: skip

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        self.starts += 1
        with (self.root / "dockerd.log").open("ab") as out:
            out.write(f"\n===== start #{self.starts}\n".encode())
            out.flush()
            # nsenter execs dockerd: the process is dockerd itself
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.docker("version", check=False).returncode != 0:
            if not self.running():
                raise RuntimeError(f"dockerd {self.name} exited: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"dockerd {self.name} did not answer: {self.log_tail()}")
            time.sleep(0.2)

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.root / "dockerd.log").read_text().splitlines()[-15:])
        return "(no log)"

    def docker(
        self, *args: str, check: bool = True, timeout: float = CALL_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}"}
        env.pop("DOCKER_CONTEXT", None)
        try:
            result = subprocess.run(
                ["docker", *args],
                capture_output=True,
                text=True,
                env=env,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            result = subprocess.CompletedProcess(exc.cmd, 124, "", f"timed out after {timeout}s")
        if check and result.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)} on {self.name}: {result.stderr.strip()}")
        return result

    def is_leader(self) -> bool:
        r = self.docker(
            "node", "inspect", "self", "--format", "{{.ManagerStatus.Leader}}", check=False
        )
        return r.returncode == 0 and r.stdout.strip() == "true"

    def reachable_managers(self) -> int:
        r = self.docker("node", "ls", "--format", "{{.ManagerStatus}}", check=False)
        if r.returncode != 0:
            return 0
        return sum(1 for s in r.stdout.split() if s in ("Leader", "Reachable"))


def our_mounts(base: Path) -> list[str]:
    """Mount points under `base` (this run's own directory), deepest first."""
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4]
            if point == str(base) or point.startswith(f"{base}/"):
                points.append(point)
    return sorted(points, key=len, reverse=True)


def unmount_all(base: Path) -> list[str]:
    errors: list[str] = []
    for _ in range(10):  # a restarted dockerd may have stacked a mount on another
        points = our_mounts(base)
        if not points:
            return errors
        for point in points:
            r = subprocess.run(["umount", "-l", point], capture_output=True, text=True)
            if r.returncode != 0:
                errors.append(r.stderr.strip())
    return errors + [f"still mounted: {our_mounts(base)}"]


def wait(pred: object, what: str, timeout: float = ROUND_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)


def swarm_rounds(rounds: int) -> list[float]:
    """The real Swarm's leader kill -9 to first acknowledged write, `rounds` times."""
    for tool in ("dockerd", "nsenter", "docker"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is needed")
    base = Path(tempfile.mkdtemp(prefix="shoal-swarm-", dir="/tmp"))
    lab = NetnsLab()
    daemons: list[Dockerd] = []
    try:
        for i in (1, 2, 3):
            ns, addr = lab.add_host()
            daemons.append(Dockerd(f"dockerd-{i}", base / f"d{i}", ns, addr))
        for d in daemons:
            d.start()
        first = daemons[0]
        first.docker(
            "swarm", "init", "--advertise-addr", first.addr, "--listen-addr", f"{first.addr}:2377"
        )
        token = first.docker("swarm", "join-token", "manager", "-q").stdout.strip()
        for d in daemons[1:]:
            d.docker(
                "swarm", "join", "--token", token, "--advertise-addr", d.addr,
                "--listen-addr", f"{d.addr}:2377", f"{first.addr}:2377",
            )  # fmt: skip
        tick = first.docker("info", "--format", "{{.Swarm.Cluster.Spec.Raft.ElectionTick}}")
        log(f"swarm: three managers; Election Tick {tick.stdout.strip()}")
        first.docker(
            "service", "create", "--detach", "--no-resolve-image", "--replicas", "0",
            "--name", "bench", "busybox", "sleep", "1000",
        )  # fmt: skip
        figures = []
        for r in range(1, rounds + 1):
            wait(
                lambda: (
                    all(d.reachable_managers() == 3 for d in daemons)
                    and sum(d.is_leader() for d in daemons) == 1
                ),
                "three reachable managers, one leader",
            )
            leader = next(d for d in daemons if d.is_leader())
            survivor = next(d for d in daemons if d is not leader)
            killed_at = time.monotonic()
            leader.kill9()
            while True:
                result = survivor.docker(
                    "service", "update", "--detach", "--label-add", f"round{r}=acked", "bench",
                    check=False,
                )  # fmt: skip
                if result.returncode == 0:
                    break
                if time.monotonic() - killed_at > ROUND_TIMEOUT_S:
                    raise RuntimeError(f"no write acknowledged: {result.stderr}")
                time.sleep(RETRY_S)
            took = time.monotonic() - killed_at
            figures.append(took)
            log(f"swarm round {r}: killed {leader.name}; write acknowledged after {took:.2f} s")
            leader.start()
        wait(lambda: all(d.reachable_managers() == 3 for d in daemons), "the last one back")
        for d in daemons:
            labels = d.docker("service", "inspect", "--format", "{{json .Spec.Labels}}", "bench")
            lost = [r for r in range(1, rounds + 1) if f'"round{r}":"acked"' not in labels.stdout]
            if lost:
                raise SystemExit(f"swarm: acknowledged writes lost through {d.name}: {lost}")
        return figures
    finally:
        for d in daemons:
            with contextlib.suppress(Exception):
                d.docker("swarm", "leave", "--force", check=False, timeout=10)
            d.stop()
        errors = unmount_all(base)
        errors += lab.teardown()
        shutil.rmtree(base, ignore_errors=True)
        if errors:
            log(f"swarm: teardown errors: {errors}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    figures = swarm_rounds(args.rounds)
    print(
        f"ha_swarm: Swarm leader kill -9 to first acknowledged write over {len(figures)} "
        f"rounds: median {statistics.median(figures):.2f} s, max {max(figures):.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
