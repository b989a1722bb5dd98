"""Object IDs as SwarmKit makes them: 128 random bits in base 36, 25 characters."""

from __future__ import annotations

import os
import threading

ID_LENGTH = 25
_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


# every two-digit base-36 string: converting two digits per division halves the work
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]


def to_base36(value: int, width: int) -> str:
    chunks = []
    while value:
        value, rem = divmod(value, 1296)
        chunks.append(_PAIRS[rem])
    return "".join(reversed(chunks)).lstrip("0").rjust(width, "0")


# Random bytes are drawn from the OS (as secrets does) this many IDs at a time: one
# getrandom() per ID releases the GIL, and a thread busy meanwhile (a commit being
# sealed) then holds the event loop up to the switch interval (5 ms) per ID; a build of
# 1,000 tasks paid that a thousand times in one turn (issue 15).
_IDS_PER_DRAW = 256
_ID_BYTES = 16
_pool = b""
_used = 0  # bytes of _pool already given out
_lock = threading.Lock()


def _forget_pool() -> None:
    """A forked child must not give out its parent's next IDs."""
    global _pool, _used
    _pool, _used = b"", 0


os.register_at_fork(after_in_child=_forget_pool)


def new_id() -> str:
    """A fresh object ID, such as `0dvy6tyna1geo22o9oo5k2pfa`: 128 bits from the OS's
    random source."""
    global _pool, _used
    with _lock:
        if _used >= len(_pool):
            _pool, _used = os.urandom(_ID_BYTES * _IDS_PER_DRAW), 0
        value = int.from_bytes(_pool[_used : _used + _ID_BYTES], "big")
        _used += _ID_BYTES
    return to_base36(value, ID_LENGTH)
