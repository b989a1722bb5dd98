"""Field-for-field fidelity with dockerd 20.10, on a real daemon: the recorded docker
CLI scenario (tests/fixtures/docker-cli-transcripts) is replayed, request by request,
against one shoal daemon, and every answer about a swarm object (swarm, info, nodes,
services, tasks, secrets, configs, events, errors) is compared with dockerd's: the
status, the shape of a body (tests/unit/api/test_response_shapes.py: the key paths
with their value types) and an error's message.

The replay keeps to what the CLI sent, with only what must change on another cluster:
dockerd's IDs become shoal's (by the objects they name), `version=N` is the object's
version on shoal, a masked secret payload becomes a real one, and `httpd` (which the
process runtime cannot run as a task) becomes `sleep`, with a health check that passes
in place of the one that asked httpd, and the updates' delay and monitor and the
health check's interval are shorter (values, not shapes). Exchanges about what shoal does not serve as a
swarm object (the registry, logs' streams) are not replayed.
"""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from .harness import Daemon, wait_until

# The shape helpers are the unit test's, so both compare the same way.
from unit.api.test_response_shapes import TRANSCRIPTS, differences, shape  # isort: skip

pytestmark = pytest.mark.integration

# The files of the scenario that hold an answer about a swarm object, in its order.
REPLAYED = (
    "002-info.json",
    "003-info-format-swarm.json",
    "005-swarm-join-token-worker.json",
    "009-swarm-update-task-history-limit.json",
    "010-node-ls.json",
    "011-node-ls-filter-role.json",
    "012-node-inspect-self.json",
    "013-node-inspect-pretty.json",
    "014-node-update-self-unsupported.json",
    "015-node-update-label-add.json",
    "016-node-update-label-rm.json",
    "017-node-update-availability-drain.json",
    "018-node-update-availability-pause.json",
    "019-node-update-availability-active.json",
    "020-node-inspect-missing.json",
    "021-network-create-overlay.json",
    "022-network-create-overlay-attachable.json",
    "023-network-ls.json",
    "024-network-ls-filter-driver.json",
    "025-network-inspect.json",
    "026-secret-create-stdin.json",
    "027-secret-create-stdin-2.json",
    "028-secret-ls.json",
    "029-secret-ls-filter-name.json",
    "030-secret-inspect.json",
    "032-config-create-stdin.json",
    "034-config-ls.json",
    "035-config-inspect.json",
    "037-service-create-replicated-full-detach.json",
    "038-service-create-duplicate-name.json",
    "039-service-create-invalid-constraint.json",
    "040-service-create-mounts-dnsrr-detach.json",
    "041-service-create-logger-progress.json",
    "042-service-create-global-progress.json",
    "043-service-ls.json",
    "044-service-ls-q.json",
    "045-service-ls-filter-name.json",
    "046-service-ls-filter-label.json",
    "047-service-ls-filter-id.json",
    "048-service-ls-filter-mode-global.json",
    "049-service-ls-filter-mode-replicated.json",
    "050-service-ps.json",
    "051-service-ps-filter-desired-running.json",
    "052-service-ps-no-trunc.json",
    "053-service-ps-multi.json",
    "054-service-inspect.json",
    "055-service-inspect-pretty.json",
    "056-service-inspect-missing.json",
    "057-node-ps-self.json",
    "058-node-ps-filter-running.json",
    "059-service-update-replicas.json",
    "060-service-update-image-progress.json",
    "061-service-update-env-add.json",
    "062-service-update-publish-add.json",
    "063-service-update-constraint-add.json",
    "064-service-update-rollback-flag.json",
    "065-service-update-force.json",
    "066-service-update-stale-version.json",
    "067-service-rollback-progress.json",
    "068-service-scale-two.json",
    "069-service-scale-detach.json",
    "070-service-scale-global-error.json",
    "072-service-logs-tail-timestamps.json",
    "075-service-logs-task-id.json",
    "077-secret-rm-in-use.json",
    "078-config-rm-in-use.json",
    "079-network-rm-in-use.json",
    "080-service-rm-missing.json",
    "081-secret-inspect-missing.json",
    "082-stack-deploy.json",
    "083-stack-deploy-again.json",
    "086-stack-ps.json",
    "088-stack-rm.json",
    "090-service-rm.json",
    "091-secret-rm.json",
    "092-config-rm.json",
    "093-network-rm.json",
    "094-node-update-label-rm-final.json",
)
# The events the scenario recorded (`docker events --since ... --until ...`).
EVENT_FILES = ("033-events-since-until.json", "076-events-since-until-filter-service.json")

