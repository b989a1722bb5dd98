"""Token buckets for what an unauthenticated peer may ask of the cluster port (joins:
each one signs a certificate and writes a node). Failed joins (a wrong token, a bad
CSR) also draw from a small bucket of their own per address: a peer that keeps
guessing is refused well before its join bucket would stop it, and a node joining
with the right token from another address is not affected."""

from __future__ import annotations

import time
from collections.abc import Callable

# Joins from one address, and from everyone: a burst, then a steady rate per second.
JOIN_BURST_PER_PEER = 20
JOIN_RATE_PER_PEER = 5.0
JOIN_BURST = 200
JOIN_RATE = 50.0
# Failed joins from one address: a burst, then one every 12 s.
JOIN_FAILURE_BURST_PER_PEER = 5
JOIN_FAILURE_RATE_PER_PEER = 1.0 / 12.0
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

    def has_token(self) -> bool:
        self._refill()
        return self._tokens >= 1.0

    def take(self) -> bool:
        self._refill()
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class PeerBuckets:
    """One bucket per peer address, at most MAX_TRACKED_PEERS of them: when full, the
    peers whose bucket refilled are forgotten (they are as good as new)."""

    def __init__(self, rate: float, burst: int, now: Callable[[], float]) -> None:
        self._rate = rate
        self._burst = burst
        self._now = now
        self._peers: dict[str, TokenBucket] = {}

    def get(self, peer: str) -> TokenBucket | None:
        return self._peers.get(peer)

    def get_or_make(self, peer: str) -> TokenBucket | None:
        """The peer's bucket; None when it is new and MAX_TRACKED_PEERS are tracked."""
        bucket = self._peers.get(peer)
        if bucket is None:
            if len(self._peers) >= MAX_TRACKED_PEERS:
                self._peers = {p: b for p, b in self._peers.items() if not b.full}
            if len(self._peers) < MAX_TRACKED_PEERS:
                bucket = self._peers[peer] = TokenBucket(self._rate, self._burst, self._now)
        return bucket


class JoinLimiter:
    """A bucket per peer address and one for all: a join needs a token from both. A
    failed join also takes a token from the peer's failure bucket; a peer whose
    failure bucket is empty is refused before anything else."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self._all = TokenBucket(JOIN_RATE, JOIN_BURST, now)
        self._peers = PeerBuckets(JOIN_RATE_PER_PEER, JOIN_BURST_PER_PEER, now)
        self._failures = PeerBuckets(JOIN_FAILURE_RATE_PER_PEER, JOIN_FAILURE_BURST_PER_PEER, now)
        self.refused = 0
        self.failed_joins = 0

    def allow(self, peer: str) -> bool:
        bucket = self._peers.get_or_make(peer)
        # a peer beyond those tracked has only the common bucket
        if (bucket is None or bucket.take()) and self._all.take():
            return True
        self.refused += 1
        return False

    def failing(self, peer: str) -> bool:
        """True (and counted as refused) when `peer` has used up its failed joins."""
        bucket = self._failures.get(peer)
        if bucket is None or bucket.has_token():
            return False
        self.refused += 1
        return True

    def failed(self, peer: str) -> None:
        """A join from `peer` failed (wrong token, bad request)."""
        self.failed_joins += 1
        bucket = self._failures.get_or_make(peer)
        if bucket is not None:
            bucket.take()
