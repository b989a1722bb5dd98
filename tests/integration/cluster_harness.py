"""Multi-node clusters for the integration tests: several `shoal daemon`s on one machine,
joined into one swarm with the real docker CLI, optionally each in a network namespace
of its own. Builds on harness.py (one `Daemon`); nothing is mocked.

- `ClusterNode` is a `Daemon` that may carry extra daemon flags (`--resources-memory`)
  and run inside a network namespace (`ip netns exec NS shoal daemon ...`: the unix
  socket is a filesystem path, so the CLI reaches it from the host all the same).
- `Cluster` is one manager and its workers: `swarm init` on a free cluster port, joins,
  the manager's view of the nodes, and where each service's tasks run — both as the
  manager reports it and as the task processes recorded in each node's data dir show it.
- `NetnsLab` makes the namespaces, veth pairs and a bridge a test needs, with names it
  generates (random suffix), and removes exactly those, even after a failure.
- TLS helpers talk to the cluster port directly (python `ssl` + `http.client`), with a
  node's own certificate or with a self-made one.
"""

from __future__ import annotations

import contextlib
import datetime
import http.client
import json
import re
import secrets
import shutil
import ssl
import subprocess
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .harness import (
    WAIT_TIMEOUT_S,
    CommandFailed,
    Daemon,
    Response,
    parse_table,
    pid_alive,
    wait_until,
)

# `docker swarm update --dispatcher-heartbeat`: short, so failure detection is fast.
HEARTBEAT = "1s"
HEARTBEAT_NS = 1_000_000_000
# A node is Down after 3 missed heartbeats (3 s here); generous room for a loaded host.
DOWN_TIMEOUT_S = 30.0
# Rescheduling after a node is lost: detection + restart delay (1 s) + start.
RESCHEDULE_TIMEOUT_S = 45.0
# The daemon flag that overrides the memory a node advertises (shoal/cli/main.py).
RESOURCES_MEMORY_FLAG = "--resources-memory"

TOKEN_RE = re.compile(r"^SWMTKN-1-(?P<digest>[0-9a-z]{50})-(?P<secret>[0-9a-z]{25})$")
NOT_MANAGER = (
    "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster "
    "state. Please run this command on a manager node or promote the current node to a "
    "manager."
)
INVALID_TOKEN = (
    "rpc error: code = InvalidArgument desc = A valid join token is necessary to join this cluster"
)
JOINED_AS_WORKER = "This node joined a swarm as a worker."

# Where a node keeps its TLS material, under its --data-dir.
CERTS_SUBDIR = Path("swarm") / "certificates"
ROOT_CA_FILE = "swarm-root-ca.crt"
NODE_CERT_FILE = "swarm-node.crt"
NODE_KEY_FILE = "swarm-node.key"
MANAGER_OU = "swarm-manager"
WORKER_OU = "swarm-worker"
# A cluster-port path only managers may use (shoal/manager/clusterport/server.py ACCESS).
MANAGER_ONLY_PATH = "/manager/ping"
# Cluster-port routes that need a node certificate of the cluster (any role).
NODE_ONLY_ROUTES = (("GET", "/dispatcher/session"), ("POST", "/ca/renew"))


# --------------------------------------------------------------------------- nodes


