"""Network partitions made of dropped packets: three daemons, each in a network
namespace of its own (NetnsLab), and iptables rules in a worker's namespace that drop
everything between it and the manager, both ways (no RST, no FIN: the connections just
go silent, as across a failed switch).

- A worker cut off: the manager sees it down and runs its tasks elsewhere; after the
  heal the worker stops its stale copies and no task runs twice.
- A flapping link: cut and healed at seeded random intervals of a few seconds for
  SHOAL_FLAP_S seconds (default FLAP_S; the full minute is `bench/flap_soak.py`), with
  the service scaled in the middle; afterwards the cluster converges with no duplicate.

Every rule is added with a comment naming this run and deleted by the exact spec that
added it; the namespaces, veths and bridge are the lab's, removed by their names. The
seed is printed; SHOAL_PARTITION_SEED=N replays it."""

from __future__ import annotations

import os
import random
import shutil
import time
from collections.abc import Iterator

import pytest

from ..cluster_harness import (
    DOWN_TIMEOUT_S,
    RESCHEDULE_TIMEOUT_S,
    Cluster,
    CommandFailed,
    NetnsLab,
    ns_exec,
)
from ..crash import duplicate_slots
from ..harness import pid_alive, wait_until

pytestmark = pytest.mark.integration

SLEEP = ("busybox", "sleep", "1000")
FLAP_S = 24.0
# How long a cut lasts and how long the link stays up between two cuts: around the
# heartbeat's 3 s failure detection, so some cuts are seen and some are not.
CUT_S = (1.0, 5.0)
HEALED_S = (1.0, 4.0)


def seed() -> int:
    value = int(os.environ.get("SHOAL_PARTITION_SEED") or random.SystemRandom().randrange(2**32))
    print(f"partition seed {value} (replay with SHOAL_PARTITION_SEED={value})")
    return value


class PacketDrop:
    """iptables rules in namespace `ns` that drop every packet to and from `peer`.
    Each rule is kept as the exact spec that added it, and deleted by that spec."""

    def __init__(self, ns: str, peer: str, tag: str) -> None:
        self.ns = ns
        self.tag = tag
        comment = ["-m", "comment", "--comment", tag]
        self.rules = [
            ["INPUT", "-s", peer, *comment, "-j", "DROP"],
            ["OUTPUT", "-d", peer, *comment, "-j", "DROP"],
        ]
        self.added: list[list[str]] = []
        self.cuts = 0

    def _iptables(self, *args: str) -> None:
        iptables = shutil.which("iptables") or "/usr/sbin/iptables"
        result = ns_exec(self.ns, iptables, "-w", *args)
        if result.returncode != 0:
            raise CommandFailed(f"iptables {' '.join(args)} in {self.ns}: {result.stderr}")

    @property
    def cut(self) -> bool:
        return bool(self.added)

    def drop(self) -> None:
        assert not self.added, "already cut"
        for rule in self.rules:
            self._iptables("-I", *rule)
            self.added.append(rule)
        self.cuts += 1

    def heal(self) -> None:
        while self.added:
            self._iptables("-D", *self.added[-1])
            self.added.pop()

    def leftovers(self) -> list[str]:
        iptables = shutil.which("iptables") or "/usr/sbin/iptables"
        listed = ns_exec(self.ns, iptables, "-w", "-S").stdout
        return [line for line in listed.splitlines() if self.tag in line]


@pytest.fixture(scope="module", autouse=True)
def _iptables() -> None:
    if shutil.which("iptables") is None:
        pytest.fail("iptables is needed: scripts/setup.sh installs it", pytrace=False)


@pytest.fixture
def drop(lab: NetnsLab, netns_trio: Cluster) -> Iterator[PacketDrop]:
    """Rules that cut node-3 off the manager (not yet added); healed and checked gone at
    the end, whatever happened; the cluster is given back converged and empty."""
    cut = netns_trio.nodes["node-3"]
    assert cut.netns is not None
    rules = PacketDrop(cut.netns, netns_trio.manager.addr, f"shoal-test-{lab.suffix}-cut")
    try:
        yield rules
    finally:
        rules.heal()
        assert not rules.leftovers(), rules.leftovers()
        netns_trio.wait_node_state("node-3", "ready", timeout=DOWN_TIMEOUT_S)
        netns_trio.remove_all_services(timeout=RESCHEDULE_TIMEOUT_S)


def no_duplicate(cluster: Cluster) -> None:
    dups = duplicate_slots(cluster.manager.api.tasks())
    assert not dups, f"slots with two tasks: {dups}"


def test_a_worker_cut_off_is_replaced_and_runs_no_duplicate_after_the_heal(
    netns_trio: Cluster, drop: PacketDrop
) -> None:
    cluster = netns_trio
    cluster.manager.create_service("cutoff", "--replicas", "6", "--restart-delay", "1s", *SLEEP)
    before = cluster.wait_converged(
        "cutoff", 6, per_node={"node-1": 2, "node-2": 2, "node-3": 2}, timeout=RESCHEDULE_TIMEOUT_S
    )
    stale = before["node-3"]

    drop.drop()
    cluster.wait_node_state("node-3", "down", timeout=DOWN_TIMEOUT_S)

    def replaced() -> bool:
        running = cluster.running_placement("cutoff")
        if len(running) != 6 or "node-3" in running.values():
            return False
        live = cluster.live_processes()
        return all(live.get(t, ("", 0))[0] == host for t, host in running.items())

    wait_until(replaced, timeout=RESCHEDULE_TIMEOUT_S, what="node-3's tasks to run elsewhere")
    no_duplicate(cluster)
    # Cut off, node-3 cannot be told: its copies run on (as Swarm's do) until the heal.
    assert all(pid_alive(p) for p in stale.values()), stale

    drop.heal()
    cluster.wait_node_state("node-3", "ready", timeout=DOWN_TIMEOUT_S)
    cluster.wait_converged(
        "cutoff",
        6,
        check=lambda c: c["node-3"] == 0 and c["node-1"] + c["node-2"] == 6,
        timeout=RESCHEDULE_TIMEOUT_S,
    )
    wait_until(
        lambda: not any(pid_alive(p) for p in stale.values()),
        what="node-3's stale copies to be stopped after the heal",
    )
    no_duplicate(cluster)


def test_a_flapping_link_leaves_the_cluster_converged_without_duplicates(
    netns_trio: Cluster, drop: PacketDrop
) -> None:
    cluster = netns_trio
    rng = random.Random(seed())
    flap_s = float(os.environ.get("SHOAL_FLAP_S") or FLAP_S)
    cluster.manager.create_service("flappy", "--replicas", "6", "--restart-delay", "1s", *SLEEP)
    cluster.wait_converged("flappy", 6, timeout=RESCHEDULE_TIMEOUT_S)

    replicas, scaled = 6, False
    start = time.monotonic()
    while time.monotonic() - start < flap_s:
        drop.drop()
        time.sleep(rng.uniform(*CUT_S))
        drop.heal()
        if not scaled and time.monotonic() - start > flap_s / 2:
            replicas, scaled = 8, True
            cluster.manager.docker("service", "scale", "--detach", f"flappy={replicas}")
        time.sleep(rng.uniform(*HEALED_S))
        no_duplicate(cluster)
    elapsed = time.monotonic() - start
    print(f"flapped {drop.cuts} times in {elapsed:.1f} s")
    assert drop.cuts >= 3 and scaled

    cluster.wait_node_state("node-3", "ready", timeout=DOWN_TIMEOUT_S)
    cluster.wait_converged("flappy", replicas, timeout=RESCHEDULE_TIMEOUT_S)
    no_duplicate(cluster)
