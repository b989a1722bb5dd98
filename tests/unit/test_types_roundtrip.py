"""The API types against what dockerd and the docker CLI really exchange.

Every service create/update body the docker CLI sent, and every service, node and task
dockerd answered with, in the recorded transcripts
(`tests/fixtures/docker-cli-transcripts`, copied from the shared reference), is decoded into shoal's msgspec types
and encoded again: the JSON must come back exactly as it was. Read-modify-write clients
(`docker service update`, `docker node update`) send back what they read, so a field
that is lost or renamed here is lost or renamed in the cluster.

Left out on purpose:
* bodies the recorder compacted (`response_body_compacted`): they are cut down to what
  the progress monitor reads, not what dockerd sent;
* Task fields shoal does not model yet, listed in UNMODELED_TASK_FIELDS.

shoal's own fields (spec version, service name, registry credentials) are no fields of
these types: they live beside them (shoal/types/meta.py), so nothing is stripped here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

from shoal.types.meta import ServiceMeta, TaskMeta
from shoal.types.node import Node
from shoal.types.service import ContainerSpec, Placement, Service, ServiceMode, ServiceSpec
from shoal.types.task import Task

TRANSCRIPTS = Path(__file__).resolve().parents[1] / "fixtures" / "docker-cli-transcripts"

# Task fields dockerd sends that shoal does not model yet (dropped on decode):
# the networks a task is attached to with its addresses, the job iteration of job
# tasks, and generic resources (GPUs...) assigned to it.
UNMODELED_TASK_FIELDS = ("AssignedGenericResources",)

_SERVICE_UPDATE = re.compile(r"/v1\.41/services/[^/]+/update")
_SERVICE_GET = re.compile(r"/v1\.41/services/[^/]+")


@dataclass(frozen=True)
class Case:
    """One JSON body of one exchange, and the shoal type it must decode as."""

    id: str
    kind: str  # "spec", "service", "nodes" or "tasks"
    body: Any


def _classify(exchange: dict[str, Any]) -> tuple[str, Any] | None:
    method, path, status = exchange["method"], exchange["path"], exchange["status"]
    if method == "POST" and (path == "/v1.41/services/create" or _SERVICE_UPDATE.fullmatch(path)):
        # What the CLI sent, whatever dockerd answered.
        return "spec", exchange["request_body"]
    if method != "GET" or status != 200 or exchange.get("response_body_compacted"):
        return None
    if path == "/v1.41/nodes":
        return "nodes", exchange["response_body"]
    if path == "/v1.41/tasks":
        return "tasks", exchange["response_body"]
    if _SERVICE_GET.fullmatch(path):
        return "service", exchange["response_body"]
    return None


def _load_cases() -> list[Case]:
    cases = []
    for file in sorted(TRANSCRIPTS.glob("[0-9][0-9][0-9]-*.json")):
        for n, exchange in enumerate(json.loads(file.read_text())):
            if "method" not in exchange:  # a proxy_note entry, not an exchange
                continue
            found = _classify(exchange)
            if found is not None:
                kind, body = found
                cases.append(Case(f"{file.stem}#{n}-{kind}", kind, body))
    return cases


CASES = _load_cases()


def diff(original: Any, result: Any, path: str = "") -> list[str]:
    """Every place where `result` differs from `original`, as readable paths."""
    if isinstance(original, dict) and isinstance(result, dict):
        out = []
        for key in original.keys() | result.keys():
            where = f"{path}.{key}"
            if key not in result:
                out.append(f"{where}: lost ({original[key]!r:.60})")
            elif key not in original:
                out.append(f"{where}: added ({result[key]!r:.60})")
            else:
                out.extend(diff(original[key], result[key], where))
        return sorted(out)
    if isinstance(original, list) and isinstance(result, list) and len(original) == len(result):
        return [
            d
            for i, (a, b) in enumerate(zip(original, result, strict=True))
            for d in diff(a, b, f"{path}[{i}]")
        ]
    # bool is an int in Python: true must not pass for 1. A float that equals an int
    # (dockerd's MaxFailureRatio 0, re-encoded as 0.0) is the same JSON number.
    if original != result or isinstance(original, bool) != isinstance(result, bool):
        return [f"{path or '.'}: {original!r:.60} became {result!r:.60}"]
    return []


def roundtrip(body: Any, type_: Any) -> Any:
    obj = msgspec.json.decode(json.dumps(body), type=type_)
    return json.loads(msgspec.json.encode(obj))


def assert_roundtrips(original: Any, result: Any) -> None:
    differences = diff(original, result)
    assert not differences, "did not round-trip:\n  " + "\n  ".join(differences)
    assert result == original


def test_transcripts_cover_every_kind() -> None:
    """The parametrised tests below are not vacuous: each kind has real bodies."""
    counts = {
        kind: sum(c.kind == kind for c in CASES) for kind in ("spec", "service", "nodes", "tasks")
    }
    assert counts["spec"] >= 20, counts
    assert counts["service"] >= 40, counts
    assert counts["nodes"] >= 10, counts
    assert counts["tasks"] >= 20, counts


@pytest.mark.parametrize("case", [c for c in CASES if c.kind == "spec"], ids=lambda c: c.id)
def test_service_spec_from_cli_roundtrips(case: Case) -> None:
    assert_roundtrips(as_dockerd_keeps_it(case.body), roundtrip(case.body, ServiceSpec))


def as_dockerd_keeps_it(spec: Any) -> Any:
    """The spec less what dockerd 20.10 itself drops: the `NoNewPrivileges: false` a
    newer CLI sends (API 1.46; shoal keeps it only when true, for the docker runtime)."""
    spec = json.loads(json.dumps(spec))
    privileges = spec.get("TaskTemplate", {}).get("ContainerSpec", {}).get("Privileges") or {}
    if privileges.get("NoNewPrivileges") is False:
        del privileges["NoNewPrivileges"]
    return spec


@pytest.mark.parametrize("case", [c for c in CASES if c.kind == "service"], ids=lambda c: c.id)
def test_service_from_dockerd_roundtrips(case: Case) -> None:
    assert_roundtrips(case.body, roundtrip(case.body, Service))


@pytest.mark.parametrize("case", [c for c in CASES if c.kind == "nodes"], ids=lambda c: c.id)
def test_node_list_from_dockerd_roundtrips(case: Case) -> None:
    assert case.body, "an empty node list tests nothing"
    assert_roundtrips(case.body, roundtrip(case.body, list[Node]))


@pytest.mark.parametrize("case", [c for c in CASES if c.kind == "tasks"], ids=lambda c: c.id)
def test_task_list_from_dockerd_roundtrips(case: Case) -> None:
    original = [
        {k: v for k, v in task.items() if k not in UNMODELED_TASK_FIELDS} for task in case.body
    ]
    assert_roundtrips(original, roundtrip(original, list[Task]))


def test_unmodeled_task_fields_are_really_unmodeled() -> None:
    """When shoal learns one of them, it must leave UNMODELED_TASK_FIELDS (and be tested)."""
    modeled = {f.encode_name for f in msgspec.structs.fields(Task)}
    assert modeled.isdisjoint(UNMODELED_TASK_FIELDS)
    in_transcripts = {k for c in CASES if c.kind == "tasks" for task in c.body for k in task}
    assert "NetworksAttachments" in in_transcripts


# Docker's spelling of fields the transcripts never show (no TTY, job modes, placement
# preferences, platforms or max replicas were recorded), from the Go structs behind
# Engine API v1.41. The spec file spells Healthcheck "HealthCheck"; dockerd sends
# "Healthcheck", as the transcripts show.
FULL_SPEC: dict[str, Any] = {
    "Name": "web",
    "Labels": {},
    "TaskTemplate": {
        "ContainerSpec": {
            "Image": "busybox:1",
            "Labels": {"a": "b"},
            "Command": ["sh"],
            "Args": ["-c", "sleep 1"],
            "Hostname": "h",
            "Env": ["A=1"],
            "Dir": "/tmp",
            "User": "nobody",
            "Groups": ["users"],
            "Privileges": {"CredentialSpec": None, "SELinuxContext": None},
            "TTY": True,
            "OpenStdin": False,
            "ReadOnly": True,
            "Mounts": [{"Type": "tmpfs", "Target": "/run"}],
            "StopSignal": "SIGTERM",
            "StopGracePeriod": 10_000_000_000,
            "Healthcheck": {
                "Test": ["CMD", "true"],
                "Interval": 1,
                "Timeout": 2,
                "Retries": 3,
                "StartPeriod": 4,
            },
            "Hosts": ["10.0.0.1 db"],
            "DNSConfig": {"Nameservers": ["8.8.8.8"], "Search": [], "Options": []},
            "Secrets": [{"File": {"Name": "s"}, "SecretID": "sid", "SecretName": "s"}],
            "Configs": [{"Runtime": {}, "ConfigID": "cid", "ConfigName": "c"}],
            "Isolation": "default",
            "Init": False,
            "Sysctls": {"net.core.somaxconn": "1024"},
            "CapabilityAdd": ["CAP_NET_ADMIN"],
            "CapabilityDrop": ["CAP_MKNOD"],
            "Ulimits": [{"Name": "nofile", "Soft": 1024, "Hard": 2048}],
        },
        "Resources": {
            "Limits": {"NanoCPUs": 1, "MemoryBytes": 2, "Pids": 3},
            "Reservations": {"NanoCPUs": 4, "MemoryBytes": 5, "GenericResources": []},
        },
        "RestartPolicy": {"Condition": "any", "Delay": 0, "MaxAttempts": 0, "Window": 0},
        "Placement": {
            "Constraints": ["node.role==worker"],
            "Preferences": [{"Spread": {"SpreadDescriptor": "node.labels.dc"}}],
            "MaxReplicas": 2,
            "Platforms": [{"Architecture": "amd64", "OS": "linux"}],
        },
        "ForceUpdate": 0,
        "Runtime": "container",
        "Networks": [{"Target": "n", "Aliases": ["x"], "DriverOpts": {}}],
        "LogDriver": {"Name": "json-file", "Options": {}},
    },
    "Mode": {"ReplicatedJob": {"MaxConcurrent": 2, "TotalCompletions": 4}},
    "UpdateConfig": {
        "Parallelism": 1,
        "Delay": 0,
        "FailureAction": "pause",
        "Monitor": 5,
        "MaxFailureRatio": 0.5,
        "Order": "start-first",
    },
    "RollbackConfig": {"Parallelism": 0, "FailureAction": "continue", "Order": "stop-first"},
    "EndpointSpec": {
        "Mode": "vip",
        "Ports": [
            {
                "Name": "http",
                "Protocol": "tcp",
                "TargetPort": 80,
                "PublishedPort": 8080,
                "PublishMode": "ingress",
            }
        ],
    },
}


def test_every_docker_service_spec_field_roundtrips() -> None:
    assert_roundtrips(FULL_SPEC, roundtrip(FULL_SPEC, ServiceSpec))


def test_docker_field_names_reach_the_python_fields() -> None:
    """Decoding fills the fields the rest of shoal reads, not only the JSON it re-emits."""
    spec = msgspec.json.decode(json.dumps(FULL_SPEC), type=ServiceSpec)
    assert spec.task_template is not None
    cs = spec.task_template.container_spec
    assert isinstance(cs, ContainerSpec)
    assert cs.tty is True
    assert cs.health_check is not None and cs.health_check.test == ["CMD", "true"]
    assert cs.dns_config == {"Nameservers": ["8.8.8.8"], "Search": [], "Options": []}
    assert cs.secrets is not None and cs.secrets[0].secret_id == "sid"
    assert cs.configs is not None and cs.configs[0].config_id == "cid"
    placement = spec.task_template.placement
    assert isinstance(placement, Placement)
    assert placement.max_replicas == 2
    assert placement.preferences is not None
    assert placement.preferences[0].spread is not None
    assert placement.preferences[0].spread.spread_descriptor == "node.labels.dc"
    assert placement.platforms is not None and placement.platforms[0].os == "linux"
    res = spec.task_template.resources
    assert res is not None and res.reservations is not None and res.reservations.nano_cpus == 4


@pytest.mark.parametrize(
    ("wire", "kind"),
    [
        ({"Replicated": {"Replicas": 3}}, "replicated"),
        ({"Replicated": {}}, "replicated"),
        ({"Global": {}}, "global"),
        ({"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 1}}, "replicated-job"),
        ({"GlobalJob": {}}, "global-job"),
    ],
)
def test_service_modes_roundtrip(wire: dict[str, Any], kind: str) -> None:
    mode = msgspec.json.decode(json.dumps(wire), type=ServiceMode)
    assert mode.kind == kind
    assert json.loads(msgspec.json.encode(mode)) == wire


def test_shoal_metadata_is_no_field_of_docker_structs() -> None:
    """What shoal keeps about services and tasks lives beside Docker's structs: no
    field of theirs carries it, at any depth (so no encoder has anything to strip)."""
    own = {f.name for meta in (ServiceMeta, TaskMeta) for f in msgspec.structs.fields(meta)}

    def field_names(t: Any, seen: set[Any]) -> set[str]:
        if t in seen or not (isinstance(t, type) and issubclass(t, msgspec.Struct)):
            return set()
        seen.add(t)
        names = set()
        for f in msgspec.structs.fields(t):
            names.add(f.name)
            for inner in _struct_types(f.type):
                names |= field_names(inner, seen)
        return names

    for docker in (Service, Task):
        assert field_names(docker, set()).isdisjoint(own), docker.__name__


def _struct_types(tp: Any) -> list[Any]:
    args = getattr(tp, "__args__", None)
    if args:
        return [s for a in args for s in _struct_types(a)]
    return [tp] if isinstance(tp, type) and issubclass(tp, msgspec.Struct) else []
