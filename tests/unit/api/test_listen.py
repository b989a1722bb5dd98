"""The API's hosts and their TLS (shoal/api/listen.py): which hosts start, and what a
`--tlsverify` context admits at the handshake."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shoal.api.listen import (
    APITLS,
    INSECURE_TCP_FLAG,
    HostError,
    check_hosts,
    is_loopback,
    parse_host,
)

NOW = datetime.datetime.now(datetime.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(hours=1))
        .not_valid_after(NOW + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], directory: Path, name: str
) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(hours=1))
        .not_valid_after(NOW + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca[1], hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca = _ca("test-ca")
    other = _ca("other-ca")
    (tmp_path / "ca.pem").write_bytes(ca[0].public_bytes(serialization.Encoding.PEM))
    server = _leaf(ca, tmp_path, "server")
    client = _leaf(ca, tmp_path, "client")
    stranger = _leaf(other, tmp_path, "stranger")
    return {
        "ca": tmp_path / "ca.pem",
        "server": server[0],
        "server-key": server[1],
        "client": client[0],
        "client-key": client[1],
        "stranger": stranger[0],
        "stranger-key": stranger[1],
    }


# ------------------------------------------------------------------------ hosts


def test_parse_host() -> None:
    assert parse_host("unix:///run/x.sock").path == Path("/run/x.sock")
    h = parse_host("tcp://0.0.0.0:2376")
    assert (h.path, h.addr, h.port) == (None, "0.0.0.0", 2376)
    assert parse_host("tcp://[::1]:2375").addr == "::1"
    for bad in ("tcp://1.2.3.4", "tcp://h:0", "tcp://h:x", "http://h:1", "unix://", "fd://"):
        with pytest.raises(HostError):
            parse_host(bad)


def test_loopback_addresses() -> None:
    for addr in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert is_loopback(addr), addr
    for addr in ("", "0.0.0.0", "::", "10.1.2.3"):
        assert not is_loopback(addr), addr


def test_plain_tcp_is_refused_off_loopback_unless_insecure(pki: dict[str, Path]) -> None:
    with pytest.raises(HostError) as refused:
        check_hosts(["unix:///x.sock", "tcp://0.0.0.0:2375"], None, insecure_tcp=False)
    message = str(refused.value)
    assert "tcp://0.0.0.0:2375" in message and INSECURE_TCP_FLAG in message
    assert "--tlsverify" in message
    # TLS without client verification admits anyone too.
    tls_only = APITLS(cert=pki["server"], key=pki["server-key"])
    with pytest.raises(HostError):
        check_hosts(["tcp://0.0.0.0:2376"], tls_only, insecure_tcp=False)
    # Allowed: loopback, an explicit --insecure-tcp, or --tlsverify.
    check_hosts(["tcp://127.0.0.1:2375", "tcp://localhost:2375"], None, insecure_tcp=False)
    check_hosts(["tcp://0.0.0.0:2375"], None, insecure_tcp=True)
    verify = APITLS(cert=pki["server"], key=pki["server-key"], cacert=pki["ca"], verify=True)
    check_hosts(["tcp://0.0.0.0:2376", "tcp://:2377"], verify, insecure_tcp=False)


def test_unusable_files_are_named(pki: dict[str, Path], tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(HostError, match="could not load X509 key pair"):
        APITLS(cert=missing, key=pki["server-key"]).context()
    with pytest.raises(HostError, match="could not read CA certificate"):
        APITLS(cert=pki["server"], key=pki["server-key"], cacert=missing, verify=True).context()


# ------------------------------------------------------------------------ handshakes


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> str | None:
    """Run a handshake and one byte each way over a socket pair; the server's error, or
    None when the exchange went through."""
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    error: list[str] = []

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(a, server_side=True) as s:
                s.sendall(b"s")
                s.recv(1)
        except (ssl.SSLError, OSError) as e:
            error.append(repr(e))

    t = threading.Thread(target=serve)
    t.start()
    try:
        with client_ctx.wrap_socket(b, server_hostname="127.0.0.1") as c:
            c.recv(1)
            c.sendall(b"c")
    except (ssl.SSLError, OSError):
        pass
    t.join(10)
    return error[0] if error else None


def _client(pki: dict[str, Path], cert: str | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=pki["ca"])
    if cert is not None:
        ctx.load_cert_chain(pki[cert], pki[f"{cert}-key"])
    return ctx


def test_tlsverify_admits_only_certificates_of_its_ca(pki: dict[str, Path]) -> None:
    server = APITLS(
        cert=pki["server"], key=pki["server-key"], cacert=pki["ca"], verify=True
    ).context()
    assert _handshake(server, _client(pki, "client")) is None
    assert _handshake(server, _client(pki, None)) is not None
    assert _handshake(server, _client(pki, "stranger")) is not None


def test_tls_alone_admits_clients_without_certificates(pki: dict[str, Path]) -> None:
    server = APITLS(cert=pki["server"], key=pki["server-key"]).context()
    assert _handshake(server, _client(pki, None)) is None
