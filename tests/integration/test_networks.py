"""Swarm overlay networks through the real docker CLI: create, ls (each filter),
inspect, rm; the in-use refusal; the ingress network `swarm init` makes; services'
virtual IPs and their tasks' NetworksAttachments (distinct addresses, released and
never reused while taken, across a daemon restart); and bad input refused with
nothing changed."""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from .harness import Daemon, wait_until

pytestmark = pytest.mark.integration

VXLAN = "com.docker.network.driver.overlay.vxlanid_list"


@pytest.fixture
def net_cluster(cluster: Daemon) -> Iterator[Daemon]:
    """The module's swarm, left without services or networks (but ingress) after."""
    yield cluster
    for svc in cluster.api.services():
        cluster.api.remove_service(svc["ID"])
    wait_until(lambda: not cluster.api.tasks(), timeout=30, what="tasks gone")
    for n in cluster.api.networks():
        if n["Name"] != "ingress":
            cluster.api.remove_network(n["Id"])


def _inspect(d: Daemon, ref: str) -> dict[str, Any]:
    out = json.loads(d.docker("network", "inspect", ref).stdout)
    assert isinstance(out, list) and len(out) == 1
    return dict(out[0])


def _fails(d: Daemon, *args: str) -> str:
    r = d.docker(*args, check=False)
    assert r.returncode != 0, r
    return str(r.stderr)


def _ls(d: Daemon, *filters: str) -> list[str]:
    args = ["network", "ls", "--format", "{{.Name}}"]
    for f in filters:
        args += ["--filter", f]
    return sorted(d.docker(*args).stdout.split())


def _tasks_running(d: Daemon, service: str, n: int) -> list[dict[str, Any]]:
    def ready() -> bool:
        return len(d.running_tasks(service)) == n

    wait_until(ready, timeout=30, what=f"{n} tasks of {service} running")
    return d.running_tasks(service)


def test_ingress_exists_after_init(net_cluster: Daemon) -> None:
    ingress = _inspect(net_cluster, "ingress")
    assert ingress["Ingress"] is True and ingress["Driver"] == "overlay"
    assert ingress["Scope"] == "swarm"
    assert ingress["IPAM"]["Config"] == [{"Subnet": "10.0.0.0/24", "Gateway": "10.0.0.1"}]
    assert ingress["Options"] == {VXLAN: "4096"}
    # only one ingress network may exist
    err = _fails(net_cluster, "network", "create", "-d", "overlay", "--ingress", "ingress2")
    assert "ingress network" in err and "is already present" in err
    assert "ingress2" not in _ls(net_cluster)


