"""Docker's filter rules on the node, where the mesh and host ports forward.

dockerd sets the `FORWARD` policy of iptables' filter table to DROP (deps-evaluation
§7a): on a host where it runs, the packets the node forwards to the mesh's gateway or a
task's host-port link, and back, are dropped unless accepted in its `DOCKER-USER` chain,
the chain dockerd leaves to its users. Where that chain exists, each veth of ours that
forwards gets `-i <veth> -j ACCEPT` and `-o <veth> -j ACCEPT` there, each rule recorded
(by the caller, before it is inserted) and deleted by exactly that rule. Where it does not
(no dockerd: the lab's node namespaces), nothing is done. A node with its own DROP
policy and no DOCKER-USER chain must accept them itself (docs/networking.md).
"""

from __future__ import annotations

import shutil
import subprocess

from shoal.agent.network import netns
from shoal.log import get_logger

CHAIN = "DOCKER-USER"
COMMENT = "shoal routing mesh"

log = get_logger("shoal.agent.network.dockerfw")


def _iptables(ns: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("iptables") or "/usr/sbin/iptables"
    argv = [exe, "-w", *args]

    def run() -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=20)
        except FileNotFoundError:
            return subprocess.CompletedProcess(argv, 127, "", "no iptables")

    if ns:
        with netns.Entered(ns):
            return run()
    return run()


def rules_for(ns: str | None, veth: str) -> list[list[str]]:
    """The rules `veth` needs in the node's namespace `ns`: none without DOCKER-USER."""
    if _iptables(ns, "-S", CHAIN).returncode != 0:
        return []
    tail = ["-j", "ACCEPT", "-m", "comment", "--comment", COMMENT]
    return [[CHAIN, "-i", veth, *tail], [CHAIN, "-o", veth, *tail]]


def insert(ns: str | None, rule: list[str]) -> None:
    done = _iptables(ns, "-I", *rule)
    if done.returncode != 0:
        log.warning("DOCKER-USER rule not inserted", rule=rule, error=done.stderr.strip())


def delete(ns: str | None, rule: list[str]) -> None:
    """Delete exactly `rule` (nothing when it is not there)."""
    if _iptables(ns, "-C", *rule).returncode == 0:
        _iptables(ns, "-D", *rule)
