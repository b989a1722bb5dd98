"""Errors as dockerd gives them (status code and message), and none of them changes
anything: each test compares the services (IDs and versions) before and after."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from .harness import Daemon, remove_all_services, wait_until

pytestmark = pytest.mark.integration

SLEEP = ("sleep", "1000")
MINIMAL_SPEC = {"TaskTemplate": {"ContainerSpec": {"Image": "busybox", "Args": list(SLEEP)}}}


@pytest.fixture(scope="module")
def existing(swarm: Daemon) -> Iterator[Daemon]:
    """A daemon with a replicated service `taken` and a global service `everywhere`."""
    swarm.create_service("taken", "busybox", *SLEEP)
    swarm.create_service("everywhere", "--mode", "global", "busybox", *SLEEP)
    swarm.wait_processes("taken", 1, argv=SLEEP)
    swarm.wait_processes("everywhere", 1, argv=SLEEP)
    yield swarm
    remove_all_services(swarm)


def snapshot(daemon: Daemon) -> dict[str, tuple[str, int]]:
    """{name: (ID, Version.Index)} of every service, once two reads agree."""

    def read() -> dict[str, tuple[str, int]]:
        return {s["Spec"]["Name"]: (s["ID"], s["Version"]["Index"]) for s in daemon.api.services()}

    def stable() -> dict[str, tuple[str, int]] | None:
        first = read()
        return first if first == read() else None

    return wait_until(stable, what="a stable list of services")


def message(body: bytes) -> str:
    decoded = json.loads(body)
    assert isinstance(decoded, dict) and isinstance(decoded.get("message"), str), decoded
    return decoded["message"]


def test_duplicate_name_is_a_409(existing: Daemon) -> None:
    before = snapshot(existing)
    cli = existing.docker(
        "service", "create", "--detach", "--name", "taken", "busybox", *SLEEP, check=False
    )
    assert cli.returncode == 1
    assert (
        "Error response from daemon: rpc error: code = AlreadyExists desc = "
        "name conflicts with an existing object: service taken already exists"
    ) in cli.stderr, cli.stderr

    raw = existing.http("POST", "/v1.41/services/create", {"Name": "taken", **MINIMAL_SPEC})
    assert raw.status == 409, raw
    assert "name conflicts with an existing object" in message(raw.body)
    assert snapshot(existing) == before


def test_missing_service(existing: Daemon) -> None:
    before = snapshot(existing)
    inspect = existing.docker("service", "inspect", "nope", check=False)
    assert inspect.returncode == 1
    assert inspect.stdout.strip() == "[]", inspect.stdout
    assert "no such service: nope" in inspect.stderr, inspect.stderr

    rm = existing.docker("service", "rm", "nope", check=False)
    assert rm.returncode == 1
    assert "Error response from daemon: service nope not found" in rm.stderr, rm.stderr

    raw = existing.http("GET", "/v1.41/services/nope")
    assert raw.status == 404, raw
    assert message(raw.body) == "service nope not found"
    assert snapshot(existing) == before


def test_update_with_a_stale_version(existing: Daemon) -> None:
    current = existing.service("taken")
    stale = current["Version"]["Index"]
    spec: dict[str, Any] = current["Spec"]

    first = {**spec, "Labels": {**(spec.get("Labels") or {}), "round": "1"}}
    ok = existing.http("POST", f"/v1.41/services/{current['ID']}/update?version={stale}", first)
    assert ok.status == 200, ok
    after_first = snapshot(existing)
    assert after_first["taken"][1] > stale

    second = {**spec, "Labels": {**(spec.get("Labels") or {}), "round": "2"}}
    refused = existing.http(
        "POST", f"/v1.41/services/{current['ID']}/update?version={stale}", second
    )
    assert refused.status == 500, refused
    assert message(refused.body) == "rpc error: code = Unknown desc = update out of sequence"

    assert snapshot(existing) == after_first
    assert existing.service("taken")["Spec"]["Labels"].get("round") == "1"


def test_invalid_constraint_is_refused(existing: Daemon) -> None:
    before = snapshot(existing)
    cli = existing.docker(
        "service",
        "create",
        "--detach",
        "--name",
        "badc",
        "--constraint",
        "node.role=manager",
        "busybox",
        *SLEEP,
        check=False,
    )
    assert cli.returncode == 1
    assert "constraint expected one operator from ==, !=" in cli.stderr, cli.stderr

    spec = {"Name": "badc", **MINIMAL_SPEC}
    spec["TaskTemplate"] = {
        **MINIMAL_SPEC["TaskTemplate"],
        "Placement": {"Constraints": ["node.role=manager"]},
    }
    raw = existing.http("POST", "/v1.41/services/create", spec)
    assert raw.status == 500, raw
    assert "constraint expected one operator from ==, !=" in message(raw.body)

    update = existing.docker(
        "service",
        "update",
        "--detach",
        "--constraint-add",
        "node.role=manager",
        "taken",
        check=False,
    )
    assert update.returncode == 1
    assert "constraint expected one operator from ==, !=" in update.stderr, update.stderr
    assert snapshot(existing) == before


def test_scaling_a_global_service_is_refused(existing: Daemon) -> None:
    before = snapshot(existing)
    scale = existing.docker("service", "scale", "everywhere=2", check=False)
    assert scale.returncode == 1
    assert "scale can only be used with replicated or replicated-job mode" in scale.stderr, (
        scale.stderr
    )
    replicas = existing.docker(
        "service", "update", "--detach", "--replicas", "2", "everywhere", check=False
    )
    assert replicas.returncode == 1
    assert "replicas can only be used with replicated mode" in replicas.stderr, replicas.stderr
    assert snapshot(existing) == before
    assert len(existing.tasks("everywhere")) == 1


def test_malformed_json_is_a_400(existing: Daemon) -> None:
    before = snapshot(existing)
    headers = {"Content-Type": "application/json"}
    raw = existing.http(
        "POST", "/v1.41/services/create", '{"Name": "broken", "TaskTemplate": ', headers
    )
    assert raw.status == 400, raw
    assert raw.headers.get("content-type", "").startswith("application/json"), raw.headers
    assert message(raw.body)

    taken = existing.service("taken")
    path = f"/v1.41/services/{taken['ID']}/update?version={taken['Version']['Index']}"
    update = existing.http("POST", path, "{not json", headers)
    assert update.status == 400, update
    assert message(update.body)
    assert snapshot(existing) == before
