"""Where etcd's raft leader is, among the embedded members (docs/ha.md).

Two leaders live in a cluster of managers: the swarm's (the election key's holder,
which runs the loops) and etcd's own raft leader among the members. If they are on the
same machine and it crashes, the cluster elects twice in a row: etcd first (about 1 s),
and that new etcd leader then extends every lease by a full TTL, the dead swarm
leader's among them, so the swarm's election waits for the key a second time (measured:
5.2-5.9 s from the kill to a new swarm leader, 2.2-3.3 s when etcd's leader survived).

So the swarm's leader keeps etcd's leadership elsewhere: as soon as it leads, and on a
timer while it leads (etcd elects on its own, after any member's loss), it checks which member
etcd's leader is, and if it is its own, hands it to another member that answers
(etcd's MoveLeader, sent to the leader member: a transfer of a few milliseconds, no
election), never to the member of a node that is no longer a manager (it is about to be
removed: a leader removed leaves the others to elect again). The same move is made before a member that leads etcd is removed
(`move_leader`; etcd issue 10563).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from aetcd import rpc

from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.etcdclient import FAILURES, EtcdClient, TLSFiles
from shoal.log import get_logger
from shoal.manager.etcd.datastore import CLIENT_TIMEOUT_S
from shoal.pki import MANAGER_SERVER_NAME

# How often the swarm's leader checks where etcd's leader is.
CHECK_S = 2.0
# A member asked whether it answers, before it is handed the leadership.
PROBE_TIMEOUT_S = 1.0

log = get_logger("shoal.daemon.etcd_leader")


def _client(url: str, tls: TLSFiles, timeout: float) -> EtcdClient:
    return EtcdClient([url], tls, timeout=timeout, server_name=MANAGER_SERVER_NAME)


async def _answers(url: str, tls: TLSFiles) -> bool:
    client = _client(url, tls, PROBE_TIMEOUT_S)
    try:
        await client.status()
        return True
    except FAILURES:
        return False
    finally:
        await client.close()


def anyone(name: str) -> bool:
    return True


async def move_leader(
    client: EtcdClient, name: str, tls: TLSFiles, eligible: Callable[[str], bool] = anyone
) -> bool:
    """If member `name` is etcd's leader, hand the leadership to another started
    member that answers and is `eligible` (its node a manager still: never one about
    to be removed); True if it moved."""
    members = [m async for m in client.members()]
    me = next((m for m in members if m.name == name), None)
    if me is None or not me.client_urls:
        return False
    status = await client.status()
    if status.leader is None or status.leader.id != me.id:
        return False
    for other in members:
        if other is me or not other.name or not other.client_urls:
            continue  # a member added but not started has no name yet
        if not eligible(other.name):
            continue
        if not await _answers(other.client_urls[0], tls):
            continue
        leader = _client(me.client_urls[0], tls, CLIENT_TIMEOUT_S)
        try:
            await leader.connect()
            await leader.maintenancestub.MoveLeader(
                rpc.MoveLeaderRequest(targetID=other.id), timeout=CLIENT_TIMEOUT_S
            )
        finally:
            await leader.close()
        log.info("etcd leadership moved", source=name, target=other.name)
        return True
    return False


async def keep_leader_elsewhere(
    client: EtcdClient,
    name: str,
    tls: TLSFiles,
    leading: Callable[[], bool],
    changed: Callable[[], asyncio.Event],
    eligible: Callable[[str], bool],
    clock: Clock = SYSTEM_CLOCK,
) -> None:
    """While this manager (member `name`) leads the swarm, etcd's leader is another
    member, if another answers: checked as soon as the leadership changes
    (`changed()`, an event set at each change) and every CHECK_S while it leads. A
    failed check is logged and made again at the next."""
    while True:
        event = changed()
        if leading():
            try:
                await move_leader(client, name, tls, eligible)
            except FAILURES as e:
                log.warning("etcd leadership not checked", error=str(e))
        with contextlib.suppress(TimeoutError):
            await clock.wait_for(event.wait(), CHECK_S)
