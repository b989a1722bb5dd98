"""A small synchronous Docker Engine API client (stdlib only), for the `shoal` command's
own use: over a unix socket, or plain HTTP to a `tcp://` host."""

from __future__ import annotations

import http.client
import json
import urllib.parse
from typing import Any

from shoal.httpunix import UnixHTTPConnection

API_PREFIX = "/v1.41"
DEFAULT_TIMEOUT_S = 30.0


class APIError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class Client:
    def __init__(self, socket_path: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    @classmethod
    def for_host(cls, host: str, timeout: float = DEFAULT_TIMEOUT_S) -> Client:
        """A client for a DOCKER_HOST-style address: `unix:///PATH` (or a bare path)
        or `tcp://ADDR:PORT`."""
        if host.startswith("tcp://"):
            return TCPClient(host.removeprefix("tcp://").rstrip("/"), timeout)
        return cls(host.removeprefix("unix://"), timeout)

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        return UnixHTTPConnection(self.socket_path, timeout)

    def request(
        self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None
    ) -> Any:
        url = API_PREFIX + path
        if query:
            url += "?" + urllib.parse.urlencode(
                {k: json.dumps(v) if isinstance(v, dict) else v for k, v in query.items()}
            )
        conn = self._connection(self.timeout)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            conn.request(method, url, body=payload, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        parsed = json.loads(data) if data.strip() else None
        if resp.status >= 400:
            message = parsed.get("message", "") if isinstance(parsed, dict) else str(parsed)
            raise APIError(resp.status, message)
        return parsed

    def ping(self) -> bool:
        try:
            conn = self._connection(2.0)
            conn.request("HEAD", "/_ping")
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        except OSError:
            return False


class TCPClient(Client):
    """The same client over plain TCP (`tcp://` hosts: loopback and tests)."""

    def __init__(self, address: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__(address, timeout)

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.socket_path, timeout=timeout)
