"""GELF encoding, compression and chunking, as Docker's gelf driver (go-gelf) does them."""

from __future__ import annotations

import gzip
import json
import os
import socket
import zlib
from collections.abc import Iterator

import pytest

from shoal.agent.executor import gelf

EXTRA = {
    "_container_id": "abc",
    "_container_name": "web.1.xyz",
    "_image_id": "",
    "_image_name": "busybox",
    "_command": "sh -c echo hi",
    "_tag": "abc",
    "_created": "2024-01-01T00:00:00.000000000Z",
}


def test_a_message_has_gelf_fields_and_docker_extras() -> None:
    raw = gelf.encode("node-1", "héllo".encode(), 1_700_000_000_123_456_789, 1, EXTRA)
    m = json.loads(raw)
    assert m["version"] == "1.1"
    assert m["host"] == "node-1"
    assert m["short_message"] == "héllo"
    assert m["timestamp"] == 1_700_000_000.123  # milliseconds, as Docker truncates
    assert m["level"] == gelf.LEVEL_INFO
    for key, value in EXTRA.items():
        assert m[key] == value


def test_stderr_is_level_error_and_invalid_utf8_is_replaced() -> None:
    m = json.loads(gelf.encode("h", b"bad \xff", 0, 2, {}))
    assert m["level"] == gelf.LEVEL_ERR
    assert m["short_message"] == "bad \ufffd"


def test_extras_never_override_the_gelf_fields() -> None:
    m = json.loads(gelf.encode("h", b"x", 0, 1, {"host": "evil", "_a": "1"}))
    assert m["host"] == "h" and m["_a"] == "1"


@pytest.mark.parametrize(
    ("kind", "decode", "magic"),
    [
        ("gzip", gzip.decompress, b"\x1f\x8b"),
        ("zlib", zlib.decompress, b"\x78"),
        ("none", lambda b: b, b"{"),
    ],
)
def test_compression_types(kind: str, decode: object, magic: bytes) -> None:
    payload = gelf.encode("h", b"line", 0, 1, EXTRA)
    data = gelf.compress(payload, kind, gelf.DEFAULT_COMPRESSION_LEVEL)
    assert data.startswith(magic)
    assert callable(decode) and decode(data) == payload


def test_a_small_message_is_one_datagram() -> None:
    data = b"x" * gelf.CHUNK_SIZE_BYTES
    assert gelf.chunk(data, b"12345678") == [data]


def test_a_large_message_is_chunked_per_the_spec() -> None:
    data = os.urandom(3000)
    chunks = gelf.chunk(data, b"ABCDEFGH")
    part = gelf.CHUNK_SIZE_BYTES - gelf.CHUNK_HEADER_BYTES
    assert len(chunks) == 3 == -(-3000 // part)
    for i, c in enumerate(chunks):
        assert len(c) <= gelf.CHUNK_SIZE_BYTES
        assert c[:2] == b"\x1e\x0f"
        assert c[2:10] == b"ABCDEFGH"
        assert c[10] == i and c[11] == 3
    assert b"".join(c[12:] for c in chunks) == data


def test_a_message_needing_more_than_128_chunks_is_dropped() -> None:
    part = gelf.CHUNK_SIZE_BYTES - gelf.CHUNK_HEADER_BYTES
    assert len(gelf.chunk(b"x" * part * 128, b"12345678")) == 128
    assert gelf.chunk(b"x" * (part * 128 + 1), b"12345678") == []


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({}, "gelf-address is a required parameter"),
        ({"gelf-address": "http://h:1"}, "gelf: endpoint needs to be TCP or UDP"),
        ({"gelf-address": "udp://h"}, "gelf: please provide gelf-address as proto://host:port"),
        ({"gelf-address": "udp://h:1", "max-size": "1m"}, 'unknown log opt "max-size"'),
        (
            {"gelf-address": "udp://h:1", "gelf-compression-type": "lz4"},
            'unknown value "lz4" for log opt "gelf-compression-type" for gelf log driver',
        ),
        (
            {"gelf-address": "udp://h:1", "gelf-compression-level": "10"},
            'unknown value "10" for log opt "gelf-compression-level"',
        ),
        (
            {"gelf-address": "tcp://h:1", "gelf-compression-type": "gzip"},
            "compression is only supported on UDP",
        ),
        (
            {"gelf-address": "udp://h:1", "gelf-tcp-max-reconnect": "3"},
            '"gelf-tcp-max-reconnect" is only valid for TCP',
        ),
    ],
)
def test_options_are_checked_as_docker_checks_them(options: dict[str, str], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        gelf.validate(options)


def test_valid_options_pass() -> None:
    gelf.validate(
        {
            "gelf-address": "udp://127.0.0.1:12201",
            "gelf-compression-type": "zlib",
            "gelf-compression-level": "-1",
            "tag": "x",
            "env": "A,B",
        }
    )
    assert gelf.parse_address("udp://[::1]:5") == ("udp", "::1", 5)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    yield sock
    sock.close()


def test_the_sender_sends_lines_and_chunks_to_a_udp_listener(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    sender = gelf.UDPSender(
        {"host": "n1", "address": ["127.0.0.1", port], "compression": "none", "extra": EXTRA}
    )
    try:
        sender.send(b"hello\n", 1_000_000_000, 1)
        sender.send(b"\n", 1_000_000_000, 1)  # empty lines are skipped
        big = bytes(range(33, 127)) * 40  # incompressible enough, and > one datagram
        sender.send(big, 2_000_000_000, 2)
    finally:
        sender.close()
    first = json.loads(listener.recv(65536))
    assert first["short_message"] == "hello" and first["timestamp"] == 1.0
    chunks = [listener.recv(65536) for _ in range(3)]
    assert all(c[:2] == gelf.MAGIC_CHUNKED for c in chunks)
    assert len({c[2:10] for c in chunks}) == 1
    data = b"".join(c[12:] for c in sorted(chunks, key=lambda c: c[10]))
    second = json.loads(data)
    assert second["short_message"] == big.decode() and second["level"] == gelf.LEVEL_ERR
    assert sender.errors == 0
