"""Object IDs as SwarmKit makes them: 128 random bits in base 36, 25 characters."""

from __future__ import annotations

import secrets

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


def new_id() -> str:
    """A fresh object ID, such as `0dvy6tyna1geo22o9oo5k2pfa`."""
    return to_base36(secrets.randbits(128), ID_LENGTH)
