"""`shoal stack deploy`'s Compose conversion against what the docker CLI sent for the
same file (tests/fixtures/docker-cli-transcripts/082-stack-deploy.json), and the
conversion of the values Compose writes as text (durations, sizes, CPUs, ports)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shoal.cli.stack.compose import ComposeError, parse
from shoal.cli.stack.convert import plan, tagged
from shoal.cli.stack.values import cpus, duration, memory, port

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "docker-cli-transcripts"


def _sent(name: str) -> list[dict[str, Any]]:
    return [e for e in json.loads((FIXTURES / name).read_text()) if e["method"] == "POST"]


def test_reference_stack_converts_to_what_the_cli_sent(tmp_path: Path) -> None:
    (tmp_path / "stack_secret.txt").write_text("not the recorded payload")
    (tmp_path / "app.conf").write_text("key=value\n")
    f = parse((FIXTURES / "stack-docker-compose.yml").read_text(), tmp_path, env={})
    p = plan("ref-stack", f)
    posts = _sent("082-stack-deploy.json")
    by_path: dict[str, list[dict[str, Any]]] = {}
    for e in posts:
        by_path.setdefault(e["path"].removeprefix("/v1.41"), []).append(e)

    [net] = by_path["/networks/create"]
    body = p.networks["ref-stack_backend"]
    assert body is not None
    sent = net["request_body"]
    # What the CLI sends beyond ours is Go's zero values.
    assert {k: v for k, v in sent.items() if k not in body} == {
        "Scope": "",
        "IPAM": None,
        "Internal": False,
        "Ingress": False,
        "ConfigOnly": False,
        "ConfigFrom": None,
        "Options": None,
    }
    assert {k: sent[k] for k in body} == body

    [secret] = p.secrets
    assert secret.spec is not None
    sent_secret = by_path["/secrets/create"][0]["request_body"]
    assert {k: secret.spec[k] for k in ("Name", "Labels")} == {
        k: sent_secret[k] for k in ("Name", "Labels")
    }
    [config] = p.configs
    assert config.spec == by_path["/configs/create"][0]["request_body"]

    ids = {
        "SecretID": by_path["/secrets/create"][0]["response_body"]["ID"],
        "ConfigID": by_path["/configs/create"][0]["response_body"]["ID"],
    }
    for e in by_path["/services/create"]:
        sent = e["request_body"]
        ours = p.services[sent["Name"]]
        cs = ours["TaskTemplate"]["ContainerSpec"]
        for key, id_key in (("Secrets", "SecretID"), ("Configs", "ConfigID")):
            for ref in cs.get(key, []):
                ref[id_key] = ids[id_key]
        assert ours == sent


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("0", 0),
        ("10s", 10**10),
        ("1m30s", 90 * 10**9),
        ("300ms", 3 * 10**8),
        ("1.5h", 5400 * 10**9),
    ],
)
def test_duration(text: str, ns: int) -> None:
    assert duration(text, "x") == ns


@pytest.mark.parametrize("text", ["5", "2 s", "s", "", "1d", "10s5"])
def test_bad_duration(text: str) -> None:
    with pytest.raises(ComposeError, match="^a.b: invalid duration"):
        duration(text, "a.b")


@pytest.mark.parametrize(
    ("text", "n"),
    [("32M", 32 << 20), ("1g", 1 << 30), ("512k", 512 << 10), ("100b", 100), (64, 64)],
)
def test_memory(text: str | int, n: int) -> None:
    assert memory(text, "x") == n


def test_cpus_and_tags() -> None:
    assert cpus("0.25", "x") == 250_000_000
    assert cpus(2, "x") == 2_000_000_000
    with pytest.raises(ComposeError, match="x: invalid number of CPUs"):
        cpus("lots", "x")
    assert tagged("busybox") == "busybox:latest"
    assert tagged("localhost:5000/app") == "localhost:5000/app:latest"
    assert tagged("ref/busybox:1") == "ref/busybox:1"
    assert tagged("app@sha256:abc") == "app@sha256:abc"


def test_ports() -> None:
    assert port("8090:80", "p") == {
        "Protocol": "tcp",
        "TargetPort": 80,
        "PublishedPort": 8090,
        "PublishMode": "ingress",
    }
    assert port(53, "p") == {"Protocol": "tcp", "TargetPort": 53, "PublishMode": "ingress"}
    assert port("53/udp", "p")["Protocol"] == "udp"
    with pytest.raises(ComposeError, match="p: invalid port"):
        port("127.0.0.1:80:80", "p")
    with pytest.raises(ComposeError, match="p: port 70000 out of range"):
        port("70000:80", "p")


def _plan(text: str, tmp_path: Path) -> Any:
    return plan("st", parse(text, tmp_path, env={}))


def test_default_network_external_objects_and_long_syntax(tmp_path: Path) -> None:
    p = _plan(
        """
