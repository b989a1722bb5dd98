"""HTTP/1.1 over a unix socket with the standard library's http.client: the one
blocking client connection the `shoal` command, the agent's blocking engine calls, the
benchmarks and the integration tests' harness all use."""

from __future__ import annotations

import http.client
import socket

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