def test_create_ls_inspect_rm(net_cluster: Daemon) -> None:
    d = net_cluster
    t0 = time.time()
    id1 = d.docker("network", "create", "-d", "overlay", "ref-net").stdout.strip()
    id2 = d.docker(
        "network", "create", "-d", "overlay", "--attachable", "--label", "purpose=ref",
        "--subnet", "10.20.0.0/16", "--gateway", "10.20.0.254", "--ip-range", "10.20.1.0/24",
        "ref-net-att",
    ).stdout.strip()  # fmt: skip
    assert len(id1) == 25 and len(id2) == 25

    n1 = _inspect(d, "ref-net")
    assert n1["Id"] == id1 and n1["Driver"] == "overlay" and n1["Attachable"] is False
    assert n1["Labels"] is None and n1["Containers"] is None
    subnet1 = n1["IPAM"]["Config"][0]["Subnet"]
    assert ipaddress.ip_network(subnet1).prefixlen == 24 and subnet1 != "10.0.0.0/24"
    assert n1["IPAM"]["Config"][0]["Gateway"] == str(ipaddress.ip_network(subnet1)[1])
    n2 = _inspect(d, id2[:8])  # a prefix
    assert n2["Attachable"] is True and n2["Labels"] == {"purpose": "ref"}
    assert n2["IPAM"]["Config"] == [
        {"Subnet": "10.20.0.0/16", "IPRange": "10.20.1.0/24", "Gateway": "10.20.0.254"}
    ]
    vxlans = {n1["Options"][VXLAN], n2["Options"][VXLAN], "4096"}
    assert len(vxlans) == 3
    assert d.http("GET", f"/networks/{id1}?scope=swarm").json()["Id"] == id1

    # filters: name is exact, id a prefix, driver, label (k and k=v), scope, type
    assert _ls(d) == ["ingress", "ref-net", "ref-net-att"]
    assert _ls(d, "name=ref-net") == ["ref-net"]
    assert _ls(d, "name=ref") == []
    assert _ls(d, f"id={id2[:5]}") == ["ref-net-att"]
    assert _ls(d, "driver=overlay") == ["ingress", "ref-net", "ref-net-att"]
    assert _ls(d, "driver=bridge") == []
    assert _ls(d, "label=purpose") == ["ref-net-att"]
    assert _ls(d, "label=purpose=ref") == ["ref-net-att"]
    assert _ls(d, "label=purpose=other") == []
    assert _ls(d, "scope=swarm") == ["ingress", "ref-net", "ref-net-att"]
    assert _ls(d, "scope=local") == []
    assert _ls(d, "type=custom") == ["ingress", "ref-net", "ref-net-att"]
    assert _ls(d, "type=builtin") == []
    assert _ls(d, "dangling=true") == ["ref-net", "ref-net-att"]  # no service uses them

    # events: a create, then the allocator's update, then a remove
    d.docker("network", "rm", "ref-net", "ref-net-att")
    assert _ls(d) == ["ingress"]
    events = d.docker(
        "events", "--since", f"{t0:.6f}", "--until", f"{time.time():.6f}", "--filter", "type=network",
        "--format", "{{.Action}} {{.Actor.Attributes.name}}",
    ).stdout.splitlines()  # fmt: skip
    for name in ("ref-net", "ref-net-att"):
        mine = [e.split()[0] for e in events if e.endswith(f" {name}")]
        assert mine == ["create", "update", "remove"], events
    assert "network ref-net not found" in _fails(d, "network", "inspect", "ref-net")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-d", "bridge"], "network driver 'bridge' is not supported"),
        ([], "network driver 'bridge' is not supported"),
        (["-d", "overlay", "--subnet", "10.5.0.0/33"], "invalid subnet"),
        (["-d", "overlay", "--subnet", "10.0.0.0/16"], "overlaps with network ingress"),
        (["-d", "overlay", "--ipv6"], "IPv6 is not supported"),
        (["-d", "overlay", "--opt", "encrypted"], "encrypted option is not supported"),
    ],
)  # fmt: skip
def test_bad_create_refused_and_changes_nothing(
    net_cluster: Daemon, args: list[str], message: str
) -> None:
    d = net_cluster
    before = d.http("GET", "/networks").json()
    err = _fails(d, "network", "create", *args, "bad-net")
    assert message in err, err
    assert d.http("GET", "/networks").json() == before


def test_gateway_outside_subnet_refused(net_cluster: Daemon) -> None:
    # (the CLI checks this one itself; the API is asked directly)
    d = net_cluster
    before = d.http("GET", "/networks").json()
    config = {"Subnet": "10.5.0.0/24", "Gateway": "10.6.0.1"}
    r = d.http(
        "POST",
        "/networks/create",
        body={"Name": "gw", "Driver": "overlay", "IPAM": {"Config": [config]}},
    )
    assert r.status == 400
    assert r.json()["message"] == (
        "rpc error: code = InvalidArgument desc = ipam configuration: subnet 10.5.0.0/24 "
        "does not contain gateway 10.6.0.1"
    )
    assert d.http("GET", "/networks").json() == before


def test_duplicate_name_refused(net_cluster: Daemon) -> None:
    d = net_cluster
    d.docker("network", "create", "-d", "overlay", "dup-net")
    r = d.http("POST", "/networks/create", body={"Name": "dup-net", "Driver": "overlay"})
    assert r.status == 409
    assert r.json()["message"] == "network with name dup-net already exists"
    assert _ls(d) == ["dup-net", "ingress"]