# Paths not replayed: what shoal does not serve as a swarm object.
NOT_REPLAYED = re.compile(r"^/v1\.41/(distribution|events|version)|/logs$")
ID_RE = re.compile(r"^[0-9a-z]{25}$")
TERMINAL = ("complete", "shutdown", "failed", "rejected", "orphaned")
SECRET_PAYLOAD = base64.b64encode(b"ref-payload\n").decode()
# The pace of the replayed services' updates and health checks (values only).
FASTER = {"Delay": 100_000_000, "Monitor": 500_000_000}
HEALTH_INTERVAL_NS = 200_000_000
# A service converges (its tasks run, its update completes) within this bound.
CONVERGE_TIMEOUT_S = 30.0

# Known differences, each with its reason: (request, difference prefix, reason). A
# difference found is known when its request is the entry's (`*`: any) and it starts
# with the entry's prefix. The test fails if a new one appears, or if an entry no longer
# matches anything (so the list stays true).
ANY = "*"
KNOWN_DIFFERENCES: list[tuple[str, str, str]] = [
    *(
        (
            req,
            f"only {side}: {path}",
            "dockerd answers a network that has containers on its own node from libnetwork's"
            " local view (its containers by container ID, the node's load-balancer endpoint,"
            " the peer nodes, Labels {}); shoal answers the swarm view (Containers null), as"
            " dockerd does for a network without local containers: a process-runtime task has"
            " no container ID to key it by",
        )
        for req in ("GET /networks/{id}", "GET /networks/{id}?scope")
        for side, path in (
            ("dockerd", ".Containers"),
            ("dockerd", ".Peers"),
            ("dockerd", ".Labels: object"),
            ("shoal", ".Containers: null"),
            ("shoal", ".Labels: null"),
        )
    ),
    *(
        (
            "GET /networks",
            f"only dockerd: {path}",
            "dockerd also lists its engine's local networks (bridge, host, none,"
            " docker_gwbridge); shoal has swarm networks only",
        )
        for path in ("[].Containers: object", "[].Options.com.docker.network.")
    ),
    *(
        (
            "GET /info",
            f"only {side}: {path}",
            "the engine's own (runc and containerd's"
            " runtimes, AppArmor, seccomp, volume and network plugins): a process-runtime node"
            " has none of them, and names its own runtime",
        )
        for side, path in (
            ("dockerd", ".Runtimes."),
            ("dockerd", ".SecurityOptions[]"),
            ("dockerd", ".Plugins.Network[]"),
            ("dockerd", ".Plugins.Volume[]"),
            ("shoal", ".Runtimes.process"),
        )
    ),
    *(
        (ANY, f"only dockerd: {path}", "the process runtime runs no container")
        for path in (".Status.ContainerStatus.ContainerID", "[].Status.ContainerStatus.ContainerID")
    ),
    # Timing, not shape: the replay waits for each service to converge before it reads
    # on, while the CLI's progress display read dockerd's tasks before they had started
    # (no ContainerStatus yet) and stopped before the update's monitor period ended
    # (no CompletedAt yet).
    ("GET /tasks?filters", "only shoal: [].Status.ContainerStatus", "tasks not started yet"),
    ("GET /services/{id}?insertDefaults", "only shoal: .UpdateStatus.CompletedAt", "update on"),
]


def _template(method: str, path: str, query: dict[str, Any]) -> str:
    parts = path.removeprefix("/v1.41").split("/")
    out = [p if i < 2 or p in ("update", "create") else "{id}" for i, p in enumerate(parts)]
    keys = "&".join(sorted(query))
    return f"{method} {'/'.join(out)}" + (f"?{keys}" if keys else "")


