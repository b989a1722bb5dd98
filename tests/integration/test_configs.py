"""Configs through the real docker CLI and docker-py: like secrets, but their Data
comes back, as Docker returns it."""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from docker.types import ConfigReference

from .harness import Daemon, parse_table, wait_until

pytestmark = pytest.mark.integration

CONF = "listen=80\nmode=test\n"


@pytest.fixture
def configs_cluster(cluster: Daemon) -> Iterator[Daemon]:
    yield cluster
    for svc in cluster.api.services():
        cluster.api.remove_service(svc["ID"])
    for c in cluster.api.configs():
        cluster.api.remove_config(c["ID"])
    for s in cluster.api.secrets():
        cluster.api.remove_secret(s["ID"])


def test_create_ls_inspect_rm(configs_cluster: Daemon) -> None:
    d = configs_cluster
    cid = d.docker("config", "create", "--label", "env=test", "ref-config", "-", input=CONF)
    cid = cid.stdout.strip()
    rows = parse_table(d.docker("config", "ls").stdout)
    assert [r["NAME"] for r in rows] == ["ref-config"]
    info = json.loads(d.docker("config", "inspect", "ref-config").stdout)[0]
    assert info["ID"] == cid
    assert info["Spec"] == {
        "Name": "ref-config",
        "Labels": {"env": "test"},
        "Data": base64.b64encode(CONF.encode()).decode(),
    }
    pretty = d.docker("config", "inspect", "--pretty", "ref-config").stdout
    assert "Data:\nlisten=80\nmode=test\n" in pretty
    assert d.docker("config", "ls", "-q", "--filter", "label=env=test").stdout.split() == [cid]
    assert d.docker("config", "ls", "-q", "--filter", "name=ref-").stdout.split() == [cid]
    d.docker("config", "rm", "ref-config")
    missing = d.docker("config", "inspect", "ref-config", check=False)
    assert "config ref-config not found" in missing.stderr


def test_in_use_and_templates(configs_cluster: Daemon) -> None:
    d = configs_cluster
    d.docker(
        "config", "create", "--template-driver", "golang", "tpl", "-", input="{{.Service.Name}}"
    )
    assert d.api.inspect_config("tpl")["Spec"]["Templating"] == {"Name": "golang"}
    d.docker(
        "service", "create", "--detach", "--name", "cfg-user",
        "--config", "source=tpl,target=/etc/app/conf.yml,mode=0440",
        "busybox", "sleep", "1000",
    )  # fmt: skip
    refs = d.service("cfg-user")["Spec"]["TaskTemplate"]["ContainerSpec"]["Configs"]
    assert refs[0]["File"] == {"Name": "/etc/app/conf.yml", "UID": "0", "GID": "0", "Mode": 0o440}
    rm = d.docker("config", "rm", "tpl", check=False)
    assert (
        "rpc error: code = InvalidArgument desc = config 'tpl' is in use by the following "
        "service: cfg-user" in rm.stderr
    )
    big = d.docker("config", "create", "big", "-", input="x" * (1000 * 1024), check=False)
    assert "config data must be larger than 0 and less than 1024000 bytes" in big.stderr


def test_docker_py(configs_cluster: Daemon) -> None:
    client: docker.DockerClient = configs_cluster.client()
    try:
        c = client.configs.create(name="py-config", data=b"a=1", labels={"k": "v"})
        got = client.configs.get("py-config")
        assert got.id == c.id and got.name == "py-config"
        assert base64.b64decode(got.attrs["Spec"]["Data"]) == b"a=1"
        assert [x.id for x in client.configs.list(filters={"name": "py-"})] == [c.id]
        svc = client.services.create(
            "busybox",
            command=["sleep", "1000"],
            name="py-config-user",
            configs=[ConfigReference(c.id, "py-config", filename="/etc/py.conf")],
        )
        ref = svc.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Configs"][0]
        assert ref["File"]["Name"] == "/etc/py.conf"
        svc.remove()
        c.remove()
        assert client.configs.list() == []
    finally:
        client.close()


def test_templated_config_per_task(configs_cluster: Daemon) -> None:
    import subprocess

    d = configs_cluster
    d.docker(
        "config", "create", "--template-driver", "golang", "app-conf", "-",
        input="name: {{ .Service.Name }}\nslot: {{ .Task.Slot }}\nx: {{ env \"X\" }}\n",
    )  # fmt: skip
    d.docker(
        "service", "create", "--detach", "--name", "tpl-app", "--replicas", "2", "--env", "X=1",
        "--config", "source=app-conf,target=/etc/app/conf.yml,mode=0440",
        "busybox", "sleep", "1000",
    )  # fmt: skip
    pids = d.wait_processes("tpl-app", 2, argv=["sleep", "1000"])
    seen = set()
    for pid in pids.values():
        cat = ["nsenter", "-t", str(pid), "-m", "cat", "/etc/app/conf.yml"]
        out = subprocess.run(cat, capture_output=True, text=True, timeout=10).stdout
        stat = ["nsenter", "-t", str(pid), "-m", "stat", "-c", "%a", "/etc/app/conf.yml"]
        assert subprocess.run(stat, capture_output=True, text=True).stdout.strip() == "440"
        seen.add(out)
    assert seen == {f"name: tpl-app\nslot: {n}\nx: 1\n" for n in (1, 2)}
    import os

    assert not os.path.exists("/etc/app/conf.yml")


def test_default_target_directly_under_root(configs_cluster: Daemon, tmp_path: Path) -> None:
    """Docker's default config target is /<name>: the task gets a root of its own
    (on its tmpfs) where the config sits beside every directory of the host's /."""
    d = configs_cluster
    name = f"shoal-it-{secrets.token_hex(4)}"  # no such file on the host's /
    d.docker("config", "create", name, "-", input="a=1\n")
    d.docker("secret", "create", "beside", "-", input="s-value")
    d.docker(
        "service", "create", "--detach", "--name", "rooted",
        "--config", name, "--secret", "beside", "--workdir", str(tmp_path),
        "busybox", "sh", "-c", f"cat /{name} /run/secrets/beside > seen; exec sleep 1000",
    )  # fmt: skip
    refs = d.service("rooted")["Spec"]["TaskTemplate"]["ContainerSpec"]["Configs"]
    assert refs[0]["File"]["Name"] == name  # the CLI's default: /<name> on Linux
    (pid,) = d.wait_processes("rooted", 1, argv=["sleep", "1000"]).values()
    wait_until(lambda: (tmp_path / "seen").exists(), what="the task to read its files")
    assert (tmp_path / "seen").read_text() == "a=1\ns-value"
    # Seen from the host through the task's root; nothing of it on the host's /.
    assert Path(f"/proc/{pid}/root/{name}").read_text() == "a=1\n"
    assert oct(Path(f"/proc/{pid}/root/{name}").stat().st_mode & 0o777) == oct(0o444)
    assert not os.path.lexists(f"/{name}")
    with open("/proc/self/mounts") as f:
        assert str(d.data_dir) not in f.read()
