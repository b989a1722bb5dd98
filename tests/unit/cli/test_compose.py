"""Reading and checking a Compose file: every refusal names the path of the bad key."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.cli.stack.compose import ComposeError, interpolate, parse
from shoal.cli.stack.convert import plan

GOOD = """
version: "3.8"
services:
  web:
    image: busybox
    deploy:
      replicas: 2
      placement:
        constraints: [node.role == manager]
"""


def refuse(text: str, tmp_path: Path, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ComposeError) as info:
        plan("st", parse(text, tmp_path, env=env or {}))
    return str(info.value)


def test_good_file(tmp_path: Path) -> None:
    f = parse(GOOD, tmp_path, env={})
    deploy = f.services["web"].deploy
    assert deploy is not None and deploy.replicas == 2


@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        (
            "replicas: 2",
            "replicas: two",
            "services.web.deploy.replicas: expected an integer, got a string",
        ),
        (
            "replicas: 2",
            "replicas: 2.5",
            "services.web.deploy.replicas: expected an integer, got a number",
        ),
        (
            "replicas: 2",
            "replicas: true",
            "services.web.deploy.replicas: expected an integer, got a boolean",
        ),
        ("replicas: 2", "replicas: -1", "services.web.deploy.replicas: expected an integer >= 0"),
        (
            "replicas: 2",
            "update_config: {max_failure_ratio: 2}",
            "services.web.deploy.update_config.max_failure_ratio: expected a number <= 1.0",
        ),
        (
            "replicas: 2",
            "replica: 2",
            "services.web.deploy.replica: unknown key (known: endpoint_mode, ",
        ),
        (
            "replicas: 2",
            "mode: replicatd",
            "services.web.deploy.mode: invalid value 'replicatd' (expected one of: replicated, global, replicated-job, global-job)",
        ),
        (
            "constraints: [",
            "constraints: [1, ",
            "services.web.deploy.placement.constraints[0]: expected a string, got an integer",
        ),
        (
            "constraints: [",
            "constraint: [",
            "services.web.deploy.placement.constraint: unknown key (known: constraints, ",
        ),
        ("image: busybox", "imag: busybox", "services.web.imag: unknown key"),
        ("image: busybox", "command: [sleep]", "services.web.image: required key missing"),
        ('version: "3.8"', 'version: "2.4"', "version: unsupported Compose file version '2.4'"),
        (
            'version: "3.8"',
            "volume: {}",
            "volume: unknown key (known: configs, networks, secrets, services, version, volumes)",
        ),
        (
            "    deploy:",
            "    deploy: 3\n    x:",
            "services.web.deploy: expected a mapping, got an integer",
        ),
        (
            "    deploy:",
            "    networks: [back]\n    deploy:",
            "services.web.networks.back: network is not declared",
        ),
        (
            "    deploy:",
            "    secrets: [tok]\n    deploy:",
            "services.web.secrets[0]: secret 'tok' is not declared",
        ),
        (
            "    deploy:",
            "    ports: ['1:2:3']\n    deploy:",
            "services.web.ports[0]: invalid port '1:2:3'",
        ),
        (
            "    deploy:",
            "    networks: {n: {alias: [x]}}\n    deploy:",
            "services.web.networks.n.alias: unknown key (known: aliases)",
        ),
        (
            "    deploy:",
            "    stop_grace_period: 1 m\n    deploy:",
            "services.web.stop_grace_period: invalid duration '1 m'",
        ),
        (
            "    deploy:",
            "    healthcheck: {interval: x}\n    deploy:",
            "services.web.healthcheck.interval: invalid duration",
        ),
        (
            "      replicas: 2",
            "      mode: global\n      replicas: 2",
            "services.web.deploy.replicas: not allowed with mode global",
        ),
        (
            "      replicas: 2",
            "      resources: {limits: {cpus: lots}}",
            "services.web.deploy.resources.limits.cpus: invalid number of CPUs",
        ),
        (
            "      replicas: 2",
            "      restart_policy: {condition: always}",
            "services.web.deploy.restart_policy.condition: invalid value 'always' (expected one of: none, on-failure, any)",
        ),
        (
            "      replicas: 2",
            "      update_config: {delay: 5}",
            "services.web.deploy.update_config.delay: expected a string, got an integer",
        ),
    ],
)
def test_refused_with_the_path(old: str, new: str, error: str, tmp_path: Path) -> None:
    assert old in GOOD
    assert refuse(GOOD.replace(old, new, 1), tmp_path).startswith(error)


def test_top_level_sections(tmp_path: Path) -> None:
    base = GOOD + "networks:\n  back:\n    driver: overlay\n"
    assert refuse(base + "    attachable: yes please\n", tmp_path).startswith(
        "networks.back.attachable: expected a boolean, got a string"
    )
    assert refuse(GOOD + "secrets:\n  tok: {}\n", tmp_path) == (
        "secrets.tok: needs `file:` (or `external: true`)"
    )
    assert refuse(GOOD + "configs:\n  c: {file: ./nope}\n", tmp_path).startswith(
        "configs.c.file: cannot read"
    )
    assert refuse(GOOD + "volumes:\n  data: {drive: x}\n", tmp_path).startswith(
        "volumes.data.drive: unknown key"
    )
    web = "    ulimits: {nofile: {soft: 1}}\n    deploy:"
    assert refuse(GOOD.replace("    deploy:", web), tmp_path) == (
        "services.web.ulimits.nofile.hard: required key missing"
    )
    web = "    volumes: [data:/data]\n    deploy:"
    assert refuse(GOOD.replace("    deploy:", web), tmp_path) == (
        "services.web.volumes[0]: volume 'data' is not declared"
    )
    web = "    volumes: ['/a:/b:z']\n    deploy:"
    assert refuse(GOOD.replace("    deploy:", web), tmp_path).startswith(
        "services.web.volumes[0]: invalid volume '/a:/b:z'"
    )
    assert refuse("services: [a]\n", tmp_path) == "services: expected a mapping, got a list"
    assert refuse("services: {}\n", tmp_path) == "services: at least one service is required"
    assert refuse("services:\n  a: {image: [x\n", tmp_path).startswith("not valid YAML")


def test_extensions_ignored_keys_and_base60(tmp_path: Path) -> None:
    f = parse(
        """
