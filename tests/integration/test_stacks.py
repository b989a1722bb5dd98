"""Stacks: `docker stack deploy|ls|services|ps|rm` (the unmodified docker CLI does the
Compose work and sends label-filtered lists and creates), and `shoal stack
deploy|ls|rm` with the same file, which must store the same specs under the same
labels, so each command sees and removes the other's stacks. A bad Compose file is
refused by `shoal stack deploy` with the path of the bad key, and nothing is created.

Process runtime: the services' commands are host programs (busybox applets)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import (
    CLI_TIMEOUT_S,
    PROGRESS_TIMEOUT_S,
    SHOAL,
    Daemon,
    free_tcp_port,
    holds_for,
    parse_table,
    pid_alive,
    wait_until,
)

pytestmark = pytest.mark.integration

NAMESPACE = "com.docker.stack.namespace"
SECRET = "stack-secret-payload"
CONFIG = "listen=8080\n"
# Two services, an overlay network, a secret, a config, placement constraints. `web`
# serves its own /run/secrets over HTTP, so `worker` fetching http://web:8080/app_secret
# proves the short name resolves on the stack network and the secret is mounted.
STACK_FILE = """\
version: "3.8"
services:
  web:
    image: busybox
    command: ["busybox", "httpd", "-f", "-p", "8080", "-h", "/run/secrets"]
    environment:
      ROLE: web
    ports:
      - "${WEB_PORT}:8080"
    networks:
      - backend
    secrets:
      - app_secret
    configs:
      - source: app_config
        target: /etc/app.conf
    deploy:
      replicas: 2
      labels:
        tier: frontend
      placement:
        constraints:
          - node.role == manager
      update_config:
        parallelism: 1
        delay: 1s
        order: start-first
      restart_policy:
        condition: on-failure
        delay: 1s
        max_attempts: 3
  worker:
    image: busybox:1
    command: sleep 1000
    stop_grace_period: 1s
    networks:
      backend:
        aliases: [helper]
    deploy:
      replicas: 1
      placement:
        constraints:
          - node.hostname == ${NODE_NAME}
      resources:
        limits:
          cpus: "0.5"
          memory: 64M
networks:
  backend:
    driver: overlay
    attachable: true
secrets:
  app_secret:
    file: ./secret.txt
configs:
  app_config:
    file: ./app.conf
