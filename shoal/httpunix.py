"""HTTP/1.1 over a unix socket with the standard library's http.client: the one
blocking client connection the `shoal` command, the agent's blocking engine calls, the
benchmarks and the integration tests' harness all use."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

DEFAULT_TIMEOUT_S = 10.0


class UnixHTTPConnection(http.client.HTTPConnection):
    """An http.client connection to the unix socket at `path` (the `Host` header says
    localhost, as the docker CLI's does)."""

    def __init__(self, path: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def request(
    path: str,
    method: str,
    url: str,
    body: Any = None,
    raw: bytes | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> tuple[int, bytes]:
    """One request on a connection of its own to the socket at `path`: `body` sent as
    JSON (or `raw` bytes as they are); the status and the whole answer. OSError and
    http.client.HTTPException as the connection raises them."""
    headers = {}
    payload = raw
    if body is not None:
        payload = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    conn = UnixHTTPConnection(path, timeout)
    try:
        conn.request(method, url, body=payload, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()
