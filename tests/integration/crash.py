"""The crash workload and its checker, shared by tests/integration/test_crash_suite.py
and bench/crash_soak.py.

`Workload` runs CLIENTS threads against a manager's API, each writing only services of
its own (`w<client>-<k>`): create, update (a label `gen`, sometimes an env var of the
task template, which rolls the tasks), scale (0..MAX_REPLICAS) and rm, one at a time.
Each client keeps a model of what was acknowledged (a 2xx answer). A write answered
with an error did not happen; a write cut off by the kill is in doubt: after the
restart it must be either fully there or not at all, and the model takes whichever it
finds. `check_acknowledged` compares every service the model knows with what the
restarted manager lists; `check_slots` and `wait_converged` look at the tasks.

Every random choice comes from `random.Random(f"{seed}/...")`, so a seed replays the
same choices (the moments of the kill, measured in time, still vary a little).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from shoal import httpunix

from .harness import WAIT_TIMEOUT_S, Daemon, pid_alive, wait_until

CLIENTS = 8
# Services a client keeps at once, and the replicas each may have: bounded, so that a
# round's task processes stay few on a small machine.
MAX_OWNED = 3
MAX_REPLICAS = 2
# One API call's bound; a call cut off by the kill fails at once (connection reset).
CALL_TIMEOUT_S = 20.0
# Tries of a read-modify-write that lost a race with the orchestrator (UpdateStatus).
UPDATE_TRIES = 5
COMMAND = ["sleep", "1000"]
# A service may take this long to converge after a restart (tasks adopted or replaced).
CONVERGE_TIMEOUT_S = 60.0


class NotYet(str):
    """A falsy description of why a wait goes on (wait_until reports the last one)."""

    def __bool__(self) -> bool:
        return False


class InDoubt(Exception):
    """The connection failed: the write may or may not have been made durable."""


@dataclass(frozen=True)
class Expected:
    """A service as the acknowledged writes left it (exists False: removed)."""

    name: str
    exists: bool = True
    replicas: int = 0
    gen: int = 0
    env_gen: int = 0


@dataclass
class Client:
    """One writer: its own services, its model, its in-doubt write (if the kill cut one)."""

    number: int
    model: dict[str, Expected] = field(default_factory=dict)
    doubt: Expected | None = None
    created: int = 0
    acked: int = 0
    refused: int = 0

    def owned(self) -> list[str]:
        return sorted(n for n, e in self.model.items() if e.exists)


# The service the worker rounds leave alone: global, so one of its tasks is always on
# the worker (the clients' services churn too fast for their tasks to outlive a round).
ANCHOR = "anchor"
ANCHOR_SPEC = {
    "Name": ANCHOR,
    "TaskTemplate": {"ContainerSpec": {"Image": "busybox", "Command": COMMAND}},
    "Mode": {"Global": {}},
}


def call(daemon: Daemon, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One API call; InDoubt when the connection fails (the daemon was killed)."""
    try:
        status, payload = httpunix.request(
            str(daemon.socket), method, path, body, timeout=CALL_TIMEOUT_S
        )
    except (OSError, http.client.HTTPException) as e:
        raise InDoubt(repr(e)) from e
    try:
        return status, json.loads(payload) if payload else None
    except ValueError:
        return status, payload.decode(errors="replace")


def spec_of(e: Expected) -> dict[str, Any]:
    env = [f"GEN={e.env_gen}"] if e.env_gen else []
    return {
        "Name": e.name,
        "Labels": {"gen": str(e.gen)},
        "TaskTemplate": {
            "ContainerSpec": {"Image": "busybox", "Command": COMMAND, "Env": env},
            "RestartPolicy": {"Condition": "any", "Delay": 200_000_000},
        },
        "Mode": {"Replicated": {"Replicas": e.replicas}},
    }


def observed(service: dict[str, Any]) -> Expected:
    spec = service["Spec"]
    env = spec["TaskTemplate"]["ContainerSpec"].get("Env") or []
    env_gen = next((int(v[4:]) for v in env if v.startswith("GEN=")), 0)
    return Expected(
        name=spec["Name"],
        replicas=spec["Mode"]["Replicated"]["Replicas"],
        gen=int((spec.get("Labels") or {}).get("gen", "0")),
        env_gen=env_gen,
    )


