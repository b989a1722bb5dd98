"""hasher: the hex SHA-256 of a POSTed body. 0.1 s per request, requests served
concurrently (a thread each), so it is never the bottleneck."""

from __future__ import annotations

import hashlib
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(os.environ.get("PORT", "80"))
DELAY_S = 0.1


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        time.sleep(DELAY_S)
        self._answer(hashlib.sha256(body).hexdigest().encode())

    def do_GET(self) -> None:
        self._answer(b"HASHER running on " + os.uname().nodename.encode() + b"\n")

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


if __name__ == "__main__":
    print(f"hasher listening on port {PORT}", flush=True)
    ThreadingHTTPServer(("", PORT), Handler).serve_forever()
