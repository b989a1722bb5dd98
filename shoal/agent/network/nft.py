"""nftables, driven with `nft -f -` scripts (docs/networking.md, "Load balancing").

A table is always replaced whole in one transaction: the script declares it (a no-op
when it exists), deletes it and declares it again with its chains and rules, and `nft
-f` applies the lot atomically: a packet sees the old table or the new one, never a mix,
and a failure leaves the old one. Removal is declare-then-delete, so a table already gone
is not an error. Names are never matched: callers name the table they recorded.

A script runs in the namespace named by a path: the calling thread enters it (setns is
per thread, netns.Entered) and hands the script to libnftables, the library the `nft`
command is built on, there: its netlink socket is opened in that namespace. That costs
~0.6 ms of CPU a script against ~15 ms for an `nft -f -` process (measured on this VM),
which matters because every task namespace holds a VIP table that follows its networks'
backends. A script that deletes anything (a table, a chain, a rule, a set element) also
waits ~13 ms for the kernel's RCU grace period before it returns, without using the CPU:
many namespaces' scripts are best applied from several threads at once (the GIL is
released while libnftables runs), and a table in a namespace just made is created
without the declare-and-delete (`create_table`). Where the library cannot be loaded, the
`nft` command is run instead. Synchronous: callers run it in threads.
"""

from __future__ import annotations

import ctypes
import subprocess
import threading

from shoal.agent.network import netns

NFT = "nft"
TIMEOUT_S = 20.0


class NftError(RuntimeError):
    pass


def replace_table(family: str, name: str, body: str) -> str:
    """The script that replaces table `family name` by one holding `body`."""
    return f"table {family} {name} {{}}\ndelete table {family} {name}\ntable {family} {name} {{\n{body}}}\n"


def create_table(family: str, name: str, body: str) -> str:
    """The script that creates table `family name` holding `body`, for a namespace known
    to have none (just made): it deletes nothing, so it costs no RCU grace period."""
    return f"table {family} {name} {{\n{body}}}\n"


def delete_table(family: str, name: str) -> str:
    return f"table {family} {name} {{}}\ndelete table {family} {name}\n"


def run(ns: str | None, script: str) -> None:
    """Apply `script` in the namespace named by `ns` (None: the caller's)."""
    if ns:
        with netns.Entered(ns):
            rc, err = _apply(script)
    else:
        rc, err = _apply(script)
    if rc != 0:
        raise NftError(f"nft -f failed ({rc}): {err.strip()}\n{script}")


class _Lib:
    """libnftables through ctypes: a context per script (its netlink socket is opened
    where the context is made, so in the namespace the calling thread is in)."""

    def __init__(self) -> None:
        lib = ctypes.CDLL("libnftables.so.1")
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self.lib = lib

    def apply(self, script: str) -> tuple[int, str]:
        lib = self.lib
        ctx = lib.nft_ctx_new(0)
        if not ctx:
            raise NftError("nft_ctx_new failed")
        try:
            lib.nft_ctx_buffer_output(ctx)
            lib.nft_ctx_buffer_error(ctx)
            rc = int(lib.nft_run_cmd_from_buffer(ctx, script.encode()))
            err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
        finally:
            lib.nft_ctx_free(ctx)
        return rc, err


_lib: _Lib | None = None
_lib_missing = False
_lib_lock = threading.Lock()


def _apply(script: str) -> tuple[int, str]:
    global _lib, _lib_missing
    if _lib is None and not _lib_missing:
        with _lib_lock:
            if _lib is None and not _lib_missing:
                try:
                    _lib = _Lib()
                except (OSError, AttributeError):
                    _lib_missing = True
    if _lib is not None:
        return _lib.apply(script)
    done = _nft(script)
    return done.returncode, done.stderr


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