class Workload:
    """CLIENTS writers hammering one manager until `stop()` (or the manager dies)."""

    def __init__(self, seed: int, clients: int = CLIENTS) -> None:
        self.seed = seed
        self.clients = [Client(n) for n in range(clients)]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors: list[str] = []  # unexpected answers: a test failure
        self._round = 0

    @property
    def acked(self) -> int:
        return sum(c.acked for c in self.clients)

    def start(self, daemon: Daemon, round_: int) -> None:
        self._round = round_
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._run, args=(daemon, c), daemon=True) for c in self.clients
        ]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(CALL_TIMEOUT_S + 5)
        alive = [t for t in self._threads if t.is_alive()]
        assert not alive, f"{len(alive)} client(s) did not stop"

    def _run(self, daemon: Daemon, client: Client) -> None:
        rng = random.Random(f"{self.seed}/{self._round}/{client.number}")
        while not self._stop.is_set() and client.doubt is None:
            try:
                self._one(daemon, client, rng)
            except InDoubt:
                return  # the manager is gone; client.doubt says what was in flight
            except Exception as e:  # a bug in the workload or an answer it cannot read
                self.errors.append(f"client {client.number}: {e!r}")
                return

    def _one(self, daemon: Daemon, client: Client, rng: random.Random) -> None:
        owned = client.owned()
        ops = ["create"] if len(owned) < MAX_OWNED else []
        if owned:
            ops += ["update", "update", "scale", "rm"]
        op = rng.choice(ops)
        if op == "create":
            name = f"w{client.number}-{client.created}"
            client.created += 1
            want = Expected(name, replicas=rng.randint(0, MAX_REPLICAS), gen=1)
            client.doubt = want
            status, body = call(daemon, "POST", "/v1.41/services/create", spec_of(want))
            self._settle(client, name, want, status, body, ok=201)
            return
        name = rng.choice(owned)
        cur = client.model[name]
        if op == "rm":
            want = replace(cur, exists=False)
            client.doubt = want
            status, body = call(daemon, "DELETE", f"/v1.41/services/{name}")
            self._settle(client, name, want, status, body, ok=200)
            return
        if op == "scale":
            want = replace(cur, replicas=rng.choice([r for r in range(MAX_REPLICAS + 1)]))
        else:
            rolls = rng.random() < 0.25
            want = replace(cur, gen=cur.gen + 1, env_gen=cur.gen + 1 if rolls else cur.env_gen)
        for _ in range(UPDATE_TRIES):
            client.doubt = None
            status, svc = call(daemon, "GET", f"/v1.41/services/{name}")
            if status != 200:
                self.errors.append(f"GET {name}: {status} {svc}")
                return
            version = svc["Version"]["Index"]
            client.doubt = want
            status, body = call(
                daemon,
                "POST",
                f"/v1.41/services/{svc['ID']}/update?version={version}",
                spec_of(want),
            )
            if status == 500 and "out of sequence" in str(body):
                client.doubt = None
                client.refused += 1
                continue
            self._settle(client, name, want, status, body, ok=200)
            return
        client.doubt = None

    def _settle(
        self, client: Client, name: str, want: Expected, status: int, body: Any, ok: int
    ) -> None:
        client.doubt = None
        if status == ok:
            client.model[name] = want
            client.acked += 1
        else:
            client.refused += 1
            self.errors.append(f"client {client.number}: {name}: {status} {body}")

    # ------------------------------------------------------------------ checks

    def check_acknowledged(self, daemon: Daemon) -> int:
        """After a restart: every acknowledged write is there, every write in doubt is
        there entirely or not at all (the model then takes what it finds). Returns the
        number of services checked."""
        services = wait_until(lambda: call(daemon, "GET", "/v1.41/services"), what="services")[1]
        actual = {s["Spec"]["Name"]: observed(s) for s in services if s["Spec"]["Name"] != ANCHOR}
        unknown = (
            set(actual)
            - {n for c in self.clients for n in c.model}
            - {c.doubt.name for c in self.clients if c.doubt is not None}
        )
        problems = [f"services nobody created: {sorted(unknown)}"] if unknown else []
        checked = 0
        for c in self.clients:
            names = set(c.model) | ({c.doubt.name} if c.doubt else set())
            for name in sorted(names):
                acked = _norm(c.model.get(name, Expected(name, exists=False)))
                found = actual.get(name, Expected(name, exists=False))
                doubt = c.doubt if c.doubt is not None and c.doubt.name == name else None
                doubt = None if doubt is None else _norm(doubt)
                if found == acked or (doubt is not None and found == doubt):
                    c.model[name] = found
                else:
                    problems.append(
                        f"{name}: acknowledged {acked}, in doubt {doubt}, found {found}"
                    )
                checked += 1
            c.doubt = None
        assert not problems, "acknowledged writes lost or changed:\n" + "\n".join(problems)
        return checked

    def expected_replicas(self) -> dict[str, int]:
        return {n: e.replicas for c in self.clients for n, e in c.model.items() if e.exists}


