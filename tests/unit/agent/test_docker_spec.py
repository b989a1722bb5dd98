"""From a task to the engine's create body, without an engine: names, labels, Swarm's
templates, every ContainerSpec field, image references, exit and health states."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from shoal.agent.executor.base import ExecutorError, ExitStatus
from shoal.agent.executor.docker_spec import (
    LABEL_AGENT,
    LABEL_NODE_ID,
    LABEL_SERVICE_ID,
    LABEL_SERVICE_NAME,
    LABEL_TASK,
    LABEL_TASK_ID,
    LABEL_TASK_NAME,
    NodeInfo,
    TemplateContext,
    bound_host_ports,
    create_body,
    exit_status,
    expand_env,
    health_status,
    pull_reference,
    split_reference,
    task_name,
    with_host_ports,
)
from shoal.types.network import PortMapping
from shoal.types.service import (
    ContainerSpec,
    HealthConfig,
    Limit,
    Privileges,
    ResourceObject,
    Resources,
    TaskSpec,
)
from shoal.types.task import Task, TaskState, TaskStatus

NODE = NodeInfo(id="node0id", hostname="host-a", os="linux", architecture="x86_64")
AGENT = "agent0"
SERVICE = "web"  # the service name an assignment carries beside the task


def make_task(
    slot: int | None = 2,
    resources: Resources | None = None,
    log_driver: dict[str, Any] | None = None,
    task_labels: dict[str, str] | None = None,
    **spec: Any,
) -> Task:
    spec.setdefault("image", "busybox:1")
    return Task(
        id="task0id",
        spec=TaskSpec(
            container_spec=ContainerSpec(**spec), resources=resources, log_driver=log_driver
        ),
        service_id="svc0id",
        slot=slot,
        node_id="node0id",
        labels=task_labels,
        status=TaskStatus(timestamp="", state=TaskState.ASSIGNED.wire, message=""),
        desired_state=TaskState.RUNNING.wire,
    )


def test_names_replicated_and_global() -> None:
    assert task_name(make_task(slot=2), SERVICE) == "web.2.task0id"
    assert task_name(make_task(slot=None), SERVICE) == "web.node0id.task0id"


@pytest.mark.parametrize(
    ("template", "expanded"),
    [
        ("{{.Node.Hostname}}-{{.Task.Slot}}", "host-a-2"),
        ("{{ .Service.Name }}.{{.Service.ID}}", "web.svc0id"),
        ("{{.Task.Name}} {{.Task.ID}} {{.Node.ID}}", "web.2.task0id task0id node0id"),
        ("{{.Node.Platform.OS}}/{{.Node.Platform.Architecture}}", "linux/x86_64"),
        ('{{index .Node.Platform "OS"}}', "linux"),
        ("no template", "no template"),
    ],
)
def test_templates(template: str, expanded: str) -> None:
    assert TemplateContext(make_task(), NODE, SERVICE).expand(template) == expanded


def test_template_slot_of_a_global_task_is_the_node() -> None:
    assert (
        TemplateContext(make_task(slot=None), NODE, SERVICE).expand("{{.Task.Slot}}") == "node0id"
    )


@pytest.mark.parametrize("template", ["{{.Node.Nope}}", "{{.Node}}", '{{printf "%d" 1}}'])
def test_template_errors(template: str) -> None:
    with pytest.raises(ExecutorError, match="template"):
        TemplateContext(make_task(), NODE, SERVICE).expand(template)


def test_env_templates_and_invalid_entries() -> None:
    ctx = TemplateContext(make_task(), NODE, SERVICE)
    assert expand_env(ctx, ["A=1", "H={{.Node.Hostname}}", "E="]) == ["A=1", "H=host-a", "E="]
    with pytest.raises(ExecutorError, match="invalid environment variable"):
        expand_env(ctx, ["NOVALUE"])


def test_labels_swarm_ones_win() -> None:
    task = make_task(
        task_labels={"from-task": "t", "shared": "task"},
        labels={"team": "blue", "shared": "spec", LABEL_TASK_ID: "forged"},
    )
    labels = create_body(task, NODE, AGENT, SERVICE)["Labels"]
    assert labels == {
        "team": "blue",
        "from-task": "t",
        "shared": "task",
        LABEL_TASK: "",
        LABEL_TASK_ID: "task0id",
        LABEL_TASK_NAME: "web.2.task0id",
        LABEL_NODE_ID: "node0id",
        LABEL_SERVICE_ID: "svc0id",
        LABEL_SERVICE_NAME: "web",
        LABEL_AGENT: AGENT,
    }


def test_command_replaces_the_entrypoint_args_alone_are_cmd() -> None:
    body = create_body(make_task(command=["/bin/sh", "-c"], args=["echo hi"]), NODE, AGENT, SERVICE)
    assert body["Entrypoint"] == ["/bin/sh", "-c"] and body["Cmd"] == ["echo hi"]
    body = create_body(make_task(args=["sleep", "1"]), NODE, AGENT, SERVICE)
    assert "Entrypoint" not in body and body["Cmd"] == ["sleep", "1"]
    body = create_body(make_task(), NODE, AGENT, SERVICE)
    assert "Entrypoint" not in body and "Cmd" not in body  # the image's own


def test_every_container_spec_field() -> None:
    task = make_task(
        env=["A=1"],
        user="nobody:nogroup",
        dir="/tmp",
        hostname="{{.Service.Name}}-{{.Task.Slot}}",
        groups=["audio"],
        tty=True,
        open_stdin=True,
        read_only=True,
        stop_signal="SIGUSR1",
        stop_grace_period=1_500_000_000,
        init=True,
        sysctls={"net.ipv4.ip_forward": "1"},
        capability_add=["CAP_NET_ADMIN"],
        capability_drop=["CAP_MKNOD"],
        ulimits=[{"Name": "nofile", "Soft": 1024, "Hard": 2048}],
        hosts=["10.0.0.1 db db.local", "10.0.0.2 cache"],
        dns_config={"Nameservers": ["1.1.1.1"], "Search": ["example.org"], "Options": ["ndots:2"]},
        health_check=HealthConfig(test=["CMD", "true"], interval=1_000_000_000, retries=2),
        mounts=[
            {"Type": "bind", "Source": "/srv/{{.Task.Slot}}", "Target": "/srv", "ReadOnly": True},
            {
                "Type": "volume",
                "Source": "data-{{.Task.Slot}}",
                "Target": "/data",
                "VolumeOptions": {
                    "Labels": {"slot": "{{.Task.Slot}}"},
                    "DriverConfig": {"Name": "local", "Options": {"o": "{{.Node.ID}}"}},
                },
            },
            {"Type": "tmpfs", "Target": "/run/x", "TmpfsOptions": {"SizeBytes": 1024}},
        ],
        privileges=Privileges(no_new_privileges=True, seccomp={"Mode": "unconfined"}),
        resources=Resources(
            limits=Limit(nano_cpus=500_000_000, memory_bytes=64 << 20, pids=32),
            reservations=ResourceObject(memory_bytes=16 << 20, nano_cpus=100_000_000),
        ),
        log_driver={"Name": "json-file", "Options": {"max-size": "1m"}},
    )
    body = create_body(task, NODE, AGENT, SERVICE)
    assert body["Image"] == "busybox:1"
    assert body["Env"] == ["A=1"]
    assert body["User"] == "nobody:nogroup" and body["WorkingDir"] == "/tmp"
    assert body["Hostname"] == "web-2"
    assert body["Tty"] is True and body["OpenStdin"] is True
    assert body["StopSignal"] == "SIGUSR1" and body["StopTimeout"] == 2  # rounded up
    assert body["Healthcheck"] == {"Test": ["CMD", "true"], "Interval": 1_000_000_000, "Retries": 2}
    host = body["HostConfig"]
    assert host["Init"] is True and host["ReadonlyRootfs"] is True
    assert host["GroupAdd"] == ["audio"]
    assert host["Sysctls"] == {"net.ipv4.ip_forward": "1"}
    assert host["CapAdd"] == ["CAP_NET_ADMIN"] and host["CapDrop"] == ["CAP_MKNOD"]
    assert host["Ulimits"] == [{"Name": "nofile", "Soft": 1024, "Hard": 2048}]
    assert host["ExtraHosts"] == ["db:10.0.0.1", "db.local:10.0.0.1", "cache:10.0.0.2"]
    assert host["Dns"] == ["1.1.1.1"] and host["DnsSearch"] == ["example.org"]
    assert host["DnsOptions"] == ["ndots:2"]
    assert host["NanoCpus"] == 500_000_000 and host["Memory"] == 64 << 20
    assert host["PidsLimit"] == 32 and host["MemoryReservation"] == 16 << 20
    assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "1m"}}
    assert host["SecurityOpt"] == ["seccomp=unconfined", "no-new-privileges=true"]
    assert host["Mounts"] == [
        {"Type": "bind", "Source": "/srv/2", "Target": "/srv", "ReadOnly": True},
        {
            "Type": "volume",
            "Source": "data-2",
            "Target": "/data",
            "VolumeOptions": {
                "Labels": {"slot": "2"},
                "DriverConfig": {"Name": "local", "Options": {"o": "node0id"}},
            },
        },
        {"Type": "tmpfs", "Target": "/run/x", "TmpfsOptions": {"SizeBytes": 1024}},
    ]


def test_defaults_leave_the_engine_its_own() -> None:
    body = create_body(make_task(), NODE, AGENT, SERVICE)
    assert body["StopTimeout"] == 10  # Swarm's default grace
    assert "Healthcheck" not in body  # the image's
    assert body["HostConfig"] == {"Mounts": [], "ReadonlyRootfs": False}


@pytest.mark.parametrize(
    "mount",
    [{"Type": "nfs", "Target": "/x"}, {"Type": "volume"}, {"Type": "bind", "Target": "/x"}],
)
def test_invalid_mounts(mount: dict[str, Any]) -> None:
    with pytest.raises(ExecutorError):
        create_body(make_task(mounts=[mount]), NODE, AGENT, SERVICE)


def test_no_image_is_an_error() -> None:
    with pytest.raises(ExecutorError):
        create_body(make_task(image=""), NODE, AGENT, SERVICE)


@pytest.mark.parametrize(
    ("image", "split", "pull"),
    [
        ("busybox", ("busybox", "", ""), ("busybox", "latest")),
        ("busybox:1.36", ("busybox", "1.36", ""), ("busybox", "1.36")),
        ("127.0.0.1:5000/app", ("127.0.0.1:5000/app", "", ""), ("127.0.0.1:5000/app", "latest")),
        (
            "127.0.0.1:5000/app:1@sha256:ab",
            ("127.0.0.1:5000/app", "1", "sha256:ab"),
            ("127.0.0.1:5000/app", "sha256:ab"),
        ),
        ("app@sha256:cd", ("app", "", "sha256:cd"), ("app", "sha256:cd")),
    ],
)
def test_image_references(image: str, split: tuple[str, str, str], pull: tuple[str, str]) -> None:
    assert split_reference(image) == split
    assert pull_reference(image) == pull


def test_exit_status() -> None:
    assert exit_status({"ExitCode": 0}) == ExitStatus(exit_code=0)
    assert exit_status({"ExitCode": 3}) == ExitStatus(exit_code=3)
    assert exit_status({"ExitCode": 137}) == ExitStatus(exit_code=137, signal=9)
    assert exit_status({"ExitCode": 137, "OOMKilled": True}) == ExitStatus(
        exit_code=137, signal=9, oom_killed=True
    )


def test_health_status() -> None:
    assert health_status({"Running": True}) is None
    assert health_status({"Health": {"Status": "starting"}}) == "starting"
    assert health_status({"Health": {"Status": "unhealthy"}}) == "unhealthy"


def test_custom_seccomp_profile_is_decoded() -> None:
    profile = '{"defaultAction":"SCMP_ACT_ALLOW"}'
    encoded = base64.b64encode(profile.encode()).decode()
    task = make_task(privileges=Privileges(seccomp={"Mode": "custom", "Profile": encoded}))
    assert create_body(task, NODE, AGENT, SERVICE)["HostConfig"]["SecurityOpt"] == [
        f"seccomp={profile}"
    ]
    bad = make_task(privileges=Privileges(seccomp={"Mode": "custom", "Profile": "not base64!"}))
    with pytest.raises(ExecutorError, match="seccomp"):
        create_body(bad, NODE, AGENT, SERVICE)


def test_the_cluster_default_log_driver_applies_when_the_service_names_none() -> None:
    default = {"Name": "gelf", "Options": {"gelf-address": "udp://127.0.0.1:1"}}
    body = create_body(make_task(), NODE, AGENT, SERVICE, default)
    assert body["HostConfig"]["LogConfig"] == {
        "Type": "gelf",
        "Config": {"gelf-address": "udp://127.0.0.1:1"},
    }
    own = make_task(log_driver={"Name": "json-file"})
    body = create_body(own, NODE, AGENT, SERVICE, default)
    assert body["HostConfig"]["LogConfig"] == {"Type": "json-file", "Config": {}}


def test_host_mode_ports_are_exposed_and_bound_as_dockerd_binds_them() -> None:
    ports = [
        PortMapping(protocol="tcp", target=80, published=8081, mode="host"),
        PortMapping(protocol="udp", target=53, published=0, mode="host"),
    ]
    body = with_host_ports(create_body(make_task(), NODE, AGENT, SERVICE), ports)
    assert body["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}}
    assert body["HostConfig"]["PortBindings"] == {
        "80/tcp": [{"HostIp": "", "HostPort": "8081"}],
        "53/udp": [{"HostIp": "", "HostPort": ""}],  # the engine picks one
    }
    # no host-mode ports: nothing is exposed
    assert "ExposedPorts" not in with_host_ports(create_body(make_task(), NODE, AGENT, SERVICE), [])


def test_bound_host_ports_are_read_back_from_the_engine() -> None:
    ports = [
        PortMapping(protocol="tcp", target=80, published=8081, mode="host"),
        PortMapping(protocol="udp", target=53, published=0, mode="host"),
    ]
    info = {
        "NetworkSettings": {
            "Ports": {
                "80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8081"}],
                "53/udp": [{"HostIp": "0.0.0.0", "HostPort": "49153"}],
            }
        }
    }
    assert bound_host_ports(info, ports) == (
        ports[0],
        PortMapping(protocol="udp", target=53, published=49153, mode="host"),
    )
    # not bound (yet): the spec's numbers; no host ports: nothing to say
    assert bound_host_ports({"NetworkSettings": {"Ports": {}}}, ports) == tuple(ports)
    assert bound_host_ports(info, []) is None
