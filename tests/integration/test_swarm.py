"""A daemon the docker CLI talks to: version negotiation, `swarm init`, `info`, `node ls`.

These tests run on a daemon of their own that starts outside any swarm."""

from __future__ import annotations

import json
import re

import pytest

from .harness import Daemon, DaemonFactory, init_swarm, parse_table, swarm_init_args

pytestmark = pytest.mark.integration

ENGINE_LABEL = "shoal.test.zone=blue"


@pytest.fixture(scope="module")
def daemon(daemon_factory: DaemonFactory) -> Daemon:
    return daemon_factory(node_name="shoal-basics", labels=[ENGINE_LABEL], tcp=True)


def ensure_swarm(daemon: Daemon) -> None:
    state = daemon.docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip()
    if state != "active":
        init_swarm(daemon)


def test_ping_answers_the_version_the_cli_negotiates(daemon: Daemon) -> None:
    head = daemon.http("HEAD", "/_ping")
    assert head.status == 200
    assert head.headers.get("api-version") == "1.41"
    assert head.headers.get("ostype") == "linux"
    assert "docker-experimental" in head.headers
    get = daemon.http("GET", "/_ping")
    assert get.status == 200
    assert get.body == b"OK"


def test_version_shows_the_server(daemon: Daemon) -> None:
    out = daemon.docker("version").stdout
    assert "\nServer:" in out, out
    client, _, server = out.partition("\nServer:")
    # The CLI negotiated down to the server's API version.
    assert re.search(r"API version:\s+1\.41\b", client), out
    assert re.search(r"API version:\s+1\.41\b", server), out
    assert daemon.docker("version", "--format", "{{.Server.APIVersion}}").stdout.strip() == "1.41"


def test_version_over_tcp(daemon: Daemon) -> None:
    out = daemon.docker("version", host=daemon.tcp_host).stdout
    assert "\nServer:" in out, out


def test_swarm_init_then_info_and_node_ls(daemon_factory: DaemonFactory) -> None:
    # A daemon of its own: whatever ran before, its swarm is inactive, so the init and
    # its output are checked every time.
    daemon = daemon_factory(node_name="shoal-init")
    before = daemon.docker("info").stdout
    assert re.search(r"^\s*Swarm: inactive$", before, re.M), before
    init = init_swarm(daemon)
    node_id = daemon.docker("info", "--format", "{{.Swarm.NodeID}}").stdout.strip()
    assert init.stdout.startswith(
        f"Swarm initialized: current node ({node_id}) is now a manager.\n"
    ), init.stdout
    assert re.search(
        r"^\s+docker swarm join --token SWMTKN-1-[0-9a-z]{50}-[0-9a-z]{25} 127\.0\.0\.1:\d+$",
        init.stdout,
        re.M,
    ), init.stdout

    info = daemon.docker("info").stdout
    assert re.search(r"^\s*Swarm: active$", info, re.M), info
    assert re.search(r"^\s*Is Manager: true$", info, re.M), info
    assert re.search(r"^\s*Nodes: 1$", info, re.M), info
    assert re.search(r"^\s*Managers: 1$", info, re.M), info
    assert re.fullmatch(r"[0-9a-z]{25}", node_id), node_id

    rows = parse_table(daemon.docker("node", "ls").stdout)
    assert len(rows) == 1, rows
    node = rows[0]
    # The CLI marks the node it talks to with "*" (it learns which from GET /info).
    assert node["ID"] == f"{node_id} *", node
    assert node["HOSTNAME"] == "shoal-init", node
    assert node["STATUS"] == "Ready", node
    assert node["AVAILABILITY"] == "Active", node
    assert node["MANAGER STATUS"] == "Leader", node


def test_second_swarm_init_is_refused(daemon: Daemon) -> None:
    ensure_swarm(daemon)
    before = daemon.docker("info", "--format", "{{.Swarm.Cluster.ID}}").stdout.strip()
    again = daemon.docker(*swarm_init_args(), check=False)
    assert again.returncode == 1
    assert "This node is already part of a swarm" in again.stderr, again.stderr
    assert daemon.docker("info", "--format", "{{.Swarm.Cluster.ID}}").stdout.strip() == before


def test_node_carries_engine_labels(daemon: Daemon) -> None:
    ensure_swarm(daemon)
    raw = daemon.docker("node", "inspect", "self", "--format", "{{json .Description}}").stdout
    description = json.loads(raw)
    key, _, value = ENGINE_LABEL.partition("=")
    assert description["Engine"]["Labels"].get(key) == value, description
    assert description["Hostname"] == "shoal-basics", description