def test_service_vips_and_task_attachments(net_cluster: Daemon) -> None:
    d = net_cluster
    net_id = d.docker("network", "create", "-d", "overlay", "app-net").stdout.strip()
    subnet = ipaddress.ip_network(_inspect(d, "app-net")["IPAM"]["Config"][0]["Subnet"])
    d.docker(
        "service", "create", "--detach", "--name", "web", "--replicas", "3",
        "--network", "name=app-net,alias=www", "busybox", "sleep", "3600",
    )  # fmt: skip
    svc = d.service("web")
    assert svc["Spec"]["TaskTemplate"]["Networks"] == [{"Target": net_id, "Aliases": ["www"]}]
    vips = svc["Endpoint"]["VirtualIPs"]
    assert [v["NetworkID"] for v in vips] == [net_id]
    vip = ipaddress.ip_interface(vips[0]["Addr"])
    assert vip.network == subnet
    tasks = _tasks_running(d, "web", 3)
    addrs = set()
    for t in tasks:
        (att,) = t["NetworksAttachments"]
        assert att["Network"]["ID"] == net_id and "Aliases" not in att  # as dockerd
        assert att["Network"]["Spec"]["Name"] == "app-net"
        (addr,) = att["Addresses"]
        assert ipaddress.ip_interface(addr).network == subnet
        addrs.add(addr)
    assert len(addrs) == 3 and vips[0]["Addr"] not in addrs
    # `docker inspect <task id>` (the CLI tries containers, images, networks, ...) finds
    # the task, with its attachments
    (shown,) = json.loads(d.docker("inspect", tasks[0]["ID"]).stdout)
    assert (
        shown["NetworksAttachments"][0]["Addresses"]
        == tasks[0]["NetworksAttachments"][0]["Addresses"]
    )
    assert str(subnet[1]) not in {a.split("/")[0] for a in addrs}  # the gateway

    assert _ls(d, "dangling=true") == []
    assert _ls(d, "dangling=false") == ["app-net", "ingress"]

    # the network is in use: dockerd's refusal; after service rm it goes
    r = d.http("DELETE", "/networks/app-net")
    assert r.status == 400
    assert r.json()["message"] == (
        "rpc error: code = FailedPrecondition desc = network "
        f"{net_id} is in use by service {svc['ID']}"
    )
    d.docker("service", "rm", "web")
    d.docker("network", "rm", "app-net")


def test_dnsrr_has_no_vip_and_ingress_ports_get_ingress(net_cluster: Daemon) -> None:
    d = net_cluster
    net_id = d.docker("network", "create", "-d", "overlay", "rr-net").stdout.strip()
    d.docker(
        "service", "create", "--detach", "--name", "rr", "--endpoint-mode", "dnsrr",
        "--network", "rr-net", "busybox", "sleep", "3600",
    )  # fmt: skip
    assert not d.service("rr")["Endpoint"].get("VirtualIPs")
    (t,) = _tasks_running(d, "rr", 1)
    assert [a["Network"]["ID"] for a in t["NetworksAttachments"]] == [net_id]
    # dnsrr with a port published in ingress mode: SwarmKit's refusal
    err = _fails(
        d, "service", "create", "--detach", "--name", "rr2", "--endpoint-mode", "dnsrr",
        "--publish", "8080:80", "busybox", "sleep", "3600",
    )  # fmt: skip
    assert "port published with ingress mode can't be used with dnsrr mode" in err
    assert "rr2" not in d.service_names()
    # a published port: the ingress network, VIP and attachment
    ingress_id = _inspect(d, "ingress")["Id"]
    d.docker(
        "service", "create", "--detach", "--name", "pub", "--publish", "18080:80",
        "--network", "rr-net", "busybox", "sleep", "3600",
    )  # fmt: skip
    vips = d.service("pub")["Endpoint"]["VirtualIPs"]
    assert [v["NetworkID"] for v in vips] == [ingress_id, net_id]
    # the ingress network cannot go while a service publishes through it (SwarmKit)
    r = d.http("DELETE", f"/networks/{ingress_id}")
    assert r.status == 400
    assert r.json()["message"] == (
        "rpc error: code = FailedPrecondition desc = ingress network cannot be removed "
        f"because service {d.service('pub')['ID']} depends on it"
    )
    (t,) = _tasks_running(d, "pub", 1)
    assert [a["Network"]["ID"] for a in t["NetworksAttachments"]] == [ingress_id, net_id]
    # vip -> dnsrr gives the VIP back; dnsrr -> vip takes one
    d.docker("service", "update", "--detach", "--publish-rm", "80", "--endpoint-mode",
             "dnsrr", "pub")  # fmt: skip
    assert not d.service("pub")["Endpoint"].get("VirtualIPs")
    d.docker("service", "update", "--detach", "--endpoint-mode", "vip", "rr")
    assert [v["NetworkID"] for v in d.service("rr")["Endpoint"]["VirtualIPs"]] == [net_id]
    # an unknown network: dockerd's 404
    r = d.http(
        "POST",
        "/services/create",
        body={
            "Name": "lost",
            "TaskTemplate": {
                "ContainerSpec": {"Image": "busybox", "Args": ["sleep", "1"]},
                "Networks": [{"Target": "no-such-net"}],
            },
        },
    )
    assert r.status == 404 and r.json()["message"] == "network no-such-net not found"


