"""The TCP API secured as dockerd secures it (shoal/api/listen.py), driven by the real
docker CLI with a CA and certificates this module makes.

- `--tlsverify`: a client with a certificate of `--tlscacert` gets in; one without a
  certificate, or with another CA's, is refused at the TLS handshake; plain HTTP gets
  no API. The daemon listens on 0.0.0.0: verified TLS needs no extra flag.
- `--tls` alone: TLS, any client (on loopback).
- A tcp:// host off loopback that admits clients without a certificate is refused at
  start unless `--insecure-tcp` says it is meant.
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import socket
import ssl
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .harness import SHOAL, Daemon, cleanup_daemons, free_tcp_port

pytestmark = pytest.mark.integration

REFUSAL_TIMEOUT_S = 30.0
CA_KEY = "ca"
Pair = tuple[Path, Path]


# --------------------------------------------------------------------- certificates


class PKI:
    """A CA and the certificates the tests need, in `directory`."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._now = datetime.datetime.now(datetime.UTC)
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca_cert = self._ca("shoal-test-ca", self.ca_key)
        self.ca = self._write("ca.pem", self.ca_cert)
        self.server = self.leaf("server", server=True)
        self.client = self.leaf("client")
        other_key = ec.generate_private_key(ec.SECP256R1())
        self.stranger = self.leaf("stranger", issuer=(self._ca("other-ca", other_key), other_key))

    def _ca(self, cn: str, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        return (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._now - datetime.timedelta(hours=1))
            .not_valid_after(self._now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )

    def leaf(
        self,
        name: str,
        server: bool = False,
        issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    ) -> Pair:
        ca_cert, ca_key = issuer or (self.ca_cert, self.ca_key)
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._now - datetime.timedelta(hours=1))
            .not_valid_after(self._now + datetime.timedelta(days=1))
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        key_path = self.dir / f"{name}-key.pem"
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
        return self._write(f"{name}.pem", cert), key_path

    def _write(self, name: str, cert: x509.Certificate) -> Path:
        path = self.dir / name
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path


# --------------------------------------------------------------------- daemons