class Replay:
    """dockerd's IDs mapped to shoal's, and the requests rewritten with them."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.ids: dict[str, str] = {}
        # dockerd's task IDs -> their service's dockerd ID (from its recorded answers)
        self.task_service: dict[str, str] = {}
        # each difference found, with the files where it was
        self.found: dict[str, set[str]] = {}

    def to_shoal(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.ids.get(value, value)
        if isinstance(value, list):
            return [self.to_shoal(v) for v in value]
        if isinstance(value, dict):
            return {k: self.to_shoal(v) for k, v in value.items()}
        return value

    def to_dockerd(self, text: str) -> str:
        for theirs, ours in self.ids.items():
            text = text.replace(ours, theirs)
        return text

    def path_id(self, segment: str) -> str:
        if segment in self.ids or not ID_RE.match(segment):
            return self.ids.get(segment, segment)
        service = self.task_service.get(segment)
        if service is not None:  # a task: one of the same service's running on shoal
            tasks = self.daemon.api.tasks(filters={"service": self.ids[service]})
            running = [t for t in tasks if t["Status"]["State"] == "running"]
            self.ids[segment] = (running or tasks)[0]["ID"]
            return self.ids[segment]
        return segment

    def query(self, e: dict[str, Any], path: str) -> dict[str, str]:
        q: dict[str, str] = {}
        for k, v in (e.get("query") or {}).items():
            if k == "filters":
                q[k] = json.dumps(self.filters(v))
            elif k == "version":
                q[k] = str(self.version_of(path))
            else:
                q[k] = v
        return q

    def filters(self, f: dict[str, dict[str, bool]]) -> dict[str, dict[str, bool]]:
        out: dict[str, dict[str, bool]] = {}
        for name, values in f.items():
            out[name] = {}
            for v in values:
                mapped = self.ids.get(v, v)
                if name == "id" and mapped == v:  # an ID prefix
                    full = [k for k in self.ids if k.startswith(v)]
                    mapped = self.ids[full[0]][: len(v)] if full else v
                out[name][mapped] = True
        return out

    def version_of(self, path: str) -> int:
        """The object's version on shoal, as the CLI's read-modify-write sends it."""
        target = path.removeprefix("/v1.41").removesuffix("/update")
        r = self.daemon.http("GET", target)
        assert r.status == 200, r
        index = r.json()["Version"]["Index"]
        assert isinstance(index, int)
        return index

    def body(self, body: Any) -> Any:
        body = self.to_shoal(body)
        if isinstance(body, dict):
            if isinstance(body.get("Data"), str) and body["Data"].startswith("<masked"):
                body["Data"] = SECRET_PAYLOAD
            cs = (body.get("TaskTemplate") or {}).get("ContainerSpec") or {}
            if (cs.get("Args") or [None])[0] == "httpd":
                cs["Args"] = ["sleep", "3600"]
                # Its health check asks the server it no longer runs: a check that
                # passes, of the same shape (process tasks run health checks too).
                if (cs.get("Healthcheck") or {}).get("Test"):
                    cs["Healthcheck"]["Test"] = ["CMD-SHELL", "true"]
            # Values, not shapes: the update's pace cut from dockerd's 2 s delay, 5 s
            # monitor and 2 s health interval (about 18 s an update of three tasks).
            for key, value in FASTER.items():
                if isinstance(body.get("UpdateConfig"), dict) and key in body["UpdateConfig"]:
                    body["UpdateConfig"][key] = value
            if isinstance(cs.get("Healthcheck"), dict) and "Interval" in cs["Healthcheck"]:
                cs["Healthcheck"]["Interval"] = HEALTH_INTERVAL_NS
        return body

    def learn(self, theirs: Any, ours: Any) -> None:
        """Map the IDs of dockerd's answer onto those of shoal's (same objects)."""
        if isinstance(theirs, dict) and isinstance(ours, dict):
            for key in ("ID", "Id"):  # networks answer "Id"
                if isinstance(theirs.get(key), str) and isinstance(ours.get(key), str):
                    self.ids.setdefault(theirs[key], ours[key])
        if isinstance(theirs, list) and isinstance(ours, list):
            # lists answered for the same filters: match by name where there is one
            def name(o: Any) -> str:
                return str((o.get("Spec") or {}).get("Name") or o.get("Name") or "")

            by_name = {name(o): o for o in ours if isinstance(o, dict)}
            for t in theirs:
                if isinstance(t, dict) and name(t) and name(t) in by_name:
                    self.learn(t, by_name[name(t)])

    def run(self, name: str) -> None:
        exchanges = json.loads((TRANSCRIPTS / name).read_text())
        stale_next = False
        for e in exchanges:
            if "proxy_note" in e:
                stale_next = True
                continue
            path = e["path"]
            if not path.startswith("/v1.41") or NOT_REPLAYED.search(path):
                continue
            parts = path.split("/")
            path = "/".join([*parts[:3], *(self.path_id(p) for p in parts[3:])])
            query = self.query(e, path)
            if stale_next:  # the proxy's race: a no-op update between GET and POST
                self._bump(path)
                stale_next = False
            body = self.body(e.get("request_body"))
            url = path + ("?" + urllib.parse.urlencode(query) if query else "")
            r = self.daemon.http(e["method"], url, body=body)
            self.compare(name, e, r.status, r.body)
            if e["method"] == "POST" and e["status"] < 300 and "/services/" in path:
                self._converge(r.json().get("ID") or path.split("/")[3])

    def _bump(self, path: str) -> None:
        target = path.removesuffix("/update")
        spec = self.daemon.http("GET", target).json()["Spec"]
        # what the recording proxy changed (a label), so the next read shows it too
        spec["Labels"]["com.example.race-bump"] = str(int(time.time()))
        r = self.daemon.http("POST", f"{path}?version={self.version_of(path)}", body=spec)
        assert r.status == 200, r

    def _converge(self, service_id: str) -> None:
        """Wait as the CLI's progress display does (or as time does, for --detach):
        the service's tasks running and its update, if any, over."""

        def settled() -> bool:
            r = self.daemon.http("GET", f"/services/{service_id}")
            if r.status == 404:
                return True
            svc = r.json()
            state = (svc.get("UpdateStatus") or {}).get("State", "completed")
            if state in ("updating", "rollback_started"):
                return False
            tasks = self.daemon.api.tasks(filters={"service": service_id})
            return all(
                t["Status"]["State"] == t["DesiredState"]
                or t["DesiredState"] != "running"
                and t["Status"]["State"] in TERMINAL
                for t in tasks
            )

        wait_until(settled, timeout=CONVERGE_TIMEOUT_S, what=f"service {service_id} settled")

    def note(self, name: str, difference: str) -> None:
        self.found.setdefault(difference, set()).add(name[:3])

    def compare(self, name: str, e: dict[str, Any], status: int, raw: bytes) -> None:
        key = _template(e["method"], e["path"], e.get("query") or {})
        if status != e["status"]:
            self.note(name, f"{key}: status dockerd {e['status']}, shoal {status}")
            return
        theirs = e.get("response_body")
        if e.get("response_body_compacted"):
            return
        if not raw.strip():
            if theirs not in (None, ""):
                self.note(name, f"{key}: no body from shoal")
            return
        ours = json.loads(raw)
        if status >= 400:
            if self.to_dockerd(ours.get("message", "")) != theirs.get("message"):
                self.note(
                    name,
                    f"{key}: message dockerd {theirs.get('message')!r}, "
                    f"shoal {self.to_dockerd(ours.get('message', ''))!r}",
                )
            return
        self.learn(theirs, ours)
        for d in differences(theirs, ours):
            self.note(name, f"{key}: {d}")