"""


@pytest.fixture
def stack_dir(tmp_path: Path) -> Path:
    (tmp_path / "secret.txt").write_text(SECRET)
    (tmp_path / "app.conf").write_text(CONFIG)
    (tmp_path / "stack.yml").write_text(STACK_FILE)
    return tmp_path


@pytest.fixture
def stacks(cluster: Daemon) -> Iterator[Daemon]:
    """The module's swarm; what a test's stacks left (each stack object carries the
    namespace label) is removed after it, services first."""
    yield cluster
    api = cluster.api
    labelled = {"label": NAMESPACE}
    for s in api.services(filters=labelled):
        api.remove_service(s["ID"])
    wait_until(lambda: not api.services(filters=labelled), what="stack services gone")
    for s in api.secrets(filters=labelled):
        api.remove_secret(s["ID"])
    for c in api.configs(filters=labelled):
        api.remove_config(c["ID"])
    for n in api.networks(filters=labelled):
        api.remove_network(n["Id"])


def objects(d: Daemon) -> dict[str, list[str]]:
    """Every service, network, secret and config by name: what a test compares before
    a deploy and after its removal (or a refused deploy)."""
    api = d.api
    return {
        "services": sorted(s["Spec"]["Name"] for s in api.services()),
        "networks": sorted(n["Name"] for n in api.networks()),
        "secrets": sorted(s["Spec"]["Name"] for s in api.secrets()),
        "configs": sorted(c["Spec"]["Name"] for c in api.configs()),
    }


def stack_env(d: Daemon, web_port: int | None) -> dict[str, str]:
    """The deploying shell: the variables the file interpolates."""
    env = d.docker_env()
    env.pop("SHOAL_HOST", None)
    env["NODE_NAME"] = d.node_name
    if web_port is not None:
        env["WEB_PORT"] = str(web_port)
    return env


def shoal(
    d: Daemon, *args: str, cwd: Path, web_port: int | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = stack_env(d, web_port)
    result = subprocess.run(
        [str(SHOAL), *args],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )
    if check:
        assert result.returncode == 0, f"shoal {' '.join(args)}: {result.stderr}{result.stdout}"
    return result


def docker_deploy(
    d: Daemon, stack: str, cwd: Path, *flags: str, web_port: int, timeout: float = CLI_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    env = stack_env(d, web_port)
    result = subprocess.run(
        ["docker", "stack", "deploy", *flags, "-c", "stack.yml", stack],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr
    return result


def wait_converged(d: Daemon, stack: str) -> list[dict[str, str]]:
    """`docker stack services` once every service runs all its replicas."""

    def converged() -> list[dict[str, str]] | None:
        rows = parse_table(d.docker("stack", "services", stack).stdout)
        done = {r["NAME"]: r["REPLICAS"] for r in rows}
        want = {f"{stack}_web": "2/2", f"{stack}_worker": "1/1"}
        return rows if done == want else None

    return wait_until(converged, timeout=60, what=f"stack {stack} to converge")


def task_pid(d: Daemon, service: str) -> int:
    running = d.running_tasks(service)
    assert running, f"no running task of {service}"
    return d.live_pids([running[0]["ID"]])[running[0]["ID"]]


def in_task(pid: int, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", "-t", str(pid), "-n", "-m", *argv],
        capture_output=True,
        text=True,
        timeout=15,
    )


def check_stack_runs(d: Daemon, stack: str) -> None:
    """The stack's tasks do what its file says: the short names resolve on the stack
    network, the secret and config are mounted, the constraints hold."""
    rows = parse_table(d.docker("stack", "ps", stack, "--filter", "desired-state=running").stdout)
    assert sorted(r["NAME"] for r in rows) == [
        f"{stack}_web.1",
        f"{stack}_web.2",
        f"{stack}_worker.1",
    ]
    assert all(r["CURRENT STATE"].startswith("Running") for r in rows), rows
    assert {r["NODE"] for r in rows} == {d.node_name}
    worker = task_pid(d, f"{stack}_worker")
    fetch = wait_until(
        lambda: (
            (r := in_task(worker, "busybox", "wget", "-q", "-O-", "http://web:8080/app_secret"))
            and r.returncode == 0
            and r
        ),
        what="web reached by its short name from worker",
    )
    assert fetch.stdout == SECRET
    web = task_pid(d, f"{stack}_web")
    assert in_task(web, "cat", "/etc/app.conf").stdout == CONFIG
    alias = in_task(web, "busybox", "nslookup", "helper", "127.0.0.11")
    assert alias.returncode == 0, alias.stdout + alias.stderr
    assert re.search(r"Address:\s+10\.", alias.stdout.split("Name:", 1)[1]), alias.stdout


def fetch(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/app_secret", timeout=5) as r:
            return str(r.read().decode())
    except OSError:
        return None


def normalised_spec(d: Daemon, service: str, stack: str) -> dict[str, Any]:
    """A service's stored spec with IDs replaced by names and the stack's name by
    STACK: what the two deploys must agree on."""
    spec = d.service(service)["Spec"]
    cs = spec["TaskTemplate"]["ContainerSpec"]
    for ref in cs.get("Secrets", []):
        ref.pop("SecretID")
    for ref in cs.get("Configs", []):
        ref.pop("ConfigID")
    for net in spec["TaskTemplate"].get("Networks", []):
        net["Target"] = d.api.inspect_network(net["Target"])["Name"]
    for p in spec.get("EndpointSpec", {}).get("Ports", []):
        p["PublishedPort"] = "WEB_PORT"
    text = json.dumps(spec, sort_keys=True).replace(f"{stack}_", "STACK_")
    return json.loads(text.replace(f'"{stack}"', '"STACK"'))  # type: ignore[no-any-return]


def test_docker_stack_deploy_ls_services_ps_rm(stacks: Daemon, stack_dir: Path) -> None:
    d = stacks
    before = objects(d)
    # --detach=false: the CLI follows each service's progress until it converges.
    port = free_tcp_port()
    out = docker_deploy(
        d, "dk", stack_dir, "--detach=false", web_port=port, timeout=PROGRESS_TIMEOUT_S
    ).stdout
    for line in (
        "Creating network dk_backend",
        "Creating secret dk_app_secret",
        "Creating config dk_app_config",
        "Creating service dk_web",
        "Creating service dk_worker",
    ):
        assert line in out
    rows = wait_converged(d, "dk")
    assert {r["MODE"] for r in rows} == {"replicated"}
    assert {r["IMAGE"] for r in rows} == {"busybox:latest", "busybox:1"}
    assert {r["NAME"]: r["PORTS"] for r in rows} == {
        "dk_web": f"*:{port}->8080/tcp",
        "dk_worker": "",
    }
    assert parse_table(d.docker("stack", "ls").stdout) == [{"NAME": "dk", "SERVICES": "2"}]

    web = d.service("dk_web")["Spec"]
    assert web["Labels"] == {
        NAMESPACE: "dk",
        "com.docker.stack.image": "busybox",
        "tier": "frontend",
    }
    assert web["TaskTemplate"]["Placement"]["Constraints"] == ["node.role == manager"]
    [net] = web["TaskTemplate"]["Networks"]
    assert net["Aliases"] == ["web"]
    backend = d.api.inspect_network(net["Target"])
    assert (backend["Name"], backend["Driver"], backend["Labels"]) == (
        "dk_backend",
        "overlay",
        {NAMESPACE: "dk"},
    )
    worker = d.service("dk_worker")["Spec"]["TaskTemplate"]
    assert worker["Placement"]["Constraints"] == [f"node.hostname == {d.node_name}"]
    assert worker["Networks"][0]["Aliases"] == ["helper", "worker"]
    check_stack_runs(d, "dk")
    # The published port answers on the node (the routing mesh).
    assert wait_until(lambda: fetch(port), what="the published port") == SECRET

    # Deploying again updates in place: nothing new is created.
    again = docker_deploy(
        d, "dk", stack_dir, "--with-registry-auth", "--resolve-image", "never", web_port=port
    ).stdout
    assert "Creating" not in again and "Updating service dk_web" in again
    assert objects(d) == {
        k: sorted(v + [f"dk_{n}" for n in new])
        for (k, v), new in zip(
            before.items(),
            (["web", "worker"], ["backend"], ["app_secret"], ["app_config"]),
            strict=True,
        )
    }

    pids = d.live_pids()
    rm = d.docker("stack", "rm", "dk").stdout
    for line in (
        "Removing service dk_web",
        "Removing service dk_worker",
        "Removing secret dk_app_secret",
        "Removing config dk_app_config",
        "Removing network dk_backend",
    ):
        assert line in rm
    assert objects(d) == before
    assert parse_table(d.docker("stack", "ls").stdout) == []
    wait_until(lambda: not any(pid_alive(p) for p in pids.values()), what="stack tasks to exit")
    missing = d.docker("stack", "rm", "dk")
    assert "Nothing found in stack: dk" in missing.stdout + missing.stderr


def test_shoal_stack_deploy_matches_docker(stacks: Daemon, stack_dir: Path) -> None:
    d = stacks
    before = objects(d)
    dk_port = free_tcp_port()
    docker_deploy(d, "dk", stack_dir, web_port=dk_port)
    nt_port = free_tcp_port()
    out = shoal(
        d, "stack", "deploy", "-c", "stack.yml", "nt", cwd=stack_dir, web_port=nt_port
    ).stdout
    assert "Creating network nt_backend" in out and "Creating service nt_worker" in out
    wait_converged(d, "nt")
    wait_converged(d, "dk")
    for svc in ("web", "worker"):
        assert normalised_spec(d, f"nt_{svc}", "nt") == normalised_spec(d, f"dk_{svc}", "dk")
    for kind in ("networks", "secrets", "configs"):
        found = getattr(d.api, kind)(filters={"label": f"{NAMESPACE}=nt"})
        assert len(found) == 1, found

    # shoal redeploying the docker CLI's stack changes no spec, so no task is replaced.
    def dk_tasks() -> set[str]:
        return {t["ID"] for t in d.api.tasks(filters={"label": f"{NAMESPACE}=dk"})}

    tasks = dk_tasks()
    out = shoal(d, "stack", "deploy", "-c", "stack.yml", "dk", cwd=stack_dir, web_port=dk_port)
    assert "Updating service dk_web" in out.stdout
    holds_for(lambda: dk_tasks() == tasks, 2.0, what="the docker CLI's tasks untouched")
    check_stack_runs(d, "nt")
    assert parse_table(shoal(d, "stack", "services", "nt", cwd=stack_dir).stdout) == [
        {k: v for k, v in row.items() if k != "PORTS"}
        for row in parse_table(d.docker("stack", "services", "nt").stdout)
    ]
    table = parse_table(d.docker("stack", "ls").stdout)
    assert table == [{"NAME": "dk", "SERVICES": "2"}, {"NAME": "nt", "SERVICES": "2"}]
    assert parse_table(shoal(d, "stack", "ls", cwd=stack_dir).stdout) == table

    # --prune removes the services the file no longer names.
    (stack_dir / "web.yml").write_text(
        STACK_FILE.split("  worker:")[0] + "networks:" + STACK_FILE.split("\nnetworks:")[1]
    )
    out = shoal(
        d, "stack", "deploy", "--prune", "-c", "web.yml", "nt", cwd=stack_dir, web_port=nt_port
    ).stdout
    assert "Removing service nt_worker" in out
    assert [r["NAME"] for r in parse_table(d.docker("stack", "services", "nt").stdout)] == [
        "nt_web"
    ]

    # A secret's data cannot change (Swarm allows label updates only): refused, named.
    (stack_dir / "secret.txt").write_text("another payload")
    changed = shoal(
        d, "stack", "deploy", "-c", "web.yml", "nt", cwd=stack_dir, web_port=nt_port, check=False
    )
    assert changed.returncode == 1
    assert (
        "failed to update secret nt_app_secret: rpc error: code = InvalidArgument desc = "
        "only updates to Labels are allowed" in changed.stderr
    ), changed.stderr

    # Each removes the other's stack.
    d.docker("stack", "rm", "nt")
    rm = shoal(d, "stack", "rm", "dk", cwd=stack_dir).stdout
    assert "Removing network dk_backend" in rm
    assert objects(d) == before
    missing = shoal(d, "stack", "rm", "dk", cwd=stack_dir)
    assert "Nothing found in stack: dk" in missing.stderr


BAD_FILES = [
    (
        "replicas: 2",
        "replicas: two",
        "services.web.deploy.replicas: expected an integer, got a string",
    ),
    ("replicas: 2", "replica: 2", "services.web.deploy.replica: unknown key"),
    (
        "        constraints:\n          - node.role",
        "        constraint:\n          - node.role",
        "services.web.deploy.placement.constraint: unknown key",
    ),
    ("memory: 64M", "memory: lots", "services.worker.deploy.resources.limits.memory: invalid size"),
    (
        "delay: 1s\n        order",
        "delay: soon\n        order",
        "update_config.delay: invalid duration",
    ),
    (
        "order: start-first",
        "order: first",
        "services.web.deploy.update_config.order: invalid value",
    ),
    (
        "      - backend\n",
        "      - frontend\n",
        "services.web.networks.frontend: network is not declared",
    ),
    ("file: ./app.conf", "file: ./missing.conf", "configs.app_config.file: cannot read"),
]


@pytest.mark.parametrize(
    ("old", "new", "error"), BAD_FILES, ids=[b[2].split(":")[0] for b in BAD_FILES]
)
def test_bad_file_refused_nothing_created(
    stacks: Daemon, stack_dir: Path, old: str, new: str, error: str
) -> None:
    d = stacks
    assert old in STACK_FILE
    (stack_dir / "stack.yml").write_text(STACK_FILE.replace(old, new, 1))
    before = objects(d)
    result = shoal(
        d,
        "stack",
        "deploy",
        "-c",
        "stack.yml",
        "bad",
        cwd=stack_dir,
        web_port=free_tcp_port(),
        check=False,
    )
    assert result.returncode == 1
    assert error in result.stderr, result.stderr
    assert result.stdout == ""
    assert objects(d) == before


# Every Compose key both clients understand, stored by each: the specs must match.
RICH_FILE = """\
version: "3.9"
services:
  a:
    image: busybox
    command: ["sleep", "1000"]
    hostname: "{{.Service.Name}}-{{.Task.Slot}}"
    user: "0:0"
    working_dir: /tmp
    stop_signal: SIGTERM
    stop_grace_period: 2s
    init: true
    read_only: false
    tty: false
    stdin_open: false
    cap_add: [NET_ADMIN]
    cap_drop: [MKNOD]
    sysctls: {net.core.somaxconn: "1024"}
    ulimits:
      nofile: {soft: 1024, hard: 2048}
    dns: [1.1.1.1]
    dns_search: [example.com]
    extra_hosts: ["somehost:10.1.2.3"]
    logging:
      driver: json-file
      options: {max-size: "1m"}
    labels: {c: d}
    healthcheck:
      test: ["CMD-SHELL", "true"]
      interval: 5s
      timeout: 2s
      retries: 3
      start_period: 1s
    volumes:
      - type: tmpfs
        target: /scratch
      - /tmp:/hosttmp:ro
      - data:/data
      - type: volume
        source: data
        target: /data2
        volume: {nocopy: true}
      - ./rel:/rel
      - ${HOME:-/root}/x:/y:rw
      - /anon
    configs:
      - source: tpl
        target: /etc/tpl
        mode: 0440
    deploy:
      mode: replicated
      replicas: 0  # stored, never run: the spec is what is compared
      endpoint_mode: dnsrr
      placement:
        constraints: [node.role==manager]
        preferences: [{spread: node.labels.dc}]
        max_replicas_per_node: 2
      resources:
        limits: {cpus: "0.5", memory: 64M, pids: 100}
        reservations: {cpus: "0.1", memory: 8M}
      restart_policy: {condition: any, delay: 1s, window: 10s}
      update_config: {parallelism: 2, delay: 1s, monitor: 3s, max_failure_ratio: 0.5, failure_action: pause, order: stop-first}
      rollback_config: {parallelism: 1, delay: 1s, monitor: 2s, failure_action: continue}
  j:
    image: busybox
    command: ["true"]
    logging: {driver: none}
    dns: 8.8.8.8
    deploy:
      mode: replicated-job
      replicas: 2
