"""Where the Docker API listens, and how its TCP hosts are secured, as dockerd does it.

- `--tlsverify` (implies `--tls`): every `tcp://` host speaks TLS with `--tlscert` /
  `--tlskey`, and a client must present a certificate that chains to `--tlscacert`;
  one without (or with another CA's) fails the TLS handshake.
- `--tls` alone: TLS, the server authenticated, any client admitted (no client auth).
- Neither: plain HTTP.

Whoever reaches the API is root on the node, so a `tcp://` host that admits clients
without a certificate (plain, or `--tls` alone) is refused unless its address is a
loopback one, or the operator says it is meant with `--insecure-tcp`. dockerd warns,
sleeps 15 s and plans a hard failure (moby#47556); shoal fails at once. Unix sockets
are guarded by their file mode (0660) and are unaffected.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

# dockerd's defaults: $DOCKER_CERT_PATH or ~/.docker, then ca.pem, cert.pem, key.pem.
DEFAULT_CA_FILE = "ca.pem"
DEFAULT_CERT_FILE = "cert.pem"
DEFAULT_KEY_FILE = "key.pem"
INSECURE_TCP_FLAG = "--insecure-tcp"
MSG_INSECURE_TCP = (
    "refusing to listen on {host} without --tlsverify: binding to an IP address without "
    "client certificate verification is insecure and gives root access on this machine "
    "to everyone who has access to your network. Use --tlsverify with --tlscacert, "
    "--tlscert and --tlskey, or pass " + INSECURE_TCP_FLAG + " to listen anyway"
)


class HostError(ValueError):
    """A `--host` shoal cannot serve, or may not serve as configured."""


def default_cert_dir() -> Path:
    env = os.environ.get("DOCKER_CERT_PATH")
    return Path(env) if env else Path.home() / ".docker"


@dataclass(frozen=True, slots=True)
class APITLS:
    """The TLS of the API's TCP hosts (`--tls`, `--tlsverify` and their files)."""

    cert: Path
    key: Path
    cacert: Path | None = None
    verify: bool = False  # client certificates required, chained to `cacert`

    def context(self) -> ssl.SSLContext:
        """The server context (HostError when a file cannot be used)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as e:
            raise HostError(
                f"could not load X509 key pair ({self.cert}, {self.key}): {_reason(e)}"
            ) from e
        if self.verify:
            if self.cacert is None:
                raise HostError("--tlsverify needs --tlscacert")
            try:
                ctx.load_verify_locations(cafile=self.cacert)
            except (OSError, ssl.SSLError) as e:
                raise HostError(f"could not read CA certificate {self.cacert}: {_reason(e)}") from e
            ctx.verify_mode = ssl.CERT_REQUIRED
        else:
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


def _reason(e: Exception) -> str:
    return str(getattr(e, "strerror", None) or getattr(e, "reason", None) or e)


@dataclass(frozen=True, slots=True)
class Host:
    """One `--host`: a unix socket path, or a TCP address and port."""

    raw: str
    path: Path | None = None  # unix
    addr: str = ""  # tcp: "" is every address
    port: int = 0


def parse_host(raw: str) -> Host:
    if raw.startswith("unix://"):
        path = raw[len("unix://") :]
        if not path:
            raise HostError(f"unsupported host {raw!r}: use unix:///path or tcp://addr:port")
        return Host(raw, path=Path(path))
    if raw.startswith("tcp://"):
        addr, sep, port = raw[len("tcp://") :].rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise HostError(f"invalid host {raw!r}: tcp://addr:port needs a port")
        return Host(raw, addr=addr.strip("[]"), port=int(port))
    raise HostError(f"unsupported host {raw!r}: use unix:///path or tcp://addr:port")


def is_loopback(addr: str) -> bool:
    """True when `addr` (an IP or a name) can only be reached from this machine: a
    name counts when every address it resolves to is a loopback one. "" (every
    interface) and 0.0.0.0 are not."""
    if addr == "localhost":
        return True
    if not addr:
        return False
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(addr, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    ips = {info[4][0] for info in infos}
    return bool(ips) and all(ipaddress.ip_address(str(ip)).is_loopback for ip in ips)


def check_hosts(hosts: list[str], tls: APITLS | None, insecure_tcp: bool) -> list[Host]:
    """The parsed hosts, or HostError for a host that is malformed, or that would let
    anyone on the network in (TCP, not loopback, no client verification) while the
    operator did not pass `--insecure-tcp`."""
    parsed = [parse_host(h) for h in hosts]
    authenticated = tls is not None and tls.verify
    for host in parsed:
        if host.path is None and not authenticated and not insecure_tcp:
            if not is_loopback(host.addr):
                raise HostError(MSG_INSECURE_TCP.format(host=host.raw))
    return parsed
