"""Published ports through the real docker CLI on a single-node swarm: `--publish` in
ingress and host mode, TCP and UDP, shown in `Endpoint.Ports` and `docker service ls`
as dockerd shows them; a port with no number given one from 30000–32767; a port
another service publishes refused with SwarmKit's message, nothing changed;
`--publish-add` / `--publish-rm`; the host-port filter (two tasks needing one host port
never share the node: the second waits with Swarm's message) and a running task's
PortStatus."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from .harness import Daemon, wait_until

pytestmark = pytest.mark.integration

PORT_RANGE = range(30000, 32768)


@pytest.fixture
def ports_cluster(cluster: Daemon) -> Iterator[Daemon]:
    yield cluster
    for svc in cluster.api.services():
        cluster.api.remove_service(svc["ID"])
    wait_until(lambda: not cluster.api.tasks(), timeout=30, what="tasks gone")


def _fails(d: Daemon, *args: str) -> str:
    r = d.docker(*args, check=False)
    assert r.returncode != 0, r
    return str(r.stderr)


def _port(
    published: int | None, target: int, proto: str = "tcp", mode: str = "ingress"
) -> dict[str, Any]:
    out: dict[str, Any] = {"Protocol": proto, "TargetPort": target, "PublishMode": mode}
    if published is not None:
        out["PublishedPort"] = published
    return out


def _ls_ports(d: Daemon, name: str) -> str:
    out = d.docker("service", "ls", "--filter", f"name={name}", "--format", "{{.Ports}}")
    return str(out.stdout.strip())


def test_ports_shown_as_dockerd_shows_them(ports_cluster: Daemon) -> None:
    d = ports_cluster
    d.docker(
        "service", "create", "--detach", "--name", "web",
        "--publish", "published=18080,target=80",
        "--publish", "published=18053,target=53,protocol=udp",
        "--publish", "target=90",
        "--publish", "mode=host,published=18081,target=81",
        "busybox", "sleep", "3600",
    )  # fmt: skip
    svc = d.service("web")
    ports = svc["Endpoint"]["Ports"]
    auto = ports[2]["PublishedPort"]
    assert auto in PORT_RANGE
    assert ports == [
        _port(18080, 80),
        _port(18053, 53, "udp"),
        _port(auto, 90),
        _port(18081, 81, mode="host"),
    ]
    # the spec keeps what was asked: no number for the third
    assert svc["Spec"]["EndpointSpec"]["Ports"][2] == _port(None, 90)
    # the CLI's PORTS column: ingress ports only, as with dockerd
    assert _ls_ports(d, "web") == f"*:18080->80/tcp, *:{auto}->90/tcp, *:18053->53/udp"
    # a second service gets another port from the range
    d.docker("service", "create", "--detach", "--name", "web2", "--publish", "90",
             "busybox", "sleep", "3600")  # fmt: skip
    auto2 = d.service("web2")["Endpoint"]["Ports"][0]["PublishedPort"]
    assert auto2 in PORT_RANGE and auto2 != auto
    # an update that keeps the ports keeps the given number
    d.docker("service", "update", "--detach", "--env-add", "A=1", "web")
    assert d.service("web")["Endpoint"]["Ports"][2]["PublishedPort"] == auto


def test_a_port_in_use_is_refused_with_swarmkits_message(ports_cluster: Daemon) -> None:
    d = ports_cluster
    d.docker("service", "create", "--detach", "--name", "a", "--publish", "18090:80",
             "--publish", "mode=host,published=18091,target=81",
             "busybox", "sleep", "3600")  # fmt: skip
    a = d.service("a")
    index = a["Version"]["Index"]
    ingress_msg = f"port '18090' is already in use by service 'a' ({a['ID']}) as an ingress port"
    err = _fails(d, "service", "create", "--detach", "--name", "b", "--publish", "18090:8080",
                 "busybox", "sleep", "3600")  # fmt: skip
    assert f"rpc error: code = InvalidArgument desc = {ingress_msg}" in err
    # in host mode too: an ingress port is the whole cluster's
    err = _fails(d, "service", "create", "--detach", "--name", "b",
                 "--publish", "mode=host,published=18090,target=80",
                 "busybox", "sleep", "3600")  # fmt: skip
    assert ingress_msg in err
    # an ingress port on another's host-mode port
    err = _fails(d, "service", "create", "--detach", "--name", "b", "--publish", "18091:80",
                 "busybox", "sleep", "3600")  # fmt: skip
    assert (
        f"port '18091' is already in use by service 'a' ({a['ID']}) as a host-published port" in err
    )
    # the auto-assigned ports count too
    d.docker("service", "create", "--detach", "--name", "auto", "--publish", "80",
             "busybox", "sleep", "3600")  # fmt: skip
    auto = d.service("auto")["Endpoint"]["Ports"][0]["PublishedPort"]
    err = _fails(d, "service", "create", "--detach", "--name", "b", "--publish",
                 f"{auto}:80", "busybox", "sleep", "3600")  # fmt: skip
    assert f"port '{auto}' is already in use by service 'auto'" in err
    assert "b" not in d.service_names()
    # on update (publish-add): refused, the service unchanged
    d.docker("service", "create", "--detach", "--name", "c", "busybox", "sleep", "3600")
    c = d.service("c")
    err = _fails(d, "service", "update", "--detach", "--publish-add", "18090:80", "c")
    assert ingress_msg in err
    assert d.service("c") == c
    assert d.service("a")["Version"]["Index"] == index
    # UDP is another port; two host-mode services may share a port (the scheduler keeps
    # their tasks apart)
    d.docker("service", "update", "--detach", "--publish-add", "18090:80/udp",
             "--publish-add", "mode=host,published=18091,target=80", "c")  # fmt: skip
    assert d.service("c")["Endpoint"]["Ports"] == [
        _port(18090, 80, "udp"),
        _port(18091, 80, mode="host"),
    ]


def test_publish_add_and_rm_roll_the_tasks(ports_cluster: Daemon) -> None:
    d = ports_cluster
    d.docker("service", "create", "--detach", "--name", "p", "busybox", "sleep", "3600")
    assert "Ports" not in d.service("p")["Endpoint"]
    wait_until(lambda: len(d.running_tasks("p")) == 1, timeout=30, what="p running")
    (old,) = d.running_tasks("p")
    d.docker("service", "update", "--detach", "--publish-add", "18100:80", "p")
    assert d.service("p")["Endpoint"]["Ports"] == [_port(18100, 80)]
    assert _ls_ports(d, "p") == "*:18100->80/tcp"

    def rolled() -> bool:
        ts = d.running_tasks("p")
        return len(ts) == 1 and ts[0]["ID"] != old["ID"]

    wait_until(rolled, timeout=30, what="task replaced for the new port")
    (new,) = d.running_tasks("p")
    d.docker("service", "update", "--detach", "--publish-rm", "80", "p")
    svc = d.service("p")
    assert "Ports" not in svc["Endpoint"] and "Ports" not in svc["Endpoint"]["Spec"]
    assert _ls_ports(d, "p") == ""
    # the port is free for another service
    d.docker("service", "create", "--detach", "--name", "q", "--publish", "18100:80",
             "busybox", "sleep", "3600")  # fmt: skip
    assert d.service("q")["Endpoint"]["Ports"] == [_port(18100, 80)]
    wait_until(
        lambda: [t["ID"] for t in d.running_tasks("p")] not in ([], [new["ID"]]),
        timeout=30,
        what="task replaced once the port went",
    )


def test_host_mode_tasks_never_share_the_node(ports_cluster: Daemon) -> None:
    d = ports_cluster
    d.docker("service", "create", "--detach", "--name", "h", "--replicas", "2",
             "--publish", "mode=host,published=18110,target=80",
             "busybox", "sleep", "3600")  # fmt: skip
    wait_until(lambda: len(d.running_tasks("h")) == 1, timeout=30, what="one h running")

    def waiting() -> list[dict[str, Any]]:
        return [t for t in d.tasks("h") if t["Status"]["State"] == "pending"]

    wait_until(lambda: waiting() and waiting()[0]["Status"].get("Err"), timeout=30,
               what="the other waits")  # fmt: skip
    (pending,) = waiting()
    assert pending["Status"]["Err"] == "no suitable node (host-mode port already in use on 1 node)"
    (running,) = d.running_tasks("h")
    assert running["Status"]["PortStatus"] == {
        "Ports": [
            {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 18110, "PublishMode": "host"}
        ]
    }
    # docker service ps shows the reason as dockerd does
    out = d.docker("service", "ps", "--no-trunc", "--format", "{{.Error}}", "h").stdout
    assert '"no suitable node (host-mode port already in use on 1 node)"' in out
    # another service on the same host port waits too; on another port it runs
    d.docker("service", "create", "--detach", "--name", "h2",
             "--publish", "mode=host,published=18111,target=80",
             "busybox", "sleep", "3600")  # fmt: skip
    wait_until(lambda: len(d.running_tasks("h2")) == 1, timeout=30, what="h2 running")
    # scaling down frees the port for the waiting task's slot: one runs, none waits
    d.docker("service", "scale", "--detach", "h=1")
    wait_until(lambda: not waiting(), timeout=30, what="no h task waiting")
    assert len(d.running_tasks("h")) == 1