def _norm(e: Expected) -> Expected:
    """A removed service is just removed, whatever its last spec was."""
    return e if e.exists else Expected(e.name, exists=False)


def duplicate_slots(tasks: list[dict[str, Any]]) -> list[str]:
    """Slots with more than one task desired running, or more than one running."""
    desired: Counter[tuple[str, int | str]] = Counter()
    running: Counter[tuple[str, int | str]] = Counter()
    for t in tasks:
        # A replicated task's slot is its number; a global task's is its node.
        key = (t["ServiceID"], t.get("Slot") or t.get("NodeID", ""))
        if t["DesiredState"] == "running":
            desired[key] += 1
        if t["Status"]["State"] == "running" and t["DesiredState"] == "running":
            running[key] += 1
    bad = {k for k, n in desired.items() if n > 1} | {k for k, n in running.items() if n > 1}
    return [
        f"{k}: "
        + "; ".join(
            f"{t['ID']} on {t.get('NodeID', '')[:6]} {t['Status']['State']}/{t['DesiredState']}"
            f" v{t['Version']['Index']} {t['Status'].get('Message', '')!r}"
            for t in tasks
            if (t["ServiceID"], t.get("Slot") or t.get("NodeID", "")) == k
        )
        for k in sorted(bad)
    ]


def wait_converged(
    manager: Daemon,
    nodes: list[Daemon],
    replicas: dict[str, int],
    timeout: float = CONVERGE_TIMEOUT_S,
) -> dict[str, int]:
    """Wait until each service runs exactly its replicas, one task per slot, and the
    live task processes on `nodes` are exactly those tasks (no duplicate, no stray
    process of a removed or replaced task). Fails at once if a slot has two tasks
    desired running. Returns {task ID: pid}."""

    def state() -> dict[str, int] | NotYet:
        status, services = call(manager, "GET", "/v1.41/services")
        _, tasks = call(manager, "GET", "/v1.41/tasks")
        if status != 200 or not isinstance(tasks, list):
            return NotYet(f"services: {status}")
        dups = duplicate_slots(tasks)
        assert not dups, f"slots with two tasks: {dups}"
        names = {s["ID"]: s["Spec"]["Name"] for s in services}
        running = {
            t["ID"]: names.get(t["ServiceID"], "?")
            for t in tasks
            if t["Status"]["State"] == "running" and t["DesiredState"] == "running"
        }
        want = Counter({n: r for n, r in replicas.items() if r})
        have = Counter(running.values())
        if have != want:
            diff = {n: (have.get(n, 0), want.get(n, 0)) for n in set(have) | set(want)}
            return NotYet(f"running/wanted: { {n: d for n, d in diff.items() if d[0] != d[1]} }")
        live: dict[str, int] = {}
        for node in nodes:
            for task_id, pid in node.pids_of_tasks().items():
                if pid_alive(pid):
                    if task_id in live:
                        return NotYet(f"task {task_id} runs on two nodes")
                    live[task_id] = pid
        if set(live) != set(running):
            return NotYet(
                f"processes without a running task: {sorted(set(live) - set(running))}, "
                f"running tasks without a process: {sorted(set(running) - set(live))}"
            )
        return live or {"": 0}

    result = wait_until(
        state,
        timeout=timeout,
        what=f"{len(replicas)} services to converge",
        transient=(InDoubt, OSError, http.client.HTTPException, TypeError, KeyError),
    )
    return {t: p for t, p in result.items() if t}


