"""Secrets through the real docker CLI and docker-py: create, ls (filters), inspect,
rm, update (labels only), Docker's validation messages, in-use refusal, and a payload
never returned."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator

import docker
import pytest
from docker.types import SecretReference

from .harness import Daemon, parse_table

pytestmark = pytest.mark.integration

PAYLOAD = "This is a secret"


@pytest.fixture
def secrets_cluster(cluster: Daemon) -> Iterator[Daemon]:
    """The module's swarm, left without services, secrets or configs after the test."""
    yield cluster
    for svc in cluster.api.services():
        cluster.api.remove_service(svc["ID"])
    for s in cluster.api.secrets():
        cluster.api.remove_secret(s["ID"])
    for c in cluster.api.configs():
        cluster.api.remove_config(c["ID"])


def test_create_ls_inspect_rm(secrets_cluster: Daemon) -> None:
    d = secrets_cluster
    sid = d.docker("secret", "create", "--label", "env=test", "ref-secret", "-", input=PAYLOAD)
    sid2 = d.docker("secret", "create", "ref-secret-unused", "-", input="other")
    id1, id2 = sid.stdout.strip(), sid2.stdout.strip()
    assert len(id1) == 25

    rows = parse_table(d.docker("secret", "ls").stdout)
    assert {r["NAME"] for r in rows} == {"ref-secret", "ref-secret-unused"}
    # `name` matches a prefix, `id` too, `label` by key or key=value
    by_name = d.docker("secret", "ls", "-q", "--filter", "name=ref-secret").stdout.split()
    assert set(by_name) == {id1, id2}
    assert d.docker("secret", "ls", "-q", "--filter", f"id={id2[:6]}").stdout.split() == [id2]
    assert d.docker("secret", "ls", "-q", "--filter", "label=env").stdout.split() == [id1]
    assert d.docker("secret", "ls", "-q", "--filter", "label=env=prod").stdout.split() == []

    info = json.loads(d.docker("secret", "inspect", "ref-secret").stdout)[0]
    assert info["ID"] == id1
    assert info["Spec"] == {"Name": "ref-secret", "Labels": {"env": "test"}}
    assert "Data" not in json.dumps(info)
    pretty = d.docker("secret", "inspect", "--pretty", "ref-secret").stdout
    assert "Name:              ref-secret" in pretty and " - env=test" in pretty

    # the payload comes back from no endpoint
    for path in ("/secrets", f"/secrets/{id1}", "/secrets?filters={}"):
        body = d.http("GET", path).body
        assert PAYLOAD.encode() not in body
        assert base64.b64encode(PAYLOAD.encode()) not in body

    d.docker("secret", "rm", "ref-secret", "ref-secret-unused")
    assert d.docker("secret", "ls", "-q").stdout.split() == []
    missing = d.docker("secret", "inspect", "ref-secret", check=False)
    assert missing.returncode == 1
    assert "secret ref-secret not found" in missing.stderr


def test_docker_messages(secrets_cluster: Daemon) -> None:
    d = secrets_cluster
    bad = d.docker("secret", "create", "bad-", "-", input="x", check=False)
    assert bad.returncode == 1
    assert (
        "invalid name, only 64 [a-zA-Z0-9-_.] characters allowed, and the start and end "
        "character must be [a-zA-Z0-9]" in bad.stderr
    )
    big = d.docker("secret", "create", "big", "-", input="x" * (500 * 1024), check=False)
    assert big.returncode == 1
    assert "secret data must be larger than 0 and less than 512000 bytes" in big.stderr
    d.docker("secret", "create", "dup", "-", input="x")
    dup = d.docker("secret", "create", "dup", "-", input="y", check=False)
    assert "rpc error: code = AlreadyExists desc = secret dup already exists" in dup.stderr
    driver = d.docker("secret", "create", "--driver", "vault", "drv", check=False)
    assert driver.returncode == 1 and "secret driver 'vault' is not supported" in driver.stderr


def test_in_use_refused_and_service_references(secrets_cluster: Daemon) -> None:
    d = secrets_cluster
    d.docker("secret", "create", "used", "-", input=PAYLOAD)
    d.docker(
        "service", "create", "--detach", "--name", "user", "--secret", "used",
        "busybox", "sleep", "1000",
    )  # fmt: skip
    refs = d.service("user")["Spec"]["TaskTemplate"]["ContainerSpec"]["Secrets"]
    assert refs == [
        {
            "File": {"Name": "used", "UID": "0", "GID": "0", "Mode": 292},
            "SecretID": d.api.inspect_secret("used")["ID"],
            "SecretName": "used",
        }
    ]
    rm = d.docker("secret", "rm", "used", check=False)
    assert rm.returncode == 1
    assert (
        "rpc error: code = InvalidArgument desc = secret 'used' is in use by the "
        "following service: user" in rm.stderr
    )
    unknown = d.docker(
        "service", "create", "--detach", "--name", "u2", "--secret", "nope",
        "busybox", "sleep", "1000",
    check=False)  # fmt: skip
    assert unknown.returncode == 1 and "secret not found: nope" in unknown.stderr