volumes:
  data:
    labels: {x: y}
    driver_opts: {type: tmpfs, device: tmpfs}
configs:
  tpl:
    file: ./app.conf
    template_driver: golang
"""


def test_every_key_stored_alike(stacks: Daemon, stack_dir: Path) -> None:
    d = stacks
    before = objects(d)
    (stack_dir / "rich.yml").write_text(RICH_FILE)
    docker = stack_env(d, None)
    deployed = subprocess.run(
        ["docker", "stack", "deploy", "-c", "rich.yml", "dk"],
        env=docker,
        cwd=stack_dir,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )
    assert deployed.returncode == 0, deployed.stderr
    shoal(d, "stack", "deploy", "-c", "rich.yml", "nt", cwd=stack_dir)
    for svc in ("a", "j"):
        assert normalised_spec(d, f"nt_{svc}", "nt") == normalised_spec(d, f"dk_{svc}", "dk")
    a = d.service("nt_a")["Spec"]["TaskTemplate"]["ContainerSpec"]
    assert [m.get("Source") for m in a["Mounts"]] == [
        None,
        "/tmp",
        "nt_data",
        "nt_data",
        str(stack_dir / "rel"),
        f"{os.environ.get('HOME', '/root')}/x",
        None,
    ]
    d.docker("stack", "rm", "dk", "nt")
    assert objects(d) == before