def remove_everything(
    manager: Daemon, nodes: list[Daemon], timeout: float = WAIT_TIMEOUT_S
) -> None:
    """Remove every service and wait until no task process is left on `nodes`."""
    _, services = call(manager, "GET", "/v1.41/services")
    for s in services or []:
        with contextlib.suppress(InDoubt):
            call(manager, "DELETE", f"/v1.41/services/{s['ID']}")

    def gone() -> bool:
        return not any(pid_alive(p) for n in nodes for p in n.pids_of_tasks().values())

    wait_until(gone, timeout=timeout, what="every task process to exit")


def pause(rng: random.Random, low: float, high: float) -> float:
    seconds = rng.uniform(low, high)
    time.sleep(seconds)
    return seconds


@dataclass
class Figures:
    rounds: int = 0
    acked: int = 0
    checked: int = 0
    in_doubt: int = 0
    lost: int = 0

    def line(self, what: str) -> str:
        return (
            f"{what}: {self.rounds} rounds, {self.acked} acknowledged writes, "
            f"{self.checked} service states checked, {self.in_doubt} writes in doubt at a kill, "
            f"{self.lost} lost"
        )


def manager_rounds(daemon: Daemon, seed: int, rounds: int, log: Any = print) -> Figures:
    """`rounds` times: the workload runs, the manager is killed with SIGKILL at a random
    moment, restarted, and checked (acknowledged writes, slots, convergence)."""
    rng = random.Random(f"{seed}/manager")
    workload = Workload(seed)
    figures = Figures()
    for r in range(rounds):
        workload.start(daemon, r)
        ran = pause(rng, 0.3, 2.0)
        daemon.kill9()
        workload.stop()
        figures.in_doubt += sum(c.doubt is not None for c in workload.clients)
        assert not workload.errors, workload.errors
        daemon.start()
        figures.checked += workload.check_acknowledged(daemon)
        wait_converged(daemon, [daemon], workload.expected_replicas())
        figures.rounds += 1
        figures.acked = workload.acked
        log(f"round {r + 1}/{rounds}: killed after {ran:.2f} s; {figures.line('so far')}")
    return figures


def worker_rounds(
    manager: Daemon,
    worker: Daemon,
    wait_down: Any,
    seed: int,
    rounds: int,
    log: Any = print,
) -> tuple[Figures, int]:
    """`rounds` times, while the workload writes to the manager: the worker's daemon is
    killed with SIGKILL at a random moment and started again, every other round at once
    (its tasks are adopted) and otherwise only once the manager saw it down (its tasks
    were replaced elsewhere; the worker must stop its stale copies). Then: every
    acknowledged write is there, no slot has two tasks, no task has two processes.
    `wait_down()` waits until the manager reports the worker down. Returns the figures
    and how many task processes were adopted across the worker's restarts."""
    rng = random.Random(f"{seed}/worker")
    workload = Workload(seed)
    figures = Figures()
    adopted = 0
    # A service no client touches: its tasks on the worker outlive a quick restart.
    status, body = call(manager, "POST", "/v1.41/services/create", ANCHOR_SPEC)
    assert status == 201, body
    wait_converged(manager, [manager, worker], {ANCHOR: 2})
    for r in range(rounds):
        workload.start(manager, r)
        ran = pause(rng, 0.3, 1.5)
        before = {t: p for t, p in worker.pids_of_tasks().items() if pid_alive(p)}
        worker.kill9()
        quick = r % 2 == 0
        if quick:
            pause(rng, 0.0, 0.5)
        else:
            wait_down()
        worker.start()
        pause(rng, 0.2, 1.0)
        workload.stop()
        assert not workload.errors, workload.errors
        assert all(c.doubt is None for c in workload.clients), "the manager was not killed"
        figures.checked += workload.check_acknowledged(manager)
        want = {**workload.expected_replicas(), ANCHOR: 2}  # one per node
        live = wait_converged(manager, [manager, worker], want)
        # A task still running after the restart is the same process: adopted.
        for task_id, pid in before.items():
            if task_id in live:
                assert live[task_id] == pid, f"task {task_id} restarted: {pid} -> {live[task_id]}"
                adopted += 1
        figures.rounds += 1
        figures.acked = workload.acked
        how = "restarted at once" if quick else "restarted once seen down"
        log(
            f"round {r + 1}/{rounds}: worker killed after {ran:.2f} s, {how}; "
            f"{figures.line('so far')}, {adopted} tasks adopted"
        )
    return figures, adopted
