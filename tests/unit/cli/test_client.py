"""The `shoal` command's client reaches a `tcp://` host as well as a unix socket."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shoal.cli.client import APIError, Client, TCPClient


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        status, body = (
            (200, [{"path": self.path}]) if "ok" in self.path else (404, {"message": "gone"})
        )
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


def test_tcp_host(server: ThreadingHTTPServer) -> None:
    client = Client.for_host(f"tcp://127.0.0.1:{server.server_address[1]}")
    assert isinstance(client, TCPClient)
    got = client.request("GET", "/ok", query={"filters": {"label": {"a=b": True}}})
    assert got == [{"path": "/v1.41/ok?filters=%7B%22label%22%3A+%7B%22a%3Db%22%3A+true%7D%7D"}]
    with pytest.raises(APIError) as info:
        client.request("GET", "/missing")
    assert (info.value.status, info.value.message) == (404, "gone")


def test_unix_host() -> None:
    client = Client.for_host("unix:///run/x.sock")
    assert type(client) is Client and client.socket_path == "/run/x.sock"
