"""webui: the page with a live graph of hashes per second. GET /json answers the
counters from redis with a timestamp; the page (index.html beside this file) polls it
each second and draws the rate."""

from __future__ import annotations

import json
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import redis

PORT = int(os.environ.get("PORT", "80"))
REDIS = os.environ.get("REDIS", "redis")
PAGE = (Path(__file__).resolve().parent / "index.html").read_bytes()
DB = redis.Redis(host=REDIS, port=6379, socket_timeout=5.0)


def counters() -> dict[str, object]:
    hashes, coins = DB.mget("hashes", "coins")
    workers = {k.decode(): int(v) for k, v in DB.hgetall("workers").items()}
    return {
        "now": time.time(),
        "hashes": int(hashes or 0),
        "coins": int(coins or 0),
        "workers": workers,
    }


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path in ("/", "/index.html"):
            self._answer(200, PAGE, "text/html; charset=utf-8")
        elif self.path == "/json":
            try:
                body = json.dumps(counters()).encode()
            except redis.RedisError as e:
                self._answer(503, json.dumps({"message": str(e)}).encode(), "application/json")
                return
            self._answer(200, body, "application/json")
        else:
            self._answer(404, b"not found\n", "text/plain")

    def _answer(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


if __name__ == "__main__":
    print(f"webui listening on port {PORT}", flush=True)
    ThreadingHTTPServer(("", PORT), Handler).serve_forever()
