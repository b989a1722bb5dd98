"""Helpers for the load-balancing tests: servers that answer a name, clients that count
who answered, in namespaces named by paths."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter

SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[2]))); s.listen(128)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    try:
        c.sendall(sys.argv[1].encode() + b"\n")
    except OSError:
        pass
    c.close()
"""

CLIENT = r"""
import json, socket, sys
addr, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = []
for _ in range(n):
    s = socket.socket(); s.settimeout(3)
    try:
        s.connect((addr, port)); out.append(s.makefile().readline().strip())
    except ConnectionRefusedError:
        out.append("refused")
    except OSError as e:
        out.append(type(e).__name__)
    finally:
        s.close()
print(json.dumps(out))
"""


def nsenter(ns: str | None) -> list[str]:
    return ["nsenter", f"--net={ns}"] if ns else []


class Server:
    """A TCP server in namespace `ns` on `port` answering `name` to each connection."""

    def __init__(self, ns: str, name: str, port: int = 80) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [*nsenter(ns), sys.executable, "-c", SERVER, name, str(port)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def ask(ns: str | None, addr: str, port: int, n: int) -> list[str]:
    """Who answered each of `n` connections from namespace `ns` to addr:port."""
    done = subprocess.run(
        [*nsenter(ns), sys.executable, "-c", CLIENT, addr, str(port), str(n)],
        capture_output=True, text=True, timeout=60 + 3 * n,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def tally(ns: str | None, addr: str, port: int, n: int) -> Counter[str]:
    return Counter(ask(ns, addr, port, n))


def wait_for(fn, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    """fn() until truthy (the plumbing's sync runs on its own task)."""
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.1)
