"""A GELF receiver for the log-driver tests: a real UDP socket on 127.0.0.1 that
reassembles chunked messages and decompresses gzip and zlib payloads, as Graylog does
(written from the GELF spec, not from shoal's encoder)."""

from __future__ import annotations

import gzip
import json
import socket
import time
import zlib
from types import TracebackType
from typing import Any

CHUNK_MAGIC = b"\x1e\x0f"


class GelfListener:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.address = f"udp://127.0.0.1:{self.port}"
        self.datagrams = 0
        self.chunked = 0  # messages that came in chunks
        self._partial: dict[bytes, dict[int, bytes]] = {}

    def __enter__(self) -> GelfListener:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.sock.close()

    def receive(self, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """The next `count` whole messages, decoded; fails after `timeout` seconds."""
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(found) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{len(found)} of {count} GELF messages in {timeout}s")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            self.datagrams += 1
            message = self._feed(data)
            if message is not None:
                found.append(message)
        return found

    def _feed(self, data: bytes) -> dict[str, Any] | None:
        if data[:2] == CHUNK_MAGIC:
            message_id, seq, total = data[2:10], data[10], data[11]
            parts = self._partial.setdefault(message_id, {})
            parts[seq] = data[12:]
            if len(parts) < total:
                return None
            del self._partial[message_id]
            self.chunked += 1
            data = b"".join(parts[i] for i in range(total))
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        elif data[:1] == b"\x78":
            data = zlib.decompress(data)
        return json.loads(data)  # type: ignore[no-any-return]