def test_network_add_rm_rolls_tasks_and_moves_vips(net_cluster: Daemon) -> None:
    d = net_cluster
    a = d.docker("network", "create", "-d", "overlay", "net-a").stdout.strip()
    b = d.docker("network", "create", "-d", "overlay", "net-b").stdout.strip()
    d.docker(
        "service", "create", "--detach", "--name", "mover", "--network", "net-a",
        "busybox", "sleep", "3600",
    )  # fmt: skip
    (old,) = _tasks_running(d, "mover", 1)
    d.docker("service", "update", "--detach", "--network-add", "net-b", "--network-rm", "net-a",
             "mover")  # fmt: skip
    svc = d.service("mover")
    assert [v["NetworkID"] for v in svc["Endpoint"]["VirtualIPs"]] == [b]

    def rolled() -> bool:
        ts = d.running_tasks("mover")
        return len(ts) == 1 and ts[0]["ID"] != old["ID"]

    wait_until(rolled, timeout=30, what="task replaced")
    (new,) = d.running_tasks("mover")
    assert [x["Network"]["ID"] for x in new["NetworksAttachments"]] == [b]
    # net-a is free again
    d.docker("network", "rm", "net-a")
    assert a not in {n["Id"] for n in d.api.networks()}


def test_subnet_full_task_waits_with_a_message(net_cluster: Daemon) -> None:
    d = net_cluster
    # a /29: 6 hosts, one the gateway, one the VIP: 4 task addresses
    d.docker("network", "create", "-d", "overlay", "--subnet", "10.30.0.0/29", "tiny")
    d.docker(
        "service", "create", "--detach", "--name", "crowd", "--replicas", "6",
        "--network", "tiny", "busybox", "sleep", "3600",
    )  # fmt: skip
    _tasks_running(d, "crowd", 4)

    def two_wait() -> bool:
        ts = [t for t in d.tasks("crowd") if t["Status"]["State"] == "new"]
        return len(ts) == 2 and all("no IP address available" in t["Status"]["Message"] for t in ts)

    wait_until(two_wait, timeout=30, what="two tasks waiting for an address")
    # scaled down to what fits: every task gets an address, all distinct
    d.docker("service", "scale", "--detach", "crowd=4")

    def settled() -> bool:
        ts = [t for t in d.tasks("crowd") if t["DesiredState"] == "running"]
        return len(ts) == 4 and all(t["Status"]["State"] == "running" for t in ts)

    wait_until(settled, timeout=30, what="4 tasks running")
    addrs = {t["NetworksAttachments"][0]["Addresses"][0] for t in d.running_tasks("crowd")}
    assert len(addrs) == 4