class ClusterNode(Daemon):
    """A `Daemon` with extra flags, optionally in a network namespace, and the address
    it advertises to the cluster."""

    def __init__(
        self,
        root: Path,
        log_path: Path,
        node_name: str,
        labels: Sequence[str] = (),
        extra_args: Sequence[str] = (),
        netns: str | None = None,
        addr: str = "127.0.0.1",
        tcp_port: int | None = None,
    ) -> None:
        super().__init__(root, log_path, node_name, labels=labels, tcp_port=tcp_port)
        self.extra_args = list(extra_args)
        self.netns = netns
        self.addr = addr
        self.cluster_port: int | None = None

    def command(self) -> list[str]:
        cmd = [*super().command(), *self.extra_args]
        if self.netns is not None:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        return cmd

    # ------------------------------------------------------------------ swarm view

    @property
    def certs_dir(self) -> Path:
        return self.data_dir / CERTS_SUBDIR

    @property
    def listen_addr(self) -> str:
        assert self.cluster_port is not None, f"{self.node_name} has no cluster port"
        return f"{self.addr}:{self.cluster_port}"

    def info(self) -> dict[str, Any]:
        """`GET /info` as the CLI reads it (docker-py, negotiated version)."""
        return self.api.info()

    def swarm_state(self) -> str:
        return str(self.info()["Swarm"]["LocalNodeState"])

    def node_id(self) -> str:
        return str(self.info()["Swarm"]["NodeID"])

    def info_text(self) -> str:
        return self.docker("info").stdout

    def join(
        self, token: str, manager: ClusterNode, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """`docker swarm join --token T --advertise-addr A --listen-addr A:P MANAGER`."""
        if self.cluster_port is None:
            self.cluster_port = pick_port(self.addr)
        return self.docker(
            "swarm",
            "join",
            "--token",
            token,
            "--advertise-addr",
            self.addr,
            "--listen-addr",
            self.listen_addr,
            manager.listen_addr,
            check=check,
        )


def pick_port(addr: str) -> int:
    """The port to ask for a cluster listener. On the host's loopback, 0: the daemon
    binds whatever the kernel gives (no window between choosing and binding in which
    another process could take it) and the test reads it back; inside a namespace of
    our own nothing else listens, so Swarm's default is free."""
    return 0 if addr.startswith("127.") else 2377


def bound_cluster_port(manager: ClusterNode) -> int:
    """The port the manager bound, as `docker swarm join-token` prints it."""
    out = manager.docker("swarm", "join-token", "worker").stdout
    m = re.search(rf"\s{re.escape(manager.addr)}:(\d+)\s*$", out)
    assert m and int(m.group(1)) != 0, out
    return int(m.group(1))


NodeFactory = Callable[..., ClusterNode]


def make_netns_trio(lab: NetnsLab, node_factory: NodeFactory) -> Cluster:
    """Three nodes, each in a namespace of `lab`'s, node-1 the manager. Make `lab`
    before the daemons, so it is torn down after them."""
    nodes = []
    for i in (1, 2, 3):
        ns, addr = lab.add_host()
        nodes.append(node_factory(f"node-{i}", netns=ns, addr=addr))
    cluster = Cluster.init(nodes[0])
    for worker in nodes[1:]:
        cluster.join(worker)
    return cluster


# --------------------------------------------------------------------------- cluster


class Cluster:
    """One manager and the workers that joined it."""

    def __init__(self, manager: ClusterNode) -> None:
        self.manager = manager
        self.nodes: dict[str, ClusterNode] = {manager.node_name: manager}

    # ------------------------------------------------------------------ membership

    @classmethod
    def init(cls, manager: ClusterNode, heartbeat: str | None = HEARTBEAT) -> Cluster:
        """`docker swarm init` on a free cluster port, then the heartbeat period."""
        if manager.cluster_port is None:
            manager.cluster_port = pick_port(manager.addr)
        manager.docker(
            "swarm",
            "init",
            "--advertise-addr",
            manager.addr,
            "--listen-addr",
            manager.listen_addr,
        )
        if manager.cluster_port == 0:
            manager.cluster_port = bound_cluster_port(manager)
        cluster = cls(manager)
        if heartbeat is not None:
            manager.docker("swarm", "update", "--dispatcher-heartbeat", heartbeat)
        return cluster

    def join_token(self, role: str = "worker") -> str:
        token = self.manager.docker("swarm", "join-token", role, "-q").stdout.strip()
        assert TOKEN_RE.match(token), token
        return token

    def join(self, node: ClusterNode, role: str = "worker") -> None:
        """Join `node` with the `role` token and wait until the manager lists it Ready."""
        result = node.join(self.join_token(role), self.manager)
        assert "This node joined a swarm as a" in result.stdout, result
        self.nodes[node.node_name] = node
        self.wait_node_state(node.node_name, "ready")

    def forget(self, node: ClusterNode) -> None:
        self.nodes.pop(node.node_name, None)

    @property
    def workers(self) -> list[ClusterNode]:
        return [n for n in self.nodes.values() if n is not self.manager]

    # ------------------------------------------------------------------ nodes, manager's view

    def node_objects(self) -> list[dict[str, Any]]:
        return self.manager.api.nodes()

    def node_by_name(self, hostname: str) -> dict[str, Any]:
        matches = [n for n in self.node_objects() if n["Description"]["Hostname"] == hostname]
        assert len(matches) == 1, (hostname, [n["Description"]["Hostname"] for n in matches])
        return matches[0]

    def node_state(self, hostname: str) -> str | None:
        for n in self.node_objects():
            if n["Description"]["Hostname"] == hostname:
                return str(n["Status"]["State"])
        return None

    def wait_node_state(
        self, hostname: str, state: str, timeout: float = DOWN_TIMEOUT_S
    ) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            for n in self.node_objects():
                if n["Description"]["Hostname"] == hostname and n["Status"]["State"] == state:
                    return n
            return None

        return wait_until(reached, timeout=timeout, what=f"node {hostname} to be {state}")

    def node_table(self) -> list[dict[str, str]]:
        """`docker node ls` on the manager, as rows keyed by header."""
        return parse_table(self.manager.docker("node", "ls").stdout)

    def hostnames(self) -> dict[str, str]:
        """{node ID: hostname} as the manager knows them."""
        return {n["ID"]: n["Description"]["Hostname"] for n in self.node_objects()}

    # ------------------------------------------------------------------ tasks

    def running_placement(self, service: str) -> dict[str, str]:
        """{task ID: hostname} of the service's tasks the manager reports running."""
        names = self.hostnames()
        return {
            t["ID"]: names.get(t.get("NodeID", ""), "?")
            for t in self.manager.running_tasks(service)
        }

    def live_processes(self, exclude: Iterable[str] = ()) -> dict[str, tuple[str, int]]:
        """{task ID: (hostname, pid)} of every live task process recorded in any node's
        data dir (running daemon or not), except the tasks in `exclude`."""
        skip = set(exclude)
        out: dict[str, tuple[str, int]] = {}
        for name, node in self.nodes.items():
            for task_id, pid in node.pids_of_tasks().items():
                if task_id not in skip and pid_alive(pid):
                    out[task_id] = (name, pid)
        return out

    def wait_converged(
        self,
        service: str,
        replicas: int,
        per_node: dict[str, int] | None = None,
        check: Callable[[Counter[str]], bool] | None = None,
        timeout: float = WAIT_TIMEOUT_S,
    ) -> dict[str, dict[str, int]]:
        """Wait until the service runs exactly `replicas` tasks (the manager's view) and
        the live task processes on all nodes are exactly those tasks, each on the node
        the manager says (processes of other services' tasks aside): no missing task,
        no stale or duplicate process anywhere. `per_node` ({hostname: count}, zeros
        allowed) or `check` (on the Counter of hostnames) constrain the placement.
        Returns {hostname: {task ID: pid}}."""

        def state() -> dict[str, dict[str, int]] | None:
            tasks = self.manager.api.tasks()
            svc_id = self.manager.service(service)["ID"]
            others = {t["ID"] for t in tasks if t["ServiceID"] != svc_id}
            running = self.running_placement(service)
            live = self.live_processes(exclude=others)
            if len(running) != replicas or {t: h for t, (h, _) in live.items()} != running:
                return None
            counts = Counter(running.values())
            if per_node is not None and any(counts.get(h, 0) != c for h, c in per_node.items()):
                return None
            if check is not None and not check(counts):
                return None
            out: dict[str, dict[str, int]] = {name: {} for name in self.nodes}
            for task_id, (host, pid) in live.items():
                out.setdefault(host, {})[task_id] = pid
            return out or {"": {}}

        want = f"{replicas} task(s)" + (f" placed {per_node}" if per_node else "")
        return wait_until(state, timeout=timeout, what=f"{service} to converge to {want}")

    def ps_nodes(self, service: str) -> Counter[str]:
        """NODE column of `docker service ps` for the tasks desired and seen running."""
        rows = parse_table(
            self.manager.docker(
                "service", "ps", "--filter", "desired-state=running", service
            ).stdout
        )
        return Counter(r["NODE"] for r in rows if r["CURRENT STATE"].startswith("Running"))

    def ps_no_trunc(self, service: str) -> str:
        return self.manager.docker("service", "ps", "--no-trunc", service).stdout

    def wait_pending_reason(
        self, service: str, reason: str, timeout: float = WAIT_TIMEOUT_S
    ) -> str:
        """Wait until `docker service ps --no-trunc` shows a Pending task with `reason`."""

        def shown() -> str | None:
            out = self.ps_no_trunc(service)
            lines = [line for line in out.splitlines() if "Pending" in line and reason in line]
            return out if lines else None

        return wait_until(shown, timeout=timeout, what=f"{service}: Pending with {reason!r}")

    def pending_tasks(self, service: str) -> list[dict[str, Any]]:
        return [
            t
            for t in self.manager.tasks(service)
            if t["Status"]["State"] == "pending" and t["DesiredState"] == "running"
        ]

    # ------------------------------------------------------------------ teardown helpers

    def remove_all_services(self, timeout: float = WAIT_TIMEOUT_S) -> None:
        """Remove every service and wait until no task process is left on any node."""
        for svc in self.manager.api.services():
            with contextlib.suppress(Exception):
                self.manager.api.remove_service(svc["ID"])
        wait_until(lambda: not self.manager.api.services(), timeout=timeout, what="no service")
        wait_until(
            lambda: not self.live_processes(),
            timeout=timeout,
            what="no task process left on any node",
        )


# --------------------------------------------------------------------------- TLS


def tls_context(
    cert: Path | None = None, key: Path | None = None, ca: Path | None = None
) -> ssl.SSLContext:
    """A client context: the server verified against `ca` if given (the cluster's root;
    no hostname check, node certificates name node IDs), `cert`/`key` presented."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    if ca is not None:
        ctx.load_verify_locations(cafile=str(ca))
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key) if key else None)
    return ctx


def tls_request(
    host: str,
    port: int,
    path: str,
    ctx: ssl.SSLContext,
    method: str = "GET",
    body: bytes | None = None,
    timeout: float = 5.0,
) -> Response:
    """One HTTPS request to the cluster port. TLS and connection errors propagate."""
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=timeout)
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        payload = resp.read()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, payload)
    finally:
        conn.close()


def refused(call: Callable[[], Response]) -> str | None:
    """Why the cluster port refused a request: the TLS or connection error, or None if
    it answered with HTTP at all (the caller then looks at the status)."""
    try:
        call()
    except (ssl.SSLError, OSError, http.client.HTTPException) as exc:
        return repr(exc)
    return None


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def subject_attr(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> list[str]:
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(oid)]


def make_impostor(
    directory: Path, node_id: str, cluster_id: str, ou: str = MANAGER_OU
) -> tuple[Path, Path]:
    """A self-made CA (named like Swarm's) and a node certificate from it that claims to
    be `node_id`, a manager of `cluster_id`. Returns (cert, key) paths."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "swarm-ca")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_id),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
            x509.NameAttribute(NameOID.COMMON_NAME, node_id),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(ou), x509.DNSName(node_id)]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path = directory / "impostor.crt"
    key_path = directory / "impostor.key"
    cert_path.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + ca_cert.public_bytes(serialization.Encoding.PEM)
    )
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


