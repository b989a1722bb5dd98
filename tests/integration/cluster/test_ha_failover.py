"""The fail-over acceptance of issue 13: three managers and two workers, each in a
network namespace of its own (NetnsLab), the managers' state in etcd (STORE_MODE, one
switch: an etcd member per manager namespace started by the test, or the daemons'
embedded members; tests/integration/ha_harness.py).

A writer logs every acknowledged write (services created, and labels added to one
service, ~10/s, through the managers' Engine APIs in turn, 503 and lost connections
tried again on another) while the leader is killed with SIGKILL, five times in a row,
its etcd member with it (a machine crash), each killed manager started again before
the next round. First, through every manager, `docker node ls` shows three managers
(one Leader, two Reachable) and two workers, all Ready, and the steady service is
created through a follower. Meanwhile a sampler reads the tasks through a live manager and the
task processes alive on the workers, about three times a second. Asserted:

- each time, another manager is Leader (the nodes through a survivor) within 5 s of
  the kill (the issue's acceptance; the five figures are printed);
- afterwards every acknowledged write is there, read with the docker CLI through
  every manager;
- no slot ever had two tasks running, in the managers' view or in the processes
  alive on the workers, at any sample;
- the workers' tasks were never restarted: the same task IDs and pids at every
  sample, and at the end.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from shoal import httpunix

from ..cluster_harness import Cluster, ClusterNode, NetnsLab, NodeFactory
from ..crash import duplicate_slots
from ..ha_harness import ManagerStores, manager_stores
from ..harness import parse_table, stop_together, wait_until

pytestmark = pytest.mark.integration

# The one switch: "external" (an etcd member per manager namespace, started by the
# test, `--datastore-endpoint`) or "embedded" (the daemons' own members).
STORE_MODE = "embedded"
KILLS = 5
NEW_LEADER_S = 5.0  # the acceptance
WRITE_PERIOD_S = 0.2  # two writers: ~10 writes/s
SAMPLE_PERIOD_S = 0.3
STEADY_REPLICAS = 4
API = "/v1.41"
CALL_TIMEOUT_S = 15.0
# A restarted manager follows once its replica is loaded and it sees the leader.
REJOIN_TIMEOUT_S = 60.0
FAILOVER_TIMEOUT_S = 30.0


# --------------------------------------------------------------------------- API calls


def call(node: ClusterNode, method: str, url: str, body: Any = None) -> tuple[int, Any]:
    status, data = httpunix.request(
        str(node.socket), method, API + url, body, timeout=CALL_TIMEOUT_S
    )
    try:
        return status, json.loads(data) if data else None
    except ValueError:
        return status, data.decode(errors="replace")


def leader_seen(node: ClusterNode) -> str | None:
    """The hostname of the Leader in the nodes as `node` lists them (None: it did not
    answer, or names no leader)."""
    try:
        status, nodes = call(node, "GET", "/nodes")
    except (OSError, http.client.HTTPException):
        return None
    if status != 200:
        return None
    for n in nodes:
        if (n.get("ManagerStatus") or {}).get("Leader"):
            return str(n["Description"]["Hostname"])
    return None


def manager_status(node: ClusterNode) -> dict[str, str]:
    rows = parse_table(node.docker("node", "ls").stdout)
    return {r["HOSTNAME"]: r["MANAGER STATUS"] for r in rows}


# --------------------------------------------------------------------------- the writer


@dataclass
class Writer:
    """One thread writing through the managers in turn; `acked` holds what a 2xx
    answered: ("create", service name, ID) or ("label", key, value)."""

    managers: list[ClusterNode]
    label_service: str
    kind: str  # "create" or "label"
    acked: list[tuple[str, str, str]] = field(default_factory=list)
    in_doubt: list[tuple[str, str]] = field(default_factory=list)
    refused_but_applied: list[str] = field(default_factory=list)
    retries: Counter[str] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    _turn: int = 0

    def _next(self) -> ClusterNode:
        self._turn += 1
        return self.managers[self._turn % len(self.managers)]

    def run(self) -> None:
        try:
            n = 0
            while not self.stop.is_set():
                started = time.monotonic()
                n += 1
                if self.kind == "create":
                    self._create(f"acked-{n}")
                else:
                    self._label(f"k{n}", str(n))
                self.stop.wait(max(0.0, WRITE_PERIOD_S - (time.monotonic() - started)))
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _create(self, name: str) -> None:
        spec = {
            "Name": name,
            "TaskTemplate": {"ContainerSpec": {"Image": "busybox", "Command": ["sleep", "1"]}},
            "Mode": {"Replicated": {"Replicas": 0}},
        }
        answers: list[int] = []
        while not self.stop.is_set():
            node = self._next()
            if not node.running():
                continue
            try:
                status, body = call(node, "POST", "/services/create", spec)
            except (ConnectionRefusedError, FileNotFoundError):
                self.retries["refused"] += 1
                continue
            except (OSError, http.client.HTTPException) as exc:
                # cut off by the kill: the create may or may not have happened
                self.in_doubt.append(("create", f"{name}: {exc!r}"))
                return
            if status == 201:
                self.acked.append(("create", name, str(body["ID"])))
                return
            if status == 409 and answers:
                # the name is taken: an earlier try answered with an error was applied
                # all the same (not acknowledged, so nothing is owed; counted)
                self.refused_but_applied.append(f"{name}: answered {answers}, then 409")
                return
            answers.append(status)
            self.retries[str(status)] += 1
            time.sleep(0.05)

    def _label(self, key: str, value: str) -> None:
        while not self.stop.is_set():
            node = self._next()
            if not node.running():
                continue
            try:
                status, svc = call(node, "GET", f"/services/{self.label_service}")
                if status != 200:
                    self.retries[f"get {status}"] += 1
                    time.sleep(0.05)
                    continue
                spec = svc["Spec"]
                spec["Labels"] = {**(spec.get("Labels") or {}), key: value}
                url = f"/services/{svc['ID']}/update?version={svc['Version']['Index']}"
            except (OSError, http.client.HTTPException):
                self.retries["refused"] += 1
                continue
            try:
                status, _ = call(node, "POST", url, spec)
            except (ConnectionRefusedError, FileNotFoundError):
                self.retries["refused"] += 1
                continue
            except (OSError, http.client.HTTPException) as exc:
                self.in_doubt.append(("label", f"{key}: {exc!r}"))
                return
            if status == 200:
                self.acked.append(("label", key, value))
                return
            # 503 (no leader yet), or out of sequence (a replica behind): again
            self.retries[str(status)] += 1
            time.sleep(0.05)


# --------------------------------------------------------------------------- the sampler


@dataclass
class Sampler:
    """Reads, about three times a second, the tasks through a live manager and the
    task processes alive on the workers; keeps every violation it sees."""

    managers: list[ClusterNode]
    workers: list[ClusterNode]
    steady: dict[str, int]  # {task ID: pid} of the workers' tasks at the start
    violations: list[str] = field(default_factory=list)
    samples: int = 0
    task_samples: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    _slots: dict[str, tuple[str, Any]] = field(default_factory=dict)

    def run(self) -> None:
        try:
            while not self.stop.wait(SAMPLE_PERIOD_S):
                self.sample()
        except BaseException as exc:
            self.error = exc

    def _tasks(self) -> list[dict[str, Any]] | None:
        for node in self.managers:
            if not node.running():
                continue
            try:
                status, tasks = call(node, "GET", "/tasks")
            except (OSError, http.client.HTTPException):
                continue
            if status == 200:
                return list(tasks)
        return None

    def sample(self) -> None:
        at = time.strftime("%H:%M:%S")
        tasks = self._tasks()
        if tasks is not None:
            self.task_samples += 1
            for dup in duplicate_slots(tasks):
                self.violations.append(f"{at} managers' view: {dup}")
            for t in tasks:
                self._slots[t["ID"]] = (t["ServiceID"], t.get("Slot") or t.get("NodeID"))
        live: dict[str, int] = {}
        for worker in self.workers:
            live.update(worker.live_pids())
        self.samples += 1
        per_slot = Counter(self._slots.get(t, ("?", t)) for t in live)
        for slot, count in per_slot.items():
            if count > 1:
                self.violations.append(f"{at} processes: {count} alive for slot {slot}")
        if live != self.steady:
            self.violations.append(f"{at} workers' tasks changed: {self.steady} -> {live}")


def full_house(node: ClusterNode) -> bool:
    """`docker node ls` through `node`: three managers (one Leader, two Reachable) and
    two workers, all Ready."""
    rows = parse_table(node.docker("node", "ls").stdout)
    shown = sorted(r["MANAGER STATUS"] for r in rows)
    return shown == ["", "", "Leader", "Reachable", "Reachable"] and all(
        r["STATUS"] == "Ready" for r in rows
    )


# --------------------------------------------------------------------------- fixture


@dataclass
class HA:
    cluster: Cluster
    managers: list[ClusterNode]
    workers: list[ClusterNode]
    stores: ManagerStores


@pytest.fixture
def ha5(lab: NetnsLab, node_factory: NodeFactory, tmp_path: Path) -> Iterator[HA]:
    """Three managers (mgr-1 ran `swarm init`) and two workers, each in a namespace of
    `lab`'s; the daemons are stopped before the managers' state, the lab after both."""
    hosts = [lab.add_host() for _ in range(5)]
    stores = manager_stores(STORE_MODE, tmp_path / "stores", hosts[:3])
    nodes: list[ClusterNode] = []
    try:
        managers = [
            node_factory(f"mgr-{i + 1}", extra_args=stores.daemon_args(i), netns=ns, addr=addr)
            for i, (ns, addr) in enumerate(hosts[:3])
        ]
        nodes += managers
        workers = [
            node_factory(f"wrk-{i + 1}", netns=ns, addr=addr)
            for i, (ns, addr) in enumerate(hosts[3:])
        ]
        nodes += workers
        cluster = Cluster.init(managers[0])
        for node in managers[1:]:
            cluster.join(node, role="manager")
        for node in workers:
            cluster.join(node)
        yield HA(cluster, managers, workers, stores)
    finally:
        stop_together(list(reversed(nodes)))
        stores.close()


# --------------------------------------------------------------------------- the test


def test_five_leader_kills_lose_no_acknowledged_write(ha5: HA) -> None:
    cluster, managers, workers = ha5.cluster, ha5.managers, ha5.workers
    by_name = {m.node_name: m for m in managers}
    leader_name = str(
        wait_until(lambda: leader_seen(managers[0]), timeout=FAILOVER_TIMEOUT_S, what="a leader")
    )
    # through any manager: three managers (one Leader, two Reachable), two workers
    for m in managers:
        wait_until(
            lambda m=m: full_house(m),
            timeout=FAILOVER_TIMEOUT_S,
            what=f"three managers and two workers Ready through {m.node_name}",
        )
    # a service created through a follower converges
    follower = next(m for m in managers if m.node_name != leader_name)
    follower.docker(
        "service", "create", "--detach", "--name", "steady", "--replicas", str(STEADY_REPLICAS),
        "--constraint", "node.role==worker", "busybox", "sleep", "1000",
    )  # fmt: skip
    managers[0].docker(
        "service", "create", "--detach", "--name", "labelled", "--replicas", "0",
        "busybox", "sleep", "1",
    )  # fmt: skip
    placed = cluster.wait_converged("steady", STEADY_REPLICAS)
    steady = {t: p for w in workers for t, p in placed[w.node_name].items()}
    assert len(steady) == STEADY_REPLICAS, placed

    writers = [Writer(managers, "labelled", kind) for kind in ("create", "label")]
    sampler = Sampler(managers, workers, steady)
    threads = [threading.Thread(target=w.run) for w in writers]
    threads.append(threading.Thread(target=sampler.run))
    for t in threads:
        t.start()
    figures: list[float] = []
    try:
        time.sleep(1.0)  # some writes before the first kill
        for round_ in range(1, KILLS + 1):
            leader = by_name[leader_name]
            index = managers.index(leader)
            survivors = [m for m in managers if m is not leader]
            etcd_leader = getattr(ha5.stores, "etcd_leader", lambda: None)()
            killed_at = time.monotonic()
            leader.kill9()
            ha5.stores.crash(index)

            def another_leader(
                survivors: list[ClusterNode] = survivors, dead: str = leader.node_name
            ) -> str | None:
                for s in survivors:
                    seen = leader_seen(s)
                    if seen is not None and seen != dead:
                        return seen
                return None

            leader_name = str(
                wait_until(
                    another_leader,
                    timeout=FAILOVER_TIMEOUT_S,
                    interval=0.05,
                    what=f"a new leader after {leader.node_name} was killed (round {round_})",
                )
            )
            took = time.monotonic() - killed_at
            figures.append(took)
            with_etcd = " (with etcd's leader)" if etcd_leader == index else ""
            print(
                f"round {round_}: killed {leader.node_name}{with_etcd}; "
                f"{leader_name} leads after {took:.2f} s"
            )
            # the CLI through a survivor agrees
            assert manager_status(by_name[leader_name])[leader_name] == "Leader"

            ha5.stores.restart(index)
            leader.start()
            wait_until(
                lambda leader=leader, name=leader_name: leader_seen(leader) == name,  # type: ignore[misc]
                timeout=REJOIN_TIMEOUT_S,
                what=f"{leader.node_name} back, following {leader_name}",
            )
        time.sleep(1.0)  # some writes after the last fail-over
    finally:
        for w in writers:
            w.stop.set()
        sampler.stop.set()
        for t in threads:
            t.join(CALL_TIMEOUT_S * 3)
    acked = [a for w in writers for a in w.acked]
    in_doubt = [d for w in writers for d in w.in_doubt]
    applied = [a for w in writers for a in w.refused_but_applied]
    retries = sum((w.retries for w in writers), Counter[str]())
    print(
        "new leader after each kill: " + ", ".join(f"{f:.2f} s" for f in figures)
        + f"; writes acknowledged {len(acked)}, in doubt {len(in_doubt)}, refused but "
        f"applied {applied}, tries again "
        f"{dict(retries)}; samples {sampler.samples} ({sampler.task_samples} of the tasks)"
    )  # fmt: skip
    assert all(w.error is None for w in writers), [repr(w.error) for w in writers]
    assert sampler.error is None, repr(sampler.error)

    # every acknowledged write is there, through every manager (the docker CLI)
    created = {name for kind, name, _ in acked if kind == "create"}
    labels = {key: value for kind, key, value in acked if kind == "label"}
    assert len(created) > KILLS and len(labels) > KILLS, acked
    for m in managers:
        names = set(m.docker("service", "ls", "--format", "{{.Name}}").stdout.split())
        assert created <= names, (m.node_name, sorted(created - names))
        shown = json.loads(
            m.docker("service", "inspect", "--format", "{{json .Spec.Labels}}", "labelled").stdout
        )
        lost = {k: v for k, v in labels.items() if shown.get(k) != v}
        assert not lost, (m.node_name, lost)

    # no slot ever ran twice; the workers' tasks never restarted
    assert sampler.samples > 10 * KILLS and sampler.task_samples > 10 * KILLS, sampler
    assert not sampler.violations, sampler.violations[:20]
    cluster.manager = by_name[leader_name]
    after = cluster.wait_converged("steady", STEADY_REPLICAS)
    assert {t: p for w in workers for t, p in after[w.node_name].items()} == steady
    # the acceptance: a new leader within 5 s of each kill
    assert all(f <= NEW_LEADER_S for f in figures), figures
