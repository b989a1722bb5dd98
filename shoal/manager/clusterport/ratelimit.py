"""Token buckets for what an unauthenticated peer may ask of the cluster port (joins:
each one signs a certificate and writes a node)."""

from __future__ import annotations

import time
from collections.abc import Callable

# Joins from one address, and from everyone: a burst, then a steady rate per second.
JOIN_BURST_PER_PEER = 20
JOIN_RATE_PER_PEER = 5.0
JOIN_BURST = 200
JOIN_RATE = 50.0
MAX_TRACKED_PEERS = 4096


class TokenBucket:
    def __init__(self, rate: float, burst: int, now: Callable[[], float]) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._now = now
        self._tokens = float(burst)
        self._at = now()

    def _refill(self) -> None:
        t = self._now()
        self._tokens = min(self._burst, self._tokens + (t - self._at) * self._rate)
        self._at = t

    @property
    def full(self) -> bool:
        self._refill()
        return self._tokens >= self._burst

    def take(self) -> bool:
        self._refill()
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class JoinLimiter:
    """A bucket per peer address and one for all: a join needs a token from both."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self._now = now
        self._all = TokenBucket(JOIN_RATE, JOIN_BURST, now)
        self._peers: dict[str, TokenBucket] = {}
        self.refused = 0

    def allow(self, peer: str) -> bool:
        bucket = self._peers.get(peer)
        if bucket is None:
            if len(self._peers) >= MAX_TRACKED_PEERS:
                # peers whose bucket refilled are as good as new: forget them
                self._peers = {p: b for p, b in self._peers.items() if not b.full}
            if len(self._peers) < MAX_TRACKED_PEERS:
                bucket = self._peers[peer] = TokenBucket(
                    JOIN_RATE_PER_PEER, JOIN_BURST_PER_PEER, self._now
                )
        # a peer beyond those tracked has only the common bucket
        if (bucket is None or bucket.take()) and self._all.take():
            return True
        self.refused += 1
        return False
