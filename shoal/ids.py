"""Object IDs as SwarmKit makes them: 128 random bits in base 36, 25 characters."""

from __future__ import annotations

import secrets

ID_LENGTH = 25
_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def to_base36(value: int, width: int) -> str:
    digits = []
    while value:
        value, rem = divmod(value, 36)
        digits.append(_ALPHABET[rem])
    return "".join(reversed(digits)).rjust(width, "0")


def new_id() -> str:
    """A fresh object ID, such as `0dvy6tyna1geo22o9oo5k2pfa`."""
    return to_base36(secrets.randbits(128), ID_LENGTH)
