"""nftables, driven with `nft -f -` scripts (docs/networking.md, "Load balancing").

A table is always replaced whole in one transaction: the script declares it (a no-op
when it exists), deletes it and declares it again with its chains and rules, and `nft
-f` applies the lot atomically: a packet sees the old table or the new one, never a mix,
and a failure leaves the old one. Removal is declare-then-delete, so a table already gone
is not an error. Names are never matched: callers name the table they recorded.

`nft` runs in the namespace named by a path: the calling thread enters it (setns is per
thread, netns.Entered) and the child it forks starts there. Synchronous: callers run it
in threads.
"""

from __future__ import annotations

import subprocess

from shoal.agent.network import netns

NFT = "nft"
TIMEOUT_S = 20.0


class NftError(RuntimeError):
    pass


def replace_table(family: str, name: str, body: str) -> str:
    """The script that replaces table `family name` by one holding `body`."""
    return f"table {family} {name} {{}}\ndelete table {family} {name}\ntable {family} {name} {{\n{body}}}\n"


def delete_table(family: str, name: str) -> str:
    return f"table {family} {name} {{}}\ndelete table {family} {name}\n"


def run(ns: str | None, script: str) -> None:
    """Apply `script` with `nft -f -` in the namespace named by `ns` (None: the caller's)."""
    if ns:
        with netns.Entered(ns):
            done = _nft(script)
    else:
        done = _nft(script)
    if done.returncode != 0:
        raise NftError(f"nft -f failed ({done.returncode}): {done.stderr.strip()}\n{script}")


def _nft(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [NFT, "-f", "-"], input=script, capture_output=True, text=True, timeout=TIMEOUT_S
    )


def list_table(ns: str | None, family: str, name: str) -> str | None:
    """The table as `nft list table` shows it; None when it is not there."""
    argv = [NFT, "list", "table", family, name]
    if ns:
        with netns.Entered(ns):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S)
    else:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S)
    return done.stdout if done.returncode == 0 else None
