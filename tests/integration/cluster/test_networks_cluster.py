"""Overlay network allocation across three nodes (process runtime): a global service
published through ingress and attached to a network gets a task on every node, each
with its own address on both networks; a replicated service on the same network gets
addresses none of them holds; VIPs are distinct from every task address. (The nodes'
kernel plumbing is not under test here: the manager's allocation is.)"""

from __future__ import annotations

import ipaddress
from collections import Counter

import pytest

from ..cluster_harness import Cluster

pytestmark = pytest.mark.integration


def test_addresses_unique_across_nodes(cluster: Cluster) -> None:
    m = cluster.manager
    net_id = m.docker("network", "create", "-d", "overlay", "spread-net").stdout.strip()
    try:
        ingress = m.api.inspect_network("ingress")["Id"]
        m.docker(
            "service", "create", "--detach", "--name", "everywhere", "--mode", "global",
            "--publish", "19090:80", "--network", "spread-net", "busybox", "sleep", "3600",
        )  # fmt: skip
        m.docker(
            "service", "create", "--detach", "--name", "many", "--replicas", "6",
            "--network", "spread-net", "busybox", "sleep", "3600",
        )  # fmt: skip
        cluster.wait_converged("everywhere", 3, per_node={n: 1 for n in cluster.nodes})
        cluster.wait_converged("many", 6)
        held: dict[str, list[str]] = {ingress: [], net_id: []}
        hosts: Counter[str] = Counter()
        for name in ("everywhere", "many"):
            svc = m.service(name)
            for v in svc["Endpoint"]["VirtualIPs"]:
                held[v["NetworkID"]].append(v["Addr"])
            for t in m.api.tasks(filters={"service": name, "desired-state": "running"}):
                hosts[t["NodeID"]] += 1
                want = [ingress, net_id] if name == "everywhere" else [net_id]
                assert [a["Network"]["ID"] for a in t["NetworksAttachments"]] == want
                for a in t["NetworksAttachments"]:
                    held[a["Network"]["ID"]] += a["Addresses"]
        assert len(hosts) == 3
        subnet = ipaddress.ip_network(m.api.inspect_network(net_id)["IPAM"]["Config"][0]["Subnet"])
        assert len(held[net_id]) == 2 + 3 + 6 and len(set(held[net_id])) == len(held[net_id])
        assert all(ipaddress.ip_interface(a).network == subnet for a in held[net_id])
        assert len(held[ingress]) == 1 + 3 and len(set(held[ingress])) == 4
    finally:
        cluster.remove_all_services()
        m.docker("network", "rm", "spread-net")
