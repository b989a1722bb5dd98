"""The whole control plane at scale, with hollow nodes (issue 14's benchmark).

    .venv/bin/python bench/scale.py [--nodes N] [--services S] [--replicas R] [--wave W]
        [--start-delay MS] [--timeout SECONDS]

The issue's full size is `--nodes 1000 --services 100 --replicas 1000 --wave 100`; the
defaults are a tenth of it in tasks (200 nodes, 20 x 500 = 10,000 tasks, a wave of 20)
so that a run fits a shared 2-core machine in a few minutes.

In a temporary directory under /tmp it starts its own manager (`shoal daemon --runtime
sim`, drained, so only hollow nodes run tasks) and two `shoal sim` processes: N - W
hollow nodes that stay and W that will fail. The hollow nodes stand in for other
machines, so their processes run at a lower priority (`--sim-nice`, 10 by default; 0
lets them compete with the manager for the two cores as equals). Once every node is Ready it creates S
services of R replicas through the Docker API (`POST /services/create`) and measures:

- the time from the first create until S x R tasks run (`GET /services?status=true`,
  polled every second) and the rate, beside Nomad C1M's 3,750 placements/s;
- task startup latency p50/p99 (task CreatedAt to its RUNNING timestamp, from one
  `GET /tasks` at the end) beside Kubernetes' pod startup SLO (p99 <= 5 s);
- `docker service ls` and `docker node ls` latency p50/p99, run over and over while
  the tasks converge, one probe at a time (`--probes serial`, the default: the
  measuring commands do not load the two cores against each other; `parallel` runs
  each probe in its own thread, as the earlier runs did) (goal: service ls p99 <= 50 ms; Kubernetes' API call SLO
  p99 <= 1 s), `GET /services?status=true` called straight on the socket the same
  way (the daemon's share of `service ls`, without the CLI process's start), and
  `docker context inspect` (the CLI's own start and config, no daemon contacted: the
  floor under the same contention);
- the manager's peak RSS (VmHWM, goal <= 1 GiB) and CPU seconds, and the hollow-node
  process's RSS per node (as `shoal sim` measures it);
- the failure wave: the W-node process is killed (SIGKILL, so their last heartbeat is
  then); the time until the manager marks them all Down (detection) and until S x R
  tasks run again on the nodes left (goal: within 20 s of detection).

The last line is the summary, `scale: <tasks> tasks running in <s> s, ...`. Afterwards
it removes what it made by its own handles: the sim processes, the manager and the
directory.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from shoal import httpunix

REPO = Path(__file__).resolve().parent.parent
SHOAL = REPO / ".venv" / "bin" / "shoal"
API = "/v1.41"
HTTP_TIMEOUT_S = 120.0
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
POLL_S = 1.0
CLI_PAUSE_S = 0.2
IDLE_SAMPLES = 10

# Anchors (docs/sim.md; /work/shared/reference/swarmkit-and-anchors.md section 2).
NOMAD_C1M_RATE = 3750.0
SWARM2K = "Swarm2k 95k tasks on 2,384 nodes"
K8S_STARTUP_P99_S = 5.0
K8S_API_P99_S = 1.0
GOAL_CONVERGE_S = 60.0
GOAL_LS_P99_S = 0.05
GOAL_RSS = 1024**3
GOAL_WAVE_S = 20.0


class BenchError(Exception):
    pass


def api(sock: Path, method: str, path: str, body: Any = None, **query: str) -> Any:
    url = API + path + ("?" + urllib.parse.urlencode(query) if query else "")
    try:
        status, data = httpunix.request(str(sock), method, url, body, timeout=HTTP_TIMEOUT_S)
    except (OSError, http.client.HTTPException) as e:
        raise BenchError(f"{method} {path}: {e!r}") from e
    if status >= 300:
        raise BenchError(f"{method} {path}: HTTP {status}: {data[:300]!r}")
    return json.loads(data) if data else None


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def proc_rss_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def proc_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def parse_ts(ts: str) -> float:
    """Docker's RFC 3339 with nanoseconds -> epoch seconds."""
    head, _, frac = ts.rstrip("Z").partition(".")
    base = datetime.fromisoformat(head + "+00:00").timestamp()
    return base + (float("0." + frac) if frac else 0.0)


