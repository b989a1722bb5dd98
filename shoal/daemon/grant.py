"""A new manager's etcd member, added through a manager of the cluster (docs/ha.md):
`request_member` (the joining or promoted node asks, `POST /manager/member` on a
manager's cluster port), `grant_member` (that manager adds it through etcd's client
API and answers what it must start with, and the store's keys), `join_member` (the
member started with state `existing`; removed again if it fails to start).
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.daemon.embedded import Embedded, EmbeddedConfig, MemberFile
from shoal.errors import InvalidArgument, JoinFailed, PermissionDenied
from shoal.etcdclient import FAILURES, EtcdClient, EtcdError, TLSFiles
from shoal.log import get_logger
from shoal.manager.etcd.member import add_member, member_names, remove_member
from shoal.pki import MANAGER_SERVER_NAME, NodeCredentials

# A manager asked for a member while it moves its store from SQLite answers 503: the
# asking node tries again meanwhile, for up to this long.
REQUEST_TIMEOUT_S = 120.0
REQUEST_RETRY_S = 1.0
HTTP_TIMEOUT_S = 60.0

log = get_logger("shoal.daemon.grant")


@dataclass(frozen=True, slots=True)
class MemberGrant:
    """What a new member starts with, and the keys the store is sealed with."""

    initial_cluster: dict[str, str]
    endpoints: list[str]
    dek: bytes
    root_key: bytes


def member_wanted(body: bytes, node_id: str) -> str:
    """The peer URL of the member `POST /manager/member` asks for, checked: a member
    is named after its node, and a node (`node_id`, from its certificate) asks for
    its own only."""
    try:
        req = json.loads(body)
        name, peer_url = str(req["name"]), str(req["peer_url"])
    except (ValueError, KeyError, TypeError) as e:
        raise InvalidArgument(f"invalid member request: {e!r}") from e
    if name != node_id:
        raise PermissionDenied(
            f"permission denied: node {node_id} may ask for its own etcd member only"
        )
    return peer_url


async def grant_member(
    client: EtcdClient,
    name: str,
    peer_url: str,
    dek: bytes,
    root_key: bytes,
    clock: Clock = SYSTEM_CLOCK,
) -> bytes:
    """`POST /manager/member` on a manager whose store is in embedded members: add the
    member `name` (the asking node's ID) at `peer_url`; answer its
    `--initial-cluster`, the members' client URLs, the DEK and the root key."""
    if name in await member_names(client):  # asked again (a retry, a restart)
        with contextlib.suppress(EtcdError):
            await remove_member(client, name, clock)
    cluster = await add_member(client, name, peer_url, clock)
    endpoints = [u async for m in client.members() for u in m.client_urls[:1]]
    return json.dumps(
        {
            "initial_cluster": cluster,
            "endpoints": endpoints,
            "dek": base64.b64encode(dek).decode(),
            "root_key": root_key.decode(),
        }
    ).encode()


async def request_member(
    managers: list[str], creds: NodeCredentials, file: MemberFile, clock: Clock = SYSTEM_CLOCK
) -> MemberGrant:
    """Ask a manager (the first that answers) to add this node's member. A manager
    that answers 503 (it moves its store to etcd first) is asked again."""
    body = json.dumps({"name": file.name, "peer_url": file.address.peer_url}).encode()
    deadline = clock.monotonic() + REQUEST_TIMEOUT_S
    failure = "no manager known"
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
    while True:
        for addr in managers:
            try:
                async with aiohttp.ClientSession(timeout=timeout) as http:
                    async with http.post(
                        f"https://{addr}/manager/member",
                        data=body,
                        ssl=creds.client_context(),
                        server_hostname=MANAGER_SERVER_NAME,
                        headers={"Content-Type": "application/json"},
                    ) as r:
                        answer = await r.read()
                        if r.status == 200:
                            data = json.loads(answer)
                            return MemberGrant(
                                {str(k): str(v) for k, v in data["initial_cluster"].items()},
                                [str(e) for e in data["endpoints"]],
                                base64.b64decode(data["dek"]),
                                str(data["root_key"]).encode(),
                            )
                        failure = f"{addr} answered {r.status}: {answer!r}"
                        if r.status not in (502, 503):
                            raise JoinFailed(f"no etcd member for this manager: {failure}")
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                failure = f"cannot reach {addr}: {e!r}"
            log.info("etcd member not granted yet; asking again", reason=failure)
        if clock.monotonic() >= deadline:
            raise JoinFailed(f"no etcd member for this manager: {failure}")
        await clock.sleep(REQUEST_RETRY_S)


async def join_member(
    swarm_dir: Path,
    file: MemberFile,
    managers: list[str],
    creds: NodeCredentials,
    tls: Callable[[bytes], TLSFiles],
) -> tuple[Embedded, MemberGrant]:
    """A new manager's member: added by a manager (`request_member`), then started
    with state `existing` (`tls(root key)`: its certificate, from the root key the
    grant carries) and recorded."""
    grant = await request_member(managers, creds, file)
    file.endpoints = list(grant.endpoints)
    embedded = Embedded(swarm_dir, file, tls(grant.root_key))
    try:
        await embedded.start(grant.initial_cluster, "existing")
    except BaseException:
        # a member added but never started would count against the quorum: removed
        # through the others
        client = EmbeddedConfig(grant.endpoints, embedded.member.tls).client()
        try:
            await remove_unstarted(client, file.address.peer_url)
        except FAILURES as e:
            log.error("a member that failed to start could not be removed", error=str(e))
        finally:
            await client.close()
        await embedded.stop()
        embedded.member.remove_data()
        raise
    embedded.record()
    return embedded, grant


async def remove_unstarted(client: EtcdClient, peer_url: str) -> None:
    """Remove the member added at `peer_url` (one never started has no name yet)."""
    async for m in client.members():
        if peer_url in m.peer_urls:
            await client.remove_member(m.id)
            log.info("removed an etcd member that never started", peer_url=peer_url)
