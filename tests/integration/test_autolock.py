"""Encryption at rest and autolock, through the real docker CLI: the store holds no
secret, config or registry credential in clear; with autolock a manager restarted
after `kill -9` serves nothing until `docker swarm unlock` with the right key."""

from __future__ import annotations

import base64
import json

import pytest

from .harness import Daemon, DaemonFactory, swarm_init_args, wait_until

pytestmark = pytest.mark.integration

LOCKED = (
    "Swarm is encrypted and needs to be unlocked before it can be used. "
    'Please use "docker swarm unlock" to unlock it.'
)


def _disk_bytes(d: Daemon) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(d.data_dir.rglob("*")) if p.is_file())


def test_store_holds_nothing_in_clear(daemon_factory: DaemonFactory) -> None:
    d = daemon_factory()
    d.docker(*swarm_init_args())
    secret, config = b"s3cret-at-rest-4711", b"config-at-rest-4712"
    auth = base64.b64encode(json.dumps({"username": "u", "password": "pw-4713"}).encode())
    d.docker("secret", "create", "rest", "-", input=secret.decode())
    d.docker("config", "create", "restc", "-", input=config.decode())
    r = d.http(
        "POST",
        "/v1.41/services/create",
        {
            "Name": "authd",
            "TaskTemplate": {"ContainerSpec": {"Image": "busybox", "Command": ["true"]}},
        },
        headers={"X-Registry-Auth": auth.decode()},
    )
    assert r.status == 201, r
    d.stop()
    disk = _disk_bytes(d)
    for needle in (secret, config, b"pw-4713", auth, base64.b64encode(secret)):
        assert needle not in disk
    d.start()
    assert d.api.inspect_secret("rest")["Spec"]["Name"] == "rest"
    assert base64.b64decode(d.api.inspect_config("restc")["Spec"]["Data"]) == config


def test_autolock_kill9_unlock_rotate(daemon_factory: DaemonFactory) -> None:
    d = daemon_factory()
    out = d.docker(*swarm_init_args(), "--autolock").stdout
    key = d.docker("swarm", "unlock-key", "-q").stdout.strip()
    assert key.startswith("SWMKEY-1-") and key in out
    # the node's and the root CA's private keys are sealed by the KEK on disk
    certs = d.data_dir / "swarm" / "certificates"
    for name in ("swarm-node.key", "swarm-root-ca.key"):
        assert b"ENCRYPTED PRIVATE KEY" in (certs / name).read_bytes()
    d.docker("secret", "create", "locked-secret", "-", input="payload-4714")

    d.kill9()
    d.start()
    ls = d.docker("service", "ls", check=False)
    assert ls.returncode == 1 and LOCKED in ls.stderr
    assert d.docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip() == "locked"
    assert b"payload-4714" not in _disk_bytes(d)

    wrong = d.docker("swarm", "unlock", input="SWMKEY-1-" + "A" * 43 + "\n", check=False)
    assert wrong.returncode == 1
    assert "swarm could not be unlocked: invalid key provided" in wrong.stderr
    d.docker("swarm", "unlock", input=key + "\n")
    wait_until(lambda: d.docker("service", "ls", check=False).returncode == 0, what="unlocked")
    assert d.api.inspect_secret("locked-secret")["Spec"]["Name"] == "locked-secret"

    new = d.docker("swarm", "unlock-key", "-q", "--rotate").stdout.strip()
    assert new.startswith("SWMKEY-1-") and new != key
    d.kill9()
    d.start()
    old = d.docker("swarm", "unlock", input=key + "\n", check=False)
    assert "invalid key provided" in old.stderr
    d.docker("swarm", "unlock", input=new + "\n")
    wait_until(lambda: d.docker("service", "ls", check=False).returncode == 0, what="unlocked")

    # autolock off: a restart needs no key
    d.docker("swarm", "update", "--autolock=false")
    assert d.docker("swarm", "unlock-key", check=False).returncode == 1
    d.kill9()
    d.start()
    d.docker("service", "ls")