def _index_tasks(replay: Replay) -> None:
    """Which service each of dockerd's tasks belongs to (from its recorded answers)."""
    for path in sorted(TRANSCRIPTS.glob("0*.json")):
        for e in json.loads(path.read_text()):
            body = e.get("response_body")
            if e.get("path", "").startswith("/v1.41/tasks") and e.get("status") == 200:
                for t in body if isinstance(body, list) else [body]:
                    if isinstance(t, dict) and "ServiceID" in t:
                        replay.task_service[t["ID"]] = t["ServiceID"]


def _recorded_events() -> list[dict[str, Any]]:
    out = []
    for name in EVENT_FILES:
        for e in json.loads((TRANSCRIPTS / name).read_text()):
            if e.get("path", "").startswith("/v1.41/events"):
                out += [json.loads(line) for line in e["response_body"].splitlines() if line]
    return out


def _events_by_kind(events: list[dict[str, Any]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for ev in events:
        # An event's attributes name what changed: their keys vary by event, not shape.
        ev = {**ev, "Actor": {**ev["Actor"], "Attributes": {}}}
        out.setdefault(f"{ev['Type']} {ev['Action']}", set()).update(shape(ev))
    return out


@pytest.fixture(scope="module")
def replayed(daemon_factory: Any) -> Iterator[tuple[Replay, float]]:
    daemon = daemon_factory(node_name="vm")
    started = time.time()
    daemon.docker("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", "127.0.0.1:0")
    replay = Replay(daemon)
    info = daemon.http("GET", "/info").json()
    replay.ids["m8iscv2hlwo0lxv7n09upaopt"] = info["Swarm"]["NodeID"]
    _index_tasks(replay)
    for name in REPLAYED:
        replay.run(name)
    yield replay, started


def test_every_answer_has_dockerds_status_shape_and_message(
    replayed: tuple[Replay, float],
) -> None:
    replay, _ = replayed
    used: set[int] = set()
    new = []
    for difference, files in sorted(replay.found.items()):
        request, _, what = difference.partition(": ")
        hits = [
            i
            for i, (req, prefix, _) in enumerate(KNOWN_DIFFERENCES)
            if req in (ANY, request) and what.startswith(prefix)
        ]
        used.update(hits)
        if not hits:
            new.append(f"{difference}  (in {', '.join(sorted(files))})")
    assert not new, "differences from dockerd:\n" + "\n".join(new)
    stale = [k for i, k in enumerate(KNOWN_DIFFERENCES) if i not in used]
    assert not stale, f"no longer differ: {stale}"


def test_events_have_dockerds_shape(replayed: tuple[Replay, float]) -> None:
    replay, started = replayed
    r = replay.daemon.http("GET", f"/events?since={started:.3f}&until={time.time():.3f}")
    ours = _events_by_kind([json.loads(line) for line in r.body.splitlines() if line])
    theirs = _events_by_kind(_recorded_events())
    found = set()
    for kind, paths in theirs.items():
        if kind not in ours:
            found.add(f"{kind}: only dockerd")
            continue
        found |= {f"{kind}: only dockerd: {p}" for p in paths - ours[kind]}
        found |= {f"{kind}: only shoal: {p}" for p in ours[kind] - paths}
    assert found == set()
