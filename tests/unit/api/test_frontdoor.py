"""The API's front door (shoal/api/frontdoor.py): on its own thread it answers the
ping and the service and node lists from the store's snapshot, and hands every other
connection, as it arrived, to the aiohttp server on the event loop. The real
APIServer on a unix socket, the real store, http.client as the client."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from shoal.api.frontdoor import parse_head
from shoal.api.server import APIServer
from shoal.httpunix import UnixHTTPConnection
from shoal.manager.store import MemoryBackend, Store
from shoal.metrics import Metrics
from shoal.types.task import TaskState

from ..manager.test_store_contract import node, service, task


class Daemon:
    """The API's view of a manager daemon (what the routes read of it)."""

    node_name = "solo"
    runtime = "sim"
    engine_labels: dict[str, str] = {}
    engine_host = None
    node_id = "n1"
    locked = False
    node_addr = "127.0.0.1"
    manager_addr = "127.0.0.1:2377"
    remote_managers = ["127.0.0.1:2377"]
    several_managers = False
    leader_id = None

    def __init__(self, data_dir: Path, store: Store | None) -> None:
        self.data_dir = data_dir
        self.metrics = Metrics()
        self.manager = SimpleNamespace(store=store) if store is not None else None

    def running_tasks(self) -> tuple[int, int]:
        return 0, 0

    async def store_moved(self) -> None:
        return None

    async def write_leader(self, wait_s: float) -> str | None:
        return None  # the only manager: it takes its writes itself

    def dependency_counts(self) -> dict[str, int]:
        return {}


def _info(body: bytes) -> dict[str, Any]:
    """`/info` less what changes from one call to the next."""
    info = json.loads(body)
    del info["SystemTime"], info["NFd"]
    return info  # type: ignore[no-any-return]


def test_request_heads_it_may_answer() -> None:
    head = parse_head(b"GET /v1.41/services?status=1&status=0 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head is not None
    assert (head.method, head.path, head.query, head.keep_alive) == (
        "GET",
        "/v1.41/services",
        {"status": "1"},
        True,
    )
    assert (
        parse_head(b"GET /_ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").keep_alive
        is False
    )  # type: ignore[union-attr]
    assert parse_head(b"GET /_ping HTTP/1.0\r\n\r\n").keep_alive is False  # type: ignore[union-attr]
    for refused in (
        b"POST /services/create HTTP/1.1\r\nContent-Length: 2\r\n\r\n",
        b"GET /services HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
        b"GET /services HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET /containers/x/attach HTTP/1.1\r\nUpgrade: tcp\r\n\r\n",
        b"GET /services HTTP/2\r\n\r\n",
        b"GET services HTTP/1.1\r\n\r\n",
        b"GET /_ping HTTP/1.1\r\n\r\n",  # no Host: not HTTP/1.1 (h11 refuses it)
    ):
        assert parse_head(refused) is None, refused


async def _serve(tmp_path: Path, daemon: Daemon, fn: Any) -> Any:
    sock = tmp_path / "api.sock"
    api = APIServer(daemon, [f"unix://{sock}"])  # type: ignore[arg-type]
    await api.start()
    try:
        return await asyncio.to_thread(fn, str(sock), api)
    finally:
        await api.stop()
    assert not sock.exists()


def _get(conn: UnixHTTPConnection, method: str, url: str, body: bytes | None = None) -> Any:
    conn.request(method, url, body=body)
    resp = conn.getresponse()
    return resp.status, dict(resp.getheaders()), resp.read()


def test_it_answers_lists_from_the_snapshot_as_the_loop_does(tmp_path: Path) -> None:
    async def main() -> None:
        store = Store(MemoryBackend())
        web = service("web", replicas=2)
        await store.update(lambda tx: (tx.create(web), tx.create(node("n1"))))
        await store.update(lambda tx: tx.create(task("t1", web, 1, TaskState.RUNNING)))

        def client(path: str, api: APIServer) -> None:
            door = api._doors[0]
            front = UnixHTTPConnection(path)
            # a kept-alive connection: the ping and both lists answered on the thread
            assert _get(front, "HEAD", "/_ping")[0] == 200
            status, headers, fast = _get(front, "GET", "/v1.41/services?status=true")
            assert status == 200 and headers["API-Version"] == "1.41"
            assert headers["Content-Type"] == "application/json"
            shown = json.loads(fast)
            assert [s["ID"] for s in shown] == ["web"]
            assert shown[0]["ServiceStatus"] == {
                "RunningTasks": 1,
                "DesiredTasks": 2,
                "CompletedTasks": 0,
            }
            _, _, fast_nodes = _get(front, "GET", "/v1.41/nodes")
            _, _, fast_filtered = _get(
                front, "GET", '/v1.41/services?filters={"name":{"nope":true}}&status=1'
            )
            assert json.loads(fast_filtered) == []
            _, _, fast_info = _get(front, "GET", "/v1.41/info")
            assert _info(fast_info)["Swarm"]["Nodes"] == 1
            assert (door.answered, door.handed_over) == (5, 0)

            # a connection whose first request is the loop's stays the loop's: the same
            # lists answered there are the same bytes
            loop = UnixHTTPConnection(path)
            assert _get(loop, "POST", "/v1.41/nodes/n1/update", b"{}")[0] == 400  # no version
            assert door.handed_over == 1
            assert _get(loop, "GET", "/v1.41/services?status=true")[2] == fast
            assert _get(loop, "GET", "/v1.41/nodes")[2] == fast_nodes
            assert _info(_get(loop, "GET", "/v1.41/info")[2]) == _info(fast_info)
            assert door.answered == 5
            # what it cannot answer goes to the loop, which says what is wrong
            status, _, body = _get(front, "GET", '/services?filters={"mode":{"bogus":true}}')
            assert status == 400 and b"Invalid filter" in body
            other = UnixHTTPConnection(path)
            assert _get(other, "GET", "/v1.99/services")[0] == 400
            other.close()
            assert door.handed_over == 3
            front.close()
            loop.close()

        await _serve(tmp_path, Daemon(tmp_path, store), client)

    asyncio.run(main())


def test_a_daemon_outside_a_swarm_is_answered_by_the_loop(tmp_path: Path) -> None:
    async def main() -> None:
        daemon = Daemon(tmp_path, None)

        def client(path: str, api: APIServer) -> None:
            conn = UnixHTTPConnection(path)
            assert _get(conn, "GET", "/_ping")[2] == b"OK"
            status, _, body = _get(conn, "GET", "/v1.41/services")
            assert status == 503 and b"not a swarm manager" in body
            conn.close()
            assert (api._doors[0].answered, api._doors[0].handed_over) == (1, 1)

        await _serve(tmp_path, daemon, client)
        count = daemon.metrics.registry.get_sample_value(
            "shoal_api_request_duration_seconds_count",
            {"method": "GET", "route": "/_ping", "status": "200"},
        )
        assert count == 1

    asyncio.run(main())
