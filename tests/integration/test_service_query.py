"""Reading services back: `service inspect` (Docker's shape, --pretty, names, IDs and ID
prefixes), `service ls` with its filters, `service ps` with a desired-state filter."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from .harness import Daemon, parse_table, pid_alive, remove_all_services, wait_until

pytestmark = pytest.mark.integration

SLEEP = ("sleep", "1000")

# name -> extra `service create` flags. Names chosen so that the name filter's prefix
# match (as dockerd does it) is visible: q-web matches q-web and q-web-admin.
CATALOG = {
    "q-web": ["--label", "team=a"],
    "q-web-admin": ["--label", "team=b"],
    "q-api": ["--label", "team=a", "--label", "tier=api"],
    "q-glob": ["--mode", "global"],
}


@pytest.fixture(scope="module")
def catalog(swarm: Daemon) -> Iterator[dict[str, str]]:
    """The services above, created once for the module, each running its one task."""
    ids = {
        name: swarm.create_service(name, *flags, "busybox", *SLEEP)
        for name, flags in CATALOG.items()
    }
    for name in ids:
        swarm.wait_processes(name, 1, argv=SLEEP)
    yield ids
    remove_all_services(swarm)


def ls_names(daemon: Daemon, *filters: str) -> set[str]:
    args = [arg for f in filters for arg in ("--filter", f)]
    return {row["NAME"] for row in parse_table(daemon.docker("service", "ls", *args).stdout)}


def parse_time(value: str) -> datetime:
    # RFC 3339 with nanoseconds: keep microseconds for fromisoformat.
    return datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", value).replace("Z", "+00:00"))


def test_inspect_has_dockers_shape(swarm: Daemon, catalog: dict[str, str]) -> None:
    out = swarm.docker("service", "inspect", "q-api").stdout
    (service,) = json.loads(out)

    assert service["ID"] == catalog["q-api"]
    assert isinstance(service["Version"]["Index"], int) and service["Version"]["Index"] > 0
    # Never updated since its creation: both times are the creation's.
    assert service["UpdatedAt"] == service["CreatedAt"], service
    assert parse_time(service["CreatedAt"]) <= datetime.now(UTC)

    spec = service["Spec"]
    assert spec["Name"] == "q-api"
    assert spec["Labels"] == {"team": "a", "tier": "api"}
    container = spec["TaskTemplate"]["ContainerSpec"]
    assert container["Image"].startswith("busybox"), container
    assert container["Args"] == list(SLEEP), container
    assert spec["Mode"] == {"Replicated": {"Replicas": 1}}
    # `service inspect` asks for insertDefaults=true: the defaults are filled in.
    for config in ("UpdateConfig", "RollbackConfig"):
        assert spec[config]["Parallelism"] == 1, spec[config]
        assert spec[config]["FailureAction"] == "pause", spec[config]
        assert spec[config]["Monitor"] == 5_000_000_000, spec[config]
        assert spec[config]["Order"] == "stop-first", spec[config]
    assert spec["EndpointSpec"]["Mode"] == "vip", spec["EndpointSpec"]
    # No published port and no network: SwarmKit allocates no endpoint, and dockerd
    # shows an empty one (transcript 041's ref-logger).
    assert service["Endpoint"] == {"Spec": {}}, service["Endpoint"]


def test_inspect_pretty(swarm: Daemon, catalog: dict[str, str]) -> None:
    out = swarm.docker("service", "inspect", "--pretty", "q-api").stdout
    assert re.search(rf"^ID:\s+{catalog['q-api']}$", out, re.M), out
    assert re.search(r"^Name:\s+q-api$", out, re.M), out
    assert re.search(r"^Service Mode:\s+Replicated$", out, re.M), out
    assert re.search(r"^ Replicas:\s+1$", out, re.M), out
    assert re.search(r"^ Args:\s+sleep 1000", out, re.M), out
    assert "team=a" in out and "tier=api" in out, out


def test_inspect_by_name_id_and_id_prefix(swarm: Daemon, catalog: dict[str, str]) -> None:
    service_id = catalog["q-web"]
    for ref in ("q-web", service_id, service_id[:10]):
        out = swarm.docker("service", "inspect", "--format", "{{.Spec.Name}}", ref).stdout
        assert out.strip() == "q-web", (ref, out)


def test_ls_shows_every_service_converged(swarm: Daemon, catalog: dict[str, str]) -> None:
    def rows() -> dict[str, dict[str, str]]:
        table = parse_table(swarm.docker("service", "ls").stdout)
        return {r["NAME"]: r for r in table if r["NAME"] in catalog}

    table = wait_until(
        lambda: (t := rows()) and all(r["REPLICAS"] == "1/1" for r in t.values()) and t
    )
    assert set(table) == set(catalog)
    assert table["q-glob"]["MODE"] == "global"
    assert table["q-web"]["MODE"] == "replicated"
    assert {r["ID"] for r in table.values()} == {i[:12] for i in catalog.values()}

    quiet = swarm.docker("service", "ls", "-q").stdout.split()
    assert {q[:12] for q in quiet} >= {i[:12] for i in catalog.values()}, quiet


def test_ls_filter_name_matches_a_prefix(swarm: Daemon, catalog: dict[str, str]) -> None:
    assert ls_names(swarm, "name=q-web") == {"q-web", "q-web-admin"}
    assert ls_names(swarm, "name=q-web-admin") == {"q-web-admin"}
    assert ls_names(swarm, "name=q-nothing") == set()


def test_ls_filter_label(swarm: Daemon, catalog: dict[str, str]) -> None:
    assert ls_names(swarm, "label=team=a") == {"q-web", "q-api"}
    assert ls_names(swarm, "label=team") == {"q-web", "q-web-admin", "q-api"}
    assert ls_names(swarm, "label=tier=api") == {"q-api"}
    assert ls_names(swarm, "label=team=c") == set()


def test_ls_filter_id_prefix(swarm: Daemon, catalog: dict[str, str]) -> None:
    assert ls_names(swarm, f"id={catalog['q-api'][:8]}") == {"q-api"}
    assert ls_names(swarm, f"id={catalog['q-web']}") == {"q-web"}


def test_ls_filter_mode(swarm: Daemon, catalog: dict[str, str]) -> None:
    assert ls_names(swarm, "mode=global") == {"q-glob"}
    replicated = ls_names(swarm, "mode=replicated")
    assert replicated >= {"q-web", "q-web-admin", "q-api"}
    assert "q-glob" not in replicated


def test_ps_filter_desired_state(swarm: Daemon, catalog: dict[str, str]) -> None:
    swarm.create_service("q-hist", "busybox", *SLEEP)
    try:
        old = swarm.wait_processes("q-hist", 1, argv=SLEEP)
        swarm.docker("service", "update", "--detach", "--force", "q-hist")
        (old_pid,) = old.values()
        wait_until(lambda: not pid_alive(old_pid), what="the old task's process to stop")
        new = swarm.wait_processes("q-hist", 1, argv=SLEEP)
        assert new.keys() != old.keys(), (old, new)

        def ps(*args: str) -> list[dict[str, str]]:
            return parse_table(swarm.docker("service", "ps", *args, "q-hist").stdout)

        everything = wait_until(lambda: len(t := ps()) == 2 and t, what="two tasks in service ps")
        assert sorted(t["DESIRED STATE"] for t in everything) == ["Running", "Shutdown"]

        running = ps("--filter", "desired-state=running")
        assert len(running) == 1, running
        assert running[0]["DESIRED STATE"] == "Running", running
        assert running[0]["CURRENT STATE"].startswith("Running"), running
        (new_id,) = new
        assert running[0]["ID"] == new_id[:12], (running, new_id)

        shutdown = ps("--filter", "desired-state=shutdown")
        assert len(shutdown) == 1 and shutdown[0]["DESIRED STATE"] == "Shutdown", shutdown
    finally:
        swarm.docker("service", "rm", "q-hist", check=False)