# --------------------------------------------------------------------------- netns


def _run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
    )
    if check and result.returncode != 0:
        raise CommandFailed(f"`{' '.join(argv)}` exited {result.returncode}: {result.stderr}")
    return result


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(["ip", *args], check=check)


class NetnsLab:
    """Network namespaces as hosts: each gets a veth pair whose host end is enslaved to
    one bridge of ours, and an address in a private /24. Every name is generated here
    with a random suffix, and `teardown` deletes exactly those names."""

    def __init__(self) -> None:
        self.suffix = secrets.token_hex(3)
        self.bridge = f"shbr{self.suffix}"
        self.subnet = f"10.123.{secrets.randbelow(250) + 1}"
        self.namespaces: list[str] = []
        self.host_ends: list[str] = []
        self._bridge_made = False
        self._forward_rule: list[str] | None = None

    def setup_bridge(self) -> None:
        # The bridge forwards between its own ports only; bridged frames skip the host's
        # iptables (Docker's FORWARD policy is DROP), for this bridge alone.
        _ip(
            "link",
            "add",
            self.bridge,
            "type",
            "bridge",
            "nf_call_iptables",
            "0",
            "nf_call_ip6tables",
            "0",
            "nf_call_arptables",
            "0",
        )
        self._bridge_made = True
        _ip("link", "set", self.bridge, "up")
        # ...but the global br_netfilter switch still sends them through FORWARD, whose
        # policy Docker sets to DROP: accept traffic between this bridge's own ports.
        iptables = shutil.which("iptables") or "/usr/sbin/iptables"
        if Path(iptables).exists():
            rule = ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]
            rule += ["-m", "comment", "--comment", f"shoal-test-{self.suffix}"]
            _run([iptables, "-w", "-I", *rule])
            self._forward_rule = [iptables, "-w", "-D", *rule]

    def add_host(self) -> tuple[str, str]:
        """A new namespace with its address; returns (namespace, address)."""
        if not self._bridge_made:
            self.setup_bridge()
        index = len(self.namespaces) + 1
        ns = f"shoal-{self.suffix}-{index}"
        host_end, ns_end = f"shv{self.suffix}{index}", f"shp{self.suffix}{index}"
        addr = f"{self.subnet}.{index}"
        _ip("netns", "add", ns)
        self.namespaces.append(ns)
        _ip("link", "add", host_end, "type", "veth", "peer", "name", ns_end)
        self.host_ends.append(host_end)
        _ip("link", "set", ns_end, "netns", ns)
        _ip("link", "set", host_end, "master", self.bridge)
        _ip("link", "set", host_end, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "link", "set", ns_end, "name", "eth0")
        _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        return ns, addr

    def host_end(self, ns: str) -> str:
        return self.host_ends[self.namespaces.index(ns)]

    def disconnect(self, ns: str) -> None:
        """Cut the namespace off the bridge (a network partition)."""
        _ip("link", "set", self.host_end(ns), "down")

    def reconnect(self, ns: str) -> None:
        _ip("link", "set", self.host_end(ns), "up")

    def teardown(self) -> list[str]:
        """Delete what this lab made, by name; returns the errors (empty when clean)."""
        errors: list[str] = []
        for host_end in self.host_ends:
            if _ip("link", "show", host_end, check=False).returncode == 0:
                r = _ip("link", "del", host_end, check=False)
                if r.returncode != 0:
                    errors.append(r.stderr)
        for ns in self.namespaces:
            if ns in _ip("netns", "list", check=False).stdout.split():
                r = _ip("netns", "del", ns, check=False)
                if r.returncode != 0:
                    errors.append(r.stderr)
        if self._forward_rule is not None:
            r = _run(self._forward_rule, check=False)
            if r.returncode != 0:
                errors.append(r.stderr)
            self._forward_rule = None
        if self._bridge_made and _ip("link", "show", self.bridge, check=False).returncode == 0:
            r = _ip("link", "del", self.bridge, check=False)
            if r.returncode != 0:
                errors.append(r.stderr)
        return errors


def ns_exec(ns: str, *argv: str, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True)[:3000]
