"""rng: random bytes over HTTP (GET /N answers N random bytes).

It takes 0.1 s per request and serves ONE request at a time (a lock): this is the
bottleneck of DockerCoins, which only more replicas of rng relieve."""

from __future__ import annotations

import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(os.environ.get("PORT", "80"))
DELAY_S = 0.1
MAX_BYTES = 1 << 16
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        path = self.path.strip("/")
        if not path:
            self._answer(200, b"RNG running on " + os.uname().nodename.encode() + b"\n")
            return
        if not path.isdigit() or int(path) > MAX_BYTES:
            self._answer(400, b"GET /N with N a number of bytes\n")
            return
        with LOCK:  # one at a time: what makes rng the bottleneck
            time.sleep(DELAY_S)
            data = os.urandom(int(path))
        self._answer(200, data, "application/octet-stream")

    def _answer(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet per request
        pass


if __name__ == "__main__":
    print(f"rng listening on port {PORT}", flush=True)
    ThreadingHTTPServer(("", PORT), Handler).serve_forever()