class TCPDaemon(Daemon):
    """A daemon with a tcp:// host on `bind` (and its unix socket) plus `args`."""

    def __init__(self, root: Path, log_path: Path, bind: str, args: Sequence[str]) -> None:
        super().__init__(root, log_path, "tcp-node", tcp_port=free_tcp_port())
        self.bind = bind
        self.args = list(args)

    @property
    def tcp_host(self) -> str:
        return f"tcp://{self.bind}:{self.tcp_port}"

    @property
    def client_host(self) -> str:
        return f"tcp://127.0.0.1:{self.tcp_port}"

    def command(self) -> list[str]:
        return [*super().command(), *self.args]

    def over_tcp(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """The docker CLI against the tcp:// host: `args` are global flags and command."""
        return self.docker(*args, host=self.client_host, check=check)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def make_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    made: list[TCPDaemon] = []
    logs = tmp_path_factory.mktemp("tcp-logs")

    def make(bind: str, args: Sequence[str]) -> TCPDaemon:
        root = Path(tempfile.mkdtemp(prefix="shoal-", dir="/tmp"))
        daemon = TCPDaemon(root, logs / f"{root.name}.log", bind, args)
        made.append(daemon)
        daemon.start()
        return daemon

    yield make
    cleanup_daemons(made)


def tls_flags(pki: PKI) -> list[str]:
    return [
        "--tlscacert",
        str(pki.ca),
        "--tlscert",
        str(pki.server[0]),
        "--tlskey",
        str(pki.server[1]),
    ]


@pytest.fixture(scope="module")
def verified(make_daemon: object, pki: PKI) -> TCPDaemon:
    assert callable(make_daemon)
    daemon: TCPDaemon = make_daemon("0.0.0.0", ["--tlsverify", *tls_flags(pki)])
    return daemon


def client_flags(pki: PKI, pair: Pair | None) -> list[str]:
    flags = ["--tlsverify", "--tlscacert", str(pki.ca)]
    if pair is not None:
        flags += ["--tlscert", str(pair[0]), "--tlskey", str(pair[1])]
    return flags


def handshake_error(port: int, pki: PKI, pair: Pair | None) -> str | None:
    """A TLS request from Python: the error, or None when the API answered `/_ping`."""
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if pair is not None:
        ctx.load_cert_chain(str(pair[0]), str(pair[1]))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        conn.request("GET", "/_ping")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b"OK"
    except (ssl.SSLError, OSError, http.client.HTTPException) as exc:
        return repr(exc)
    finally:
        conn.close()
    return None


# --------------------------------------------------------------------- --tlsverify


def test_a_client_with_a_certificate_of_the_ca_gets_in(verified: TCPDaemon, pki: PKI) -> None:
    result = verified.over_tcp(
        *client_flags(pki, pki.client), "version", "--format", "{{.Server.APIVersion}}", check=True
    )
    assert result.stdout.strip() == "1.41"
    verified.over_tcp(*client_flags(pki, pki.client), "info", check=True)
    assert handshake_error(verified.tcp_port or 0, pki, pki.client) is None


def test_a_client_without_a_certificate_is_refused_at_the_handshake(
    verified: TCPDaemon, pki: PKI
) -> None:
    result = verified.over_tcp(*client_flags(pki, None), "version")
    assert result.returncode != 0
    # The server ends the handshake before any HTTP: the CLI reads EOF (asyncio drops
    # the connection without sending its TLS alert, where dockerd sends one).
    assert "error during connect" in result.stderr, result.stderr
    assert "Server:" not in result.stdout, result.stdout
    error = handshake_error(verified.tcp_port or 0, pki, None)
    assert error is not None, "a client without a certificate was admitted"
    assert verified.running()


def test_a_certificate_of_another_ca_is_refused_at_the_handshake(
    verified: TCPDaemon, pki: PKI
) -> None:
    result = verified.over_tcp(*client_flags(pki, pki.stranger), "version")
    assert result.returncode != 0
    assert "error during connect" in result.stderr, result.stderr
    assert "Server:" not in result.stdout, result.stdout
    error = handshake_error(verified.tcp_port or 0, pki, pki.stranger)
    assert error is not None, "a certificate of another CA was admitted"


def test_plain_http_gets_no_api(verified: TCPDaemon) -> None:
    assert verified.over_tcp("version").returncode != 0
    with socket.create_connection(("127.0.0.1", verified.tcp_port or 0), timeout=10) as s:
        s.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            answer = s.recv(1024)
        except OSError:
            answer = b""
    assert not answer.startswith(b"HTTP/1.1 200"), answer


# --------------------------------------------------------------------- --tls


def test_tls_alone_serves_any_client_on_loopback(make_daemon: object, pki: PKI) -> None:
    assert callable(make_daemon)
    daemon: TCPDaemon = make_daemon("127.0.0.1", ["--tls", *tls_flags(pki)])
    # The server is verified by the client; the client presents nothing.
    daemon.over_tcp("--tlsverify", "--tlscacert", str(pki.ca), "version", check=True)
    assert daemon.over_tcp("version").returncode != 0  # still TLS


# --------------------------------------------------------------------- refused at start


def start_refused(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    data = tmp_path / "data"
    return subprocess.run(
        [str(SHOAL), "daemon", "--data-dir", str(data), "--host", f"unix://{tmp_path}/s.sock",
         "--runtime", "process", *args],
        capture_output=True,
        text=True,
        timeout=REFUSAL_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_plain_tcp_off_loopback_is_refused_at_start(tmp_path: Path, pki: PKI) -> None:
    host = f"tcp://0.0.0.0:{free_tcp_port()}"
    result = start_refused(tmp_path, "--host", host)
    assert result.returncode == 1, result
    assert f"refusing to listen on {host} without --tlsverify" in result.stderr, result.stderr
    assert "--insecure-tcp" in result.stderr
    assert not (tmp_path / "s.sock").exists()
    # TLS without client verification admits anyone just the same.
    result = start_refused(tmp_path, "--host", host, "--tls", *tls_flags(pki))
    assert result.returncode == 1, result
    assert "without --tlsverify" in result.stderr, result.stderr


def test_unusable_tls_files_are_refused_at_start(tmp_path: Path, pki: PKI) -> None:
    host = f"tcp://127.0.0.1:{free_tcp_port()}"
    missing = str(tmp_path / "missing.pem")
    result = start_refused(
        tmp_path, "--host", host, "--tlsverify", "--tlscacert", missing,
        "--tlscert", str(pki.server[0]), "--tlskey", str(pki.server[1]),
    )  # fmt: skip
    assert result.returncode == 1, result
    assert f"could not read CA certificate {missing}" in result.stderr, result.stderr


def test_insecure_tcp_is_the_operators_explicit_choice(make_daemon: object) -> None:
    assert callable(make_daemon)
    daemon: TCPDaemon = make_daemon("0.0.0.0", ["--insecure-tcp"])
    daemon.over_tcp("version", check=True)
    log = daemon.log_path.read_text()
    assert "without client certificate verification" in log