class Probe:
    """One command whose wall time is sampled: a docker CLI command, or a GET on the
    daemon's socket (`sock`), the daemon's share of a CLI command's latency."""

    def __init__(
        self, argv: list[str], env: dict[str, str], sock: Path | None = None, **query: str
    ) -> None:
        self.argv, self.env, self.sock, self.query = argv, env, sock, query
        self.times: list[float] = []

    def once(self) -> None:
        t0 = time.perf_counter()
        if self.sock is None:
            subprocess.run(self.argv, env=self.env, capture_output=True, check=False)
        else:
            try:
                api(self.sock, "GET", self.argv[0], **self.query)
            except BenchError:
                pass
        self.times.append(time.perf_counter() - t0)


class Sampler(threading.Thread):
    """Runs its probes over and over, one at a time (`--probes serial`: the measuring
    commands do not compete with each other for the two cores, only with the system
    under test), or each probe in a thread of its own (`parallel`, the earlier runs)."""

    def __init__(self, probes: list[Probe]) -> None:
        super().__init__(daemon=True)
        self.probes = probes
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for probe in self.probes:
                probe.once()
                if self.stop.wait(CLI_PAUSE_S / len(self.probes)):
                    return


class ScaleBench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.root = Path(tempfile.mkdtemp(prefix="shoal-scale-", dir="/tmp"))
        self.sock = self.root / "shoal.sock"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[IO[bytes]] = []
        self.manager: subprocess.Popen[bytes] | None = None

    def say(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def spawn(self, argv: list[str], log_name: str) -> subprocess.Popen[bytes]:
        log = open(self.root / log_name, "wb")  # closed by cleanup()
        self.logs.append(log)
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
        self.procs.append(proc)
        return proc

    def check_alive(self) -> None:
        for p in self.procs:
            if p.poll() is not None and p is not getattr(self, "wave_proc", None):
                raise BenchError(f"{p.args[:2]} exited with {p.returncode}")

    def wait(self, what: str, predicate: Any, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
            time.sleep(POLL_S)

    # --- steps
    def start_manager(self) -> None:
        self.manager = self.spawn(
            [
                str(SHOAL),
                "daemon",
                "--data-dir",
                str(self.root / "manager"),
                "--host",
                f"unix://{self.sock}",
                "--runtime",
                "sim",
                "--node-name",
                "scale-manager",
            ],
            "manager.log",
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.sock.exists():
            self.check_alive()
            if time.monotonic() > deadline:
                raise BenchError("the manager did not start")
            time.sleep(0.1)
        time.sleep(0.5)
        api(self.sock, "POST", "/swarm/init", {"ListenAddr": "127.0.0.1:0"})
        info = api(self.sock, "GET", "/info")
        self.cluster_addr = info["Swarm"]["RemoteManagers"][0]["Addr"]
        self.token = api(self.sock, "GET", "/swarm")["JoinTokens"]["Worker"]
        node = api(self.sock, "GET", "/nodes")[0]
        spec = {**node["Spec"], "Availability": "drain"}
        api(
            self.sock,
            "POST",
            f"/nodes/{node['ID']}/update",
            spec,
            version=str(node["Version"]["Index"]),
        )
        self.manager_id = node["ID"]

    def start_sim(self, nodes: int, prefix: str) -> subprocess.Popen[bytes]:
        argv = [str(SHOAL), "sim", "--nodes", str(nodes), "--join", self.cluster_addr]
        argv += ["--token", self.token, "--name-prefix", prefix]
        argv += ["--start-delay", str(self.args.start_delay)]
        if self.args.sim_nice:
            argv = ["nice", "-n", str(self.args.sim_nice), *argv]
        return self.spawn(argv, f"sim-{prefix}.log")

    def node_states(self) -> dict[str, str]:
        return {
            n["Description"]["Hostname"]: n["Status"]["State"]
            for n in api(self.sock, "GET", "/nodes")
            if n["ID"] != self.manager_id
        }

    def running(self) -> int:
        services = api(self.sock, "GET", "/services", status="true")
        return sum(s.get("ServiceStatus", {}).get("RunningTasks", 0) for s in services)

    def sim_rss_per_node(self, prefix: str) -> str:
        text = (self.root / f"sim-{prefix}.log").read_text(errors="replace")
        m = re.search(r"(\d+) KiB per node", text)
        return m.group(1) if m else "?"

    def run(self) -> str:
        a = self.args
        total = a.services * a.replicas
        self.start_manager()
        assert self.manager is not None
        t_join = time.perf_counter()
        self.start_sim(a.nodes - a.wave, "stay")
        self.wave_proc = self.start_sim(a.wave, "wave") if a.wave else None
        self.wait(
            f"{a.nodes} nodes ready",
            lambda: (s := self.node_states()) and sum(v == "ready" for v in s.values()) == a.nodes,
            a.timeout,
        )
        join_s = time.perf_counter() - t_join
        self.say(f"{a.nodes} hollow nodes ready in {join_s:.1f} s")

        env = {**os.environ, "DOCKER_HOST": f"unix://{self.sock}"}
        probes = [
            Probe(["docker", "service", "ls"], env),
            Probe(["docker", "node", "ls"], env),
            Probe(["/services"], env, self.sock, status="true"),
            # the CLI alone, no daemon contacted: its own start under the same contention
            Probe(["docker", "context", "inspect"], env),
        ]
        if a.probes == "serial":
            samplers = [Sampler(probes)]
        else:
            samplers = [Sampler([p]) for p in probes]
        for s in samplers:
            s.start()
        cpu0 = proc_cpu_s(self.manager.pid)
        t0 = time.perf_counter()
        for i in range(a.services):
            spec = {
                "Name": f"scale-{i}",
                "TaskTemplate": {"ContainerSpec": {"Image": "busybox", "Args": ["sleep", "1d"]}},
                "Mode": {"Replicated": {"Replicas": a.replicas}},
            }
            api(self.sock, "POST", "/services/create", spec)
        create_s = time.perf_counter() - t0

        def converged() -> bool:
            n = self.running()
            self.say(f"{n}/{total} running after {time.perf_counter() - t0:.1f} s")
            return n >= total

        self.wait(f"{total} tasks running", converged, a.timeout)
        converge_s = time.perf_counter() - t0
        cpu_s = proc_cpu_s(self.manager.pid) - cpu0
        for s in samplers:
            s.stop.set()
        for s in samplers:
            s.join()
        # The same commands on a quiet manager: what the endpoints cost by themselves
        # (the figures above also hold the waits behind the converging loops).
        idle: dict[str, list[float]] = {"service": [], "node": []}
        for _ in range(IDLE_SAMPLES):
            for what, times in idle.items():
                t = time.perf_counter()
                subprocess.run(["docker", what, "ls"], env=env, capture_output=True, check=False)
                times.append(time.perf_counter() - t)
        t_list = time.perf_counter()
        tasks = api(self.sock, "GET", "/tasks")
        list_s = time.perf_counter() - t_list
        startup = [
            parse_ts(t["Status"]["Timestamp"]) - parse_ts(t["CreatedAt"])
            for t in tasks
            if t["Status"]["State"] == "running"
        ]
        rss = proc_rss_hwm(self.manager.pid)
        # The staying fleet's whole RSS now that its nodes hold their tasks.
        fleet_rss = proc_rss(self.procs[1].pid)
        fleet_nodes = a.nodes - a.wave
        svc_ls, node_ls, svc_api, cli_only = (p.times for p in probes)

        wave = "no failure wave"
        if self.wave_proc is not None:
            wave_names = {f"wave-{i}" for i in range(a.wave)}
            self.wave_proc.kill()
            self.wave_proc.wait()
            t_kill = time.perf_counter()
            self.wait(
                f"{a.wave} nodes down",
                lambda: all(
                    st == "down" for h, st in self.node_states().items() if h in wave_names
                ),
                a.timeout,
            )
            detect_s = time.perf_counter() - t_kill
            self.say(f"wave: {a.wave} nodes down {detect_s:.1f} s after the kill")
            self.wait(f"{total} tasks running again", converged, a.timeout)
            resched_s = time.perf_counter() - t_kill
            wave = (
                f"wave of {a.wave} nodes: Down {detect_s:.1f} s after their last heartbeat, "
                f"tasks running elsewhere {resched_s - detect_s:.1f} s after detection "
                f"(goal {GOAL_WAVE_S:g} s)"
            )
        self.say(
            f"task startup p50 {pct(startup, 0.5):.2f} s p99 {pct(startup, 0.99):.2f} s "
            f"(Kubernetes SLO p99 <= {K8S_STARTUP_P99_S:g} s); GET /tasks of {len(tasks)} "
            f"in {list_s:.2f} s; creates took {create_s:.2f} s; on the quiet manager "
            f"`docker service ls` p50 {pct(idle['service'], 0.5) * 1000:.0f} ms, "
            f"`docker node ls` p50 {pct(idle['node'], 0.5) * 1000:.0f} ms"
        )
        self.say(
            f"hollow nodes: {self.sim_rss_per_node('stay')} KiB RSS per node as they "
            f"connect; with their tasks the {fleet_nodes}-node process holds "
            f"{fleet_rss / 2**20:.0f} MiB ({fleet_rss / fleet_nodes / 1024:.0f} KiB per node, "
            "the interpreter included); "
            f"anchors: Nomad C1M {NOMAD_C1M_RATE:,.0f} placements/s, {SWARM2K}"
        )
        return (
            f"scale: {total} tasks running in {converge_s:.1f} s (goal {GOAL_CONVERGE_S:g} s), "
            f"{total / converge_s:,.0f} tasks/s (Nomad C1M {NOMAD_C1M_RATE:,.0f}/s) on "
            f"{a.nodes} hollow nodes (joined in {join_s:.1f} s); `docker service ls` p50 "
            f"{pct(svc_ls, 0.5) * 1000:.0f} ms p99 {pct(svc_ls, 0.99) * 1000:.0f} ms "
            f"(goal {GOAL_LS_P99_S * 1000:.0f} ms; Kubernetes API p99 <= {K8S_API_P99_S:g} s), "
            f"`docker node ls` p50 {pct(node_ls, 0.5) * 1000:.0f} ms p99 "
            f"{pct(node_ls, 0.99) * 1000:.0f} ms, GET /services?status=true p50 "
            f"{pct(svc_api, 0.5) * 1000:.0f} ms p99 {pct(svc_api, 0.99) * 1000:.0f} ms, "
            f"the CLI alone (`docker context inspect`) p50 {pct(cli_only, 0.5) * 1000:.0f} ms "
            f"p99 {pct(cli_only, 0.99) * 1000:.0f} ms "
            f"({len(svc_ls)}, {len(node_ls)}, {len(svc_api)}, {len(cli_only)} samples, "
            f"probes {a.probes}, hollow nodes at nice {a.sim_nice}); "
            f"manager peak RSS {rss / 2**20:.0f} MiB "
            f"(goal {GOAL_RSS / 2**20:.0f} MiB), {cpu_s:.1f} CPU s; hollow node "
            f"{self.sim_rss_per_node('stay')} KiB RSS each; task startup p99 "
            f"{pct(startup, 0.99):.2f} s; {wave}"
        )

    def cleanup(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for log in self.logs:
            log.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        out = []
        for path in sorted(self.root.glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--services", type=int, default=20)
    parser.add_argument("--replicas", type=int, default=500)
    parser.add_argument("--wave", type=int, default=20)
    parser.add_argument("--start-delay", type=float, default=0.0, help="milliseconds")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument(
        "--probes",
        choices=("serial", "parallel"),
        default="serial",
        help="sample the latency probes one at a time (default) or all at once",
    )
    parser.add_argument(
        "--sim-nice",
        type=int,
        default=10,
        help="niceness of the hollow-node processes, which stand in for other machines "
        "(0: compete with the manager as equals)",
    )
    parser.add_argument("--keep-logs", type=Path, metavar="DIR", help="copy the logs here")
    args = parser.parse_args(argv)
    if not 0 <= args.wave < args.nodes:
        parser.error("--wave must be below --nodes")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bench = ScaleBench(args)
    try:
        print(bench.run(), flush=True)
        return 0
    except BenchError as e:
        print(f"scale: failed: {e}\n{bench.log_tail()}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if args.keep_logs is not None:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for path in bench.root.glob("*.log"):
                shutil.copyfile(path, args.keep_logs / path.name)
        bench.cleanup()


if __name__ == "__main__":
    sys.exit(main())