def test_default_addr_pool_at_init(daemon_factory: Any) -> None:
    d = daemon_factory(node_name="pool")
    bad = d.docker(
        "swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", "127.0.0.1:0",
        "--default-addr-pool", "10.77.0.0/16", "--default-addr-pool-mask-length", "30",
        check=False,
    )  # fmt: skip
    assert bad.returncode != 0 and "subnet size is out of range: 30" in bad.stderr
    bad = d.docker(
        "swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", "127.0.0.1:0",
        "--data-path-port", "80", check=False,
    )  # fmt: skip
    assert bad.returncode != 0 and "Datapath port number is not in valid range" in bad.stderr
    d.docker(
        "swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", "127.0.0.1:0",
        "--default-addr-pool", "10.77.0.0/16", "--default-addr-pool-mask-length", "26",
        "--data-path-port", "7789",
    )  # fmt: skip
    swarm = d.http("GET", "/swarm").json()
    assert swarm["DefaultAddrPool"] == ["10.77.0.0/16"]
    assert swarm["SubnetSize"] == 26 and swarm["DataPathPort"] == 7789
    info = d.http("GET", "/info").json()["Swarm"]["Cluster"]
    assert info["DefaultAddrPool"] == ["10.77.0.0/16"] and info["SubnetSize"] == 26
    text = d.docker("info").stdout
    assert "10.77.0.0/16" in text and "Data Path Port: 7789" in text
    assert _inspect(d, "ingress")["IPAM"]["Config"][0]["Subnet"] == "10.77.0.0/26"
    d.docker("network", "create", "-d", "overlay", "p1")
    assert _inspect(d, "p1")["IPAM"]["Config"][0]["Subnet"] == "10.77.0.64/26"


def test_addresses_kept_across_restart(daemon_factory: Any) -> None:
    d = daemon_factory(node_name="keeper")
    d.docker("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", "127.0.0.1:0")
    d.docker("network", "create", "-d", "overlay", "keep-net")
    d.docker(
        "service", "create", "--detach", "--name", "keep", "--replicas", "2",
        "--network", "keep-net", "busybox", "sleep", "3600",
    )  # fmt: skip
    before = {
        t["ID"]: t["NetworksAttachments"][0]["Addresses"][0] for t in _tasks_running(d, "keep", 2)
    }
    vip = d.service("keep")["Endpoint"]["VirtualIPs"][0]["Addr"]
    d.kill9()  # the tasks' shims outlive the daemon, and are adopted again
    d.start()
    after = {
        t["ID"]: t["NetworksAttachments"][0]["Addresses"][0] for t in _tasks_running(d, "keep", 2)
    }
    assert after == before
    assert d.service("keep")["Endpoint"]["VirtualIPs"][0]["Addr"] == vip
    # new tasks get none of the taken addresses
    d.docker("service", "scale", "--detach", "keep=5")
    tasks = _tasks_running(d, "keep", 5)
    addrs = [t["NetworksAttachments"][0]["Addresses"][0] for t in tasks]
    assert len(set(addrs)) == 5 and vip not in addrs
    assert set(before.values()) <= set(addrs)


def test_outside_a_swarm_there_are_no_networks(daemon_factory: Any) -> None:
    d = daemon_factory(node_name="loner")
    assert _ls(d) == []
    assert "network nothing not found" in _fails(d, "network", "inspect", "nothing")
    err = _fails(d, "network", "create", "-d", "overlay", "x")
    assert "This node is not a swarm manager" in err


def test_prune_removes_unused_swarm_networks_only(net_cluster: Daemon) -> None:
    d = net_cluster
    for name, labels in (("spare", []), ("kept", ["--label", "keep=1"]), ("busy", [])):
        d.docker("network", "create", "-d", "overlay", *labels, name)
    d.docker(
        "service", "create", "--detach", "--name", "user", "--network", "busy",
        "busybox", "sleep", "3600",
    )  # fmt: skip
    out = d.docker("network", "prune", "-f", "--filter", "label!=keep").stdout
    assert "spare" in out and "kept" not in out and "busy" not in out
    assert _ls(d) == ["busy", "ingress", "kept"]
    out = d.docker("network", "prune", "-f", "--filter", "until=1h").stdout
    assert "kept" not in out  # made less than an hour ago
    d.docker("network", "prune", "-f")
    assert _ls(d) == ["busy", "ingress"]
