"""Joining a swarm: trust the manager's root only if its digest matches the join token,
then trade the token and a CSR for a node certificate. Renewing that certificate later
over mutual TLS."""

from __future__ import annotations

import base64
import datetime
import random
from dataclasses import dataclass

import aiohttp
import msgspec
from cryptography.hazmat.primitives import serialization

from shoal.errors import InvalidArgument, JoinFailed
from shoal.pki import (
    MANAGER_SERVER_NAME,
    NodeCredentials,
    RootMismatch,
    TokenError,
    cert_validity,
    client_context,
    key_pem,
    leaf_issuer,
    make_csr,
    new_key,
    parse_token,
    pinned_root,
)
from shoal.types.node import TLSInfo
from shoal.types.session import JoinRequest, JoinResponse, RenewRequest, RenewResponse

JOIN_TIMEOUT_S = 20.0
# SwarmKit renews at a random point between 50 % and 80 % of a certificate's life.
RENEW_AT = (0.5, 0.8)


@dataclass(frozen=True, slots=True)
class Joined:
    credentials: NodeCredentials
    node_id: str
    role: str
    cluster_id: str
    managers: list[str]


async def _error_message(resp: aiohttp.ClientResponse) -> str:
    try:
        return str((await resp.json(content_type=None))["message"])
    except Exception:
        return f"{resp.status} {resp.reason}"


async def join(
    remote: str,
    token: str,
    hostname: str,
    addr: str,
    availability: str | None = None,
    local_addr: str | None = None,
) -> Joined:
    """`local_addr`: the source address to dial from (hollow nodes each have one of
    their own on the loopback: shoal/agent/hollow.py); None: the kernel's choice."""
    try:
        tok = parse_token(token)
    except TokenError as e:
        raise InvalidArgument(f"invalid join token: {e}") from e
    timeout = aiohttp.ClientTimeout(total=JOIN_TIMEOUT_S)
    connector = aiohttp.TCPConnector(local_addr=(local_addr, 0) if local_addr else None)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        try:
            async with http.get(f"https://{remote}/ca/root", ssl=client_context(None)) as r:
                if r.status != 200:
                    raise JoinFailed(
                        f"cannot fetch the root CA of {remote}: {await _error_message(r)}"
                    )
                ca_pem = await r.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise JoinFailed(f"cannot reach the manager at {remote}: {e}") from e
        try:
            ca_pem = pinned_root(ca_pem, tok.digest)
        except RootMismatch as e:
            raise JoinFailed(
                "error while validating Root CA Certificate: remote CA does not match "
                f"fingerprint. Expected: {tok.digest}"
            ) from e
        except ValueError as e:
            raise JoinFailed(f"the manager at {remote} sent no valid root CA: {e}") from e
        key = new_key()
        req = JoinRequest(
            token=token,
            csr=make_csr(key).decode(),
            hostname=hostname,
            addr=addr,
            availability=availability,
        )
        try:
            async with http.post(
                f"https://{remote}/ca/join",
                data=msgspec.json.encode(req),
                ssl=client_context(ca_pem),
                server_hostname=MANAGER_SERVER_NAME,
                headers={"Content-Type": "application/json"},
            ) as r:
                if r.status != 200:
                    message = await _error_message(r)
                    raise (InvalidArgument if r.status == 400 else JoinFailed)(message)
                resp = msgspec.json.decode(await r.read(), type=JoinResponse)
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise JoinFailed(f"cannot reach the manager at {remote}: {e}") from e
    creds = NodeCredentials(ca_pem, resp.certificate.encode(), key_pem(key))
    return Joined(creds, resp.node_id, resp.role, resp.cluster_id, resp.managers or [remote])


def renewal_delay(cert_pem: bytes, now: datetime.datetime | None = None) -> float:
    """Seconds until this certificate should be renewed."""
    start, end = cert_validity(cert_pem)
    now = now or datetime.datetime.now(datetime.UTC)
    at = start + (end - start) * random.uniform(*RENEW_AT)
    return max(0.0, (at - now).total_seconds())


async def renew(manager: str, creds: NodeCredentials) -> NodeCredentials:
    """A fresh key and certificate, asked for with the current one (mutual TLS)."""
    key = new_key()
    body = msgspec.json.encode(RenewRequest(csr=make_csr(key).decode()))
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=JOIN_TIMEOUT_S)) as http,
            http.post(
                f"https://{manager}/ca/renew",
                data=body,
                ssl=creds.client_context(),
                server_hostname=MANAGER_SERVER_NAME,
                headers={"Content-Type": "application/json"},
            ) as r,
        ):
            if r.status != 200:
                raise JoinFailed(f"certificate renewal refused: {await _error_message(r)}")
            resp = msgspec.json.decode(await r.read(), type=RenewResponse)
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        raise JoinFailed(f"cannot reach the manager at {manager}: {e}") from e
    return NodeCredentials(creds.ca_pem, resp.certificate.encode(), key_pem(key))


def node_tls_info(creds: NodeCredentials) -> TLSInfo:
    """Docker's `Node.Description.TLSInfo` of a node holding `creds`: the roots it
    trusts, and the subject and key of whoever issued its certificate."""
    issuer = leaf_issuer(creds.cert_pem, creds.ca_pem)
    if issuer is None:
        return TLSInfo(trust_root=creds.ca_pem.decode())
    spki = issuer.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return TLSInfo(
        trust_root=creds.ca_pem.decode(),
        cert_issuer_subject=base64.b64encode(issuer.subject.public_bytes()).decode(),
        cert_issuer_public_key=base64.b64encode(spki).decode(),
    )