x-common: &c {image: busybox}
services:
  web:
    <<: *c
    x-note: hello
    build: .
    depends_on: [db]
    ports: [22:22]
""",
        tmp_path,
        env={},
    )
    assert f.ignored == ["services.web.build", "services.web.depends_on"]
    assert f.services["web"].ports == ["22:22"]  # not YAML 1.1's base-60 1342


def test_interpolation(tmp_path: Path) -> None:
    env = {"TAG": "1", "EMPTY": ""}
    assert interpolate("a:${TAG}", env, "p") == "a:1"
    assert interpolate("$TAG-$$TAG", env, "p") == "1-$TAG"
    assert interpolate("${MISSING:-d} ${EMPTY:-e} ${EMPTY-f} ${MISSING}", env, "p") == "d e  "
    with pytest.raises(ComposeError, match="^p: required variable EMPTY"):
        interpolate("${EMPTY:?set it}", env, "p")
    text = "services:\n  web:\n    image: busybox:${TAG}\n    deploy: {replicas: 2}\n"
    assert parse(text, tmp_path, env=env).services["web"].image == "busybox:1"
    assert refuse(text.replace("${TAG}", "${TAG:?}"), tmp_path).startswith(
        "services.web.image: required variable TAG"
    )


def test_interpolated_numbers_are_cast(tmp_path: Path) -> None:
    text = """
services:
  web:
    image: busybox:${TAG}
    environment: {A: "${TAG}"}
    deploy:
      replicas: ${N}
      placement: {max_replicas_per_node: "${N}"}
"""
    f = parse(text, tmp_path, env={"N": "3", "TAG": "1"})
    deploy = f.services["web"].deploy
    assert deploy is not None and deploy.replicas == 3
    assert deploy.placement is not None and deploy.placement.max_replicas_per_node == 3
    assert f.services["web"].image == "busybox:1"
    assert f.services["web"].environment == {"A": "1"}  # not a key that is cast
    assert refuse(text, tmp_path, env={"N": "three", "TAG": "1"}) == (
        "services.web.deploy.replicas: expected an integer, got a string"
    )


def test_load_from_stdin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from shoal.cli.stack.compose import load

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO(GOOD))
    f = load(Path("-"), env={})
    assert f.base_dir == tmp_path and list(f.services) == ["web"]
    with pytest.raises(ComposeError, match="^cannot read"):
        load(tmp_path / "missing.yml", env={})
