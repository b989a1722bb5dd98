"""GELF 1.1 over UDP, as Docker's `gelf` log driver sends it (moby daemon/logger/gelf,
with Graylog2/go-gelf's UDP writer): what the process runtime's shim sends for a task
whose log driver is `gelf`.

One message per line of output (the newline dropped, empty lines skipped):

    {"version": "1.1", "host": <the node's hostname>, "short_message": <the line>,
     "timestamp": <seconds, millisecond precision>, "level": 6 (stdout) | 3 (stderr),
     "_container_id": ..., "_container_name": ..., "_image_id": ..., "_image_name": ...,
     "_command": ..., "_tag": ..., "_created": ..., <extra attributes, "_"-prefixed>}

compressed as `gelf-compression-type` says (gzip, the default; zlib; none) at
`gelf-compression-level` (default 1, go-gelf's BestSpeed), and, when the datagram would
be larger than CHUNK_SIZE_BYTES, cut into chunks per the GELF spec: each one
`0x1e 0x0f`, an 8-byte message ID, its sequence number and the count, then its part of
the payload; a message needing more than MAX_CHUNKS is dropped, as go-gelf does.

Standard library only: the shim (run with `python -I -S`) loads this file by path.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import zlib
from typing import Any
from urllib.parse import urlsplit

# go-gelf's ChunkSize: a datagram that fits in an Ethernet frame with the headers.
CHUNK_SIZE_BYTES = 1420
CHUNK_HEADER_BYTES = 12
MAX_CHUNKS = 128
MAGIC_CHUNKED = b"\x1e\x0f"
MESSAGE_ID_BYTES = 8

LEVEL_INFO = 6  # syslog levels, as Docker sets them: stdout
LEVEL_ERR = 3  # stderr

COMPRESSION_TYPES = ("gzip", "zlib", "none")
DEFAULT_COMPRESSION_TYPE = "gzip"
DEFAULT_COMPRESSION_LEVEL = 1  # flate.BestSpeed
MIN_COMPRESSION_LEVEL = -1  # flate.DefaultCompression
MAX_COMPRESSION_LEVEL = 9

# The options Docker's gelf driver accepts (ValidateLogOpt).
OPTIONS = frozenset(
    {
        "gelf-address",
        "tag",
        "labels",
        "labels-regex",
        "env",
        "env-regex",
        "gelf-compression-level",
        "gelf-compression-type",
        "gelf-tcp-max-reconnect",
        "gelf-tcp-reconnect-delay",
    }
)


def parse_address(address: str) -> tuple[str, str, int]:
    """(scheme, host, port) of `gelf-address`; ValueError with Docker's message."""
    if not address:
        raise ValueError("gelf-address is a required parameter")
    url = urlsplit(address)
    if url.scheme not in ("udp", "tcp"):
        raise ValueError("gelf: endpoint needs to be TCP or UDP")
    try:
        port = url.port
    except ValueError:
        port = None
    if not url.hostname or port is None:
        raise ValueError("gelf: please provide gelf-address as proto://host:port")
    return url.scheme, url.hostname, port


def validate(options: dict[str, str]) -> None:
    """Docker's checks of the gelf driver's options; ValueError with its message."""
    scheme, _, _ = parse_address(options.get("gelf-address", ""))
    for key, value in options.items():
        if key not in OPTIONS:
            raise ValueError(f'unknown log opt "{key}" for gelf log driver')
        if key in ("gelf-compression-level", "gelf-compression-type") and scheme != "udp":
            raise ValueError("compression is only supported on UDP")
        if key in ("gelf-tcp-max-reconnect", "gelf-tcp-reconnect-delay") and scheme != "tcp":
            raise ValueError(f'"{key}" is only valid for TCP')
        bad = ValueError(f'unknown value "{value}" for log opt "{key}" for gelf log driver')
        if key == "gelf-compression-type" and value not in COMPRESSION_TYPES:
            raise bad
        if key == "gelf-compression-level":
            try:
                level = int(value)
            except ValueError:
                raise bad from None
            if not MIN_COMPRESSION_LEVEL <= level <= MAX_COMPRESSION_LEVEL:
                raise bad


def encode(host: str, line: bytes, ts_ns: int, stream: int, extra: dict[str, Any]) -> bytes:
    """The JSON of one GELF message (`line` without its newline)."""
    message: dict[str, Any] = {
        "version": "1.1",
        "host": host,
        "short_message": line.decode("utf-8", "replace"),
        # Docker truncates to milliseconds: float64(ns / 1e6) / 1000.
        "timestamp": (ts_ns // 1_000_000) / 1000.0,
        "level": LEVEL_ERR if stream == 2 else LEVEL_INFO,
    }
    for key, value in extra.items():
        message.setdefault(key, value)
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()


def compress(payload: bytes, kind: str, level: int) -> bytes:
    if kind == "gzip":
        return gzip.compress(payload, compresslevel=_level(level), mtime=0)
    if kind == "zlib":
        return zlib.compress(payload, level)
    return payload


def _level(level: int) -> int:
    return 6 if level < 0 else level  # gzip has no "default" sentinel


def chunk(data: bytes, message_id: bytes, size: int = CHUNK_SIZE_BYTES) -> list[bytes]:
    """The datagrams that carry `data`: itself when it fits, else its GELF chunks;
    [] when it would need more than MAX_CHUNKS (the message is dropped)."""
    if len(data) <= size:
        return [data]
    part = size - CHUNK_HEADER_BYTES
    count = (len(data) + part - 1) // part
    if count > MAX_CHUNKS:
        return []
    return [
        MAGIC_CHUNKED + message_id + bytes((i, count)) + data[i * part : (i + 1) * part]
        for i in range(count)
    ]


class UDPSender:
    """Sends a task's lines to one GELF endpoint. `config` is what the agent resolved:
    {"host", "address": [ip, port], "compression", "level", "extra"}. Send errors are
    counted, never raised: a log endpoint that is down must not stop the task."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.host = str(config.get("host", ""))
        self.extra = dict(config.get("extra") or {})
        self.compression = str(config.get("compression", DEFAULT_COMPRESSION_TYPE))
        self.level = int(config.get("level", DEFAULT_COMPRESSION_LEVEL))
        ip, port = config["address"]
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.target = (ip, int(port))
        self.errors = 0
        self.dropped = 0

    def send(self, line: bytes, ts_ns: int, stream: int) -> None:
        line = line.removesuffix(b"\n")
        if not line:
            return
        payload = encode(self.host, line, ts_ns, stream, self.extra)
        datagrams = chunk(
            compress(payload, self.compression, self.level), os.urandom(MESSAGE_ID_BYTES)
        )
        if not datagrams:
            self.dropped += 1
        for datagram in datagrams:
            try:
                self.sock.sendto(datagram, self.target)
            except OSError:
                self.errors += 1
                return

    def close(self) -> None:
        self.sock.close()