services:
  a:
    image: busybox
    ports: [{target: 80, published: 8080, mode: host}]
    secrets: [{source: token, target: tok, mode: 0400}]
  b:
    image: busybox
    networks: [outside]
    healthcheck: {test: "true", interval: 2s}
networks:
  outside: {external: true, name: shared}
secrets:
  token: {external: true}
""",
        tmp_path,
    )
    assert p.networks == {
        "st_default": {
            "Name": "st_default",
            "Driver": "overlay",
            "Labels": {"com.docker.stack.namespace": "st"},
            "CheckDuplicate": True,
        },
        "shared": None,
    }
    a = p.services["st_a"]
    assert a["TaskTemplate"]["Networks"] == [{"Target": "st_default", "Aliases": ["a"]}]
    assert a["EndpointSpec"]["Ports"] == [
        {"Protocol": "tcp", "TargetPort": 80, "PublishMode": "host", "PublishedPort": 8080}
    ]
    [ref] = a["TaskTemplate"]["ContainerSpec"]["Secrets"]
    assert ref == {
        "File": {"Name": "tok", "UID": "0", "GID": "0", "Mode": 0o400},
        "SecretName": "token",
    }
    assert [s.spec for s in p.secrets] == [None]
    b = p.services["st_b"]["TaskTemplate"]
    assert b["Networks"] == [{"Target": "shared", "Aliases": ["b"]}]
    assert b["ContainerSpec"]["Healthcheck"] == {
        "Test": ["CMD-SHELL", "true"],
        "Interval": 2 * 10**9,
    }


def test_environment_and_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("C", raising=False)
    monkeypatch.setenv("X", "from-shell")
    p = _plan(
        """
services:
  a:
    image: busybox
    environment: [B=2, A=1, B=3, C]
    restart: on-failure:4
  b:
    image: busybox
    environment: {Z: 1, Y: true, X: null}
    restart: unless-stopped
  c:
    image: busybox
    restart: "no"
""",
        tmp_path,
    )
    a = p.services["st_a"]["TaskTemplate"]
    assert a["ContainerSpec"]["Env"] == ["A=1", "B=3"]  # C unset in the deploying shell
    assert a["RestartPolicy"] == {"Condition": "on-failure", "MaxAttempts": 4}
    b = p.services["st_b"]["TaskTemplate"]
    assert b["ContainerSpec"]["Env"] == ["X=from-shell", "Y=true", "Z=1"]
    assert b["RestartPolicy"] == {"Condition": "any"}
    assert "RestartPolicy" not in p.services["st_c"]["TaskTemplate"]
    with pytest.raises(ComposeError, match="^services.a.restart: invalid restart policy"):
        _plan("services:\n  a: {image: busybox, restart: sometimes}\n", tmp_path)


def test_generic_resources(tmp_path: Path) -> None:
    text = """
services:
  a:
    image: busybox
    deploy:
      resources:
        reservations:
          generic_resources:
            - discrete_resource_spec: {kind: gpu, value: 2}
"""
    assert _plan(text, tmp_path).services["st_a"]["TaskTemplate"]["Resources"] == {
        "Reservations": {
            "GenericResources": [{"DiscreteResourceSpec": {"Kind": "gpu", "Value": 2}}]
        }
    }
    with pytest.raises(
        ComposeError, match=r"generic_resources\[0\].discrete_resource_spec.value: "
    ):
        _plan(text.replace("value: 2", "value: two"), tmp_path)


def test_only_used_networks(tmp_path: Path) -> None:
    p = _plan(
        "services:\n  a: {image: busybox, networks: [front]}\n"
        "networks:\n  front: {}\n  unused: {}\n  gone: {external: true}\n",
        tmp_path,
    )
    assert list(p.networks) == ["st_front"]