def test_update_changes_labels_only(secrets_cluster: Daemon) -> None:
    d = secrets_cluster
    d.docker("secret", "create", "lab", "-", input=PAYLOAD)
    s = d.api.inspect_secret("lab")
    spec = {"Name": "lab", "Labels": {"a": "1"}}
    r = d.http("POST", f"/secrets/{s['ID']}/update?version={s['Version']['Index']}", spec)
    assert r.status == 200, r
    s2 = d.api.inspect_secret("lab")
    assert s2["Spec"]["Labels"] == {"a": "1"}
    other = {"Name": "lab", "Data": base64.b64encode(b"changed").decode()}
    r = d.http("POST", f"/secrets/{s['ID']}/update?version={s2['Version']['Index']}", other)
    assert r.status == 400
    assert r.json() == {
        "message": "rpc error: code = InvalidArgument desc = only updates to Labels are allowed"
    }
    assert b"changed" not in r.body and b"Y2hhbmdlZA" not in r.body


def test_docker_py(secrets_cluster: Daemon) -> None:
    client: docker.DockerClient = secrets_cluster.client()
    try:
        s = client.secrets.create(name="py-secret", data=b"py payload", labels={"x": "y"})
        got = client.secrets.get("py-secret")
        assert got.id == s.id and got.name == "py-secret"
        assert [x.id for x in client.secrets.list(filters={"label": "x=y"})] == [s.id]
        svc = client.services.create(
            "busybox",
            command=["sleep", "1000"],
            name="py-secret-user",
            secrets=[SecretReference(s.id, "py-secret", filename="key", mode=0o400)],
        )
        ref = svc.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Secrets"][0]
        assert ref["File"] == {"Name": "key", "UID": "0", "GID": "0", "Mode": 0o400}
        with pytest.raises(docker.errors.APIError, match="is in use by the following service"):
            s.remove()
        svc.remove()
        s.remove()
        with pytest.raises(docker.errors.NotFound):
            client.secrets.get(s.id)
        bogus = SecretReference("0" * 25, "bogus")
        with pytest.raises(docker.errors.APIError, match="secret not found: bogus"):
            client.services.create(
                "busybox", command=["sleep", "1"], name="py-bogus", secrets=[bogus]
            )
    finally:
        client.close()


def _in_task(pid: int, *argv: str) -> str:
    """Run argv in the task's mount and pid namespaces (as `docker exec` would in a
    container: the task's /proc is its pid namespace's, where only a process of that
    namespace finds /proc/self)."""
    import subprocess

    out = subprocess.run(
        ["nsenter", "-t", str(pid), "-m", "-p", *argv], capture_output=True, text=True, timeout=10
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_talks_example(secrets_cluster: Daemon) -> None:
    d = secrets_cluster
    d.docker("secret", "create", "my_secret", "-", input="This is a secret\n")
    d.docker(
        "service", "create", "--detach", "--name", "redis", "--secret", "my_secret",
        "busybox", "sleep", "1000",
    )  # fmt: skip
    (pid,) = d.wait_processes("redis", 1, argv=["sleep", "1000"]).values()
    assert _in_task(pid, "cat", "/run/secrets/my_secret") == "This is a secret\n"
    # read-only, and nothing of it on the host's /run
    assert "ro," in _in_task(pid, "grep", "/run/secrets", "/proc/self/mounts")
    import os

    assert not os.path.exists("/run/secrets/my_secret")
    # the task's tmpfs is held by its namespace alone: no mount left on the host
    with open("/proc/self/mounts") as f:
        assert str(d.data_dir) not in f.read()


def test_a_task_of_another_user_reads_its_secret(secrets_cluster: Daemon) -> None:
    """Docker's defaults (mode 0444, /run/secrets 0755): a task running as `nobody`
    reads its secret; one it was given mode 0400 for uid 0 it cannot."""
    d = secrets_cluster
    d.docker("secret", "create", "shared_secret", "-", input="for everyone\n")
    d.docker(
        "service", "create", "--detach", "--name", "nobody", "--user", "65534:65534",
        "--secret", "shared_secret", "--secret", "source=shared_secret,target=root_only,mode=0400",
        "busybox", "sleep", "1000",
    )  # fmt: skip
    (pid,) = d.wait_processes("nobody", 1, argv=["sleep", "1000"]).values()
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    assert _in_task(pid, *as_nobody, "cat", "/run/secrets/shared_secret") == "for everyone\n"
    out = _in_task(pid, "stat", "-c", "%a", "/run/secrets", "/run")
    assert out.split() == ["755", "755"], out
    denied = subprocess.run(
        ["nsenter", "-t", str(pid), "-m", *as_nobody, "cat", "/run/secrets/root_only"],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied
    d.docker("service", "rm", "nobody")


def test_secret_rotation(secrets_cluster: Daemon) -> None:
    d = secrets_cluster
    d.docker("secret", "create", "old", "-", input="old-value")
    d.docker("secret", "create", "new", "-", input="new-value")
    d.docker(
        "service", "create", "--detach", "--name", "app",
        "--secret", "source=old,target=app_key,mode=0400",
        "busybox", "sleep", "1000",
    )  # fmt: skip
    (pid,) = d.wait_processes("app", 1, argv=["sleep", "1000"]).values()
    assert _in_task(pid, "cat", "/run/secrets/app_key") == "old-value"
    d.docker(
        "service", "update", "--detach", "--secret-rm", "old",
        "--secret-add", "source=new,target=app_key", "app",
    )  # fmt: skip
    from .harness import wait_until

    def moved() -> bool:
        pids = d.service_pids("app")
        return len(pids) == 1 and pid not in pids.values()

    wait_until(moved, what="the task replaced")
    (new_pid,) = d.service_pids("app").values()
    assert _in_task(new_pid, "cat", "/run/secrets/app_key") == "new-value"
    d.docker("secret", "rm", "old")
