"""worker: the DockerCoins miner. Each loop: 32 random bytes from rng, their hash from
hasher, a coin when the hash starts with "0"; counted in redis (hashes, coins, and per
worker hostname). It pauses 0.1 s per loop, so about 10 loops per second at most, and
opens a new HTTP connection per request, so rng's VIP spreads them over its replicas."""

from __future__ import annotations

import http.client
import os
import socket
import time

import redis

RNG = os.environ.get("RNG", "rng")
HASHER = os.environ.get("HASHER", "hasher")
REDIS = os.environ.get("REDIS", "redis")
PAUSE_S = 0.1
RETRY_S = 1.0
TIMEOUT_S = 10.0


def request(host: str, method: str, path: str, body: bytes | None = None) -> bytes:
    """One request on a connection of its own."""
    conn = http.client.HTTPConnection(host, 80, timeout=TIMEOUT_S)
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise OSError(f"{host}{path}: HTTP {resp.status}")
        return data
    finally:
        conn.close()


def mine(db: redis.Redis, me: str) -> None:
    while True:
        time.sleep(PAUSE_S)
        random_bytes = request(RNG, "GET", "/32")
        digest = request(HASHER, "POST", "/", random_bytes).decode()
        pipe = db.pipeline(transaction=False)
        pipe.incr("hashes")
        pipe.hincrby("workers", me, 1)
        if digest.startswith("0"):
            pipe.incr("coins")
            pipe.hset("wallet", digest, random_bytes.hex())
        pipe.execute()


def main() -> None:
    me = socket.gethostname()
    print(f"worker {me} mining with {RNG}, {HASHER}, {REDIS}", flush=True)
    db = redis.Redis(host=REDIS, port=6379, socket_timeout=TIMEOUT_S)
    while True:
        try:
            mine(db, me)
        except (OSError, redis.RedisError) as e:  # a service not there yet, or restarting
            print(f"worker {me}: {e}; again in {RETRY_S} s", flush=True)
            time.sleep(RETRY_S)


if __name__ == "__main__":
    main()
