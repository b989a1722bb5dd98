"""The store moving from SQLite into etcd when a second manager appears (docs/ha.md),
as k3s migrates from SQLite: a function of the `Daemon`.

The only manager, on SQLite, asked for an etcd member by a new manager
(`POST /manager/member`), first moves its state:

1. holds the API's writes (they wait in `Daemon.write_leader`, they are not refused)
   and lets what the store took become durable;
2. stops its manager side (its agent stops without stopping its tasks);
3. starts its own member (state `new`, `swarm/etcd`);
4. copies every record as SQLite holds it (sealed per record, with the record's kind
   and ID as associated data: the sealed bytes move as they are) and the index under
   `/shoal/<cluster ID>/`, the index last;
5. writes the member file (`swarm/etcd.json`): from now on the store lives in the
   member (a daemon restarted reads it there); keeps SQLite's file renamed
   (`store.db.migrated`, never read again);
6. starts its manager side on the shared store (follow, campaign, lead: the store
   opened through the DEK checks that every record opens) and its agent, which adopts
   the running tasks.

If anything fails before step 5, the member is stopped and its data removed, and the
manager starts again on SQLite (a daemon that died before step 5 starts on SQLite,
and the next migration removes what the dead one left).
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoal.clock import SYSTEM_CLOCK
from shoal.daemon.config import DEFAULT_SWARM_PORT, split_addr
from shoal.daemon.embedded import MEMBER_DIR, Embedded, new_member_file
from shoal.etcdclient import FAILURES, EtcdClient, EtcdError
from shoal.log import get_logger
from shoal.manager.etcd.certs import member_tls
from shoal.manager.etcd.datastore import cluster_prefix
from shoal.manager.etcd.member import MAX_TXN_OPS
from shoal.manager.store.etcd import EtcdBackend, _encode_index
from shoal.manager.store.sqlite import SQLiteBackend

if TYPE_CHECKING:
    from shoal.daemon.daemon import Daemon

STORE_FILE = "store.db"
MIGRATED_SUFFIX = ".migrated"
# One etcd transaction per chunk (the member takes MAX_TXN_OPS operations and 64 MiB).
CHUNK_OPS = MAX_TXN_OPS // 2
CHUNK_BYTES = 16 * 1024 * 1024
MIGRATION_WRITER = "sqlite-migration"

log = get_logger("shoal.daemon.migrate")


async def migrate(daemon: Daemon, held: asyncio.Event) -> None:
    """Move the store of this manager (the only one, on SQLite) into its own new etcd
    member; `held` is set once the API's writes may go on (they wait meanwhile)."""
    start = SYSTEM_CLOCK.monotonic()
    try:
        async with daemon._lock:
            if daemon._shared is not None or daemon._manager is None or daemon._state is None:
                return
            await _migrate(daemon)
    finally:
        held.set()
        held_s = round(SYSTEM_CLOCK.monotonic() - start, 3)
        log.info("API requests held while the store moved", held_s=held_s)


async def _migrate(daemon: Daemon) -> None:
    state = daemon._state
    assert state is not None and daemon._manager is not None
    swarm_dir = daemon._files.swarm_dir
    await daemon._manager.store.settled()
    await daemon._stop_swarm(stop_tasks=False, keep_node=True)
    host = split_addr(state.advertise_addr, DEFAULT_SWARM_PORT)[0]
    root = daemon._files.root_ca()
    tls = member_tls(root, state.node_id, state.cluster_id, [host])
    embedded = Embedded(swarm_dir, new_member_file(state.node_id, host), tls)
    db = swarm_dir / STORE_FILE
    # what a migration that died half-way left (its member never recorded) goes
    shutil.rmtree(swarm_dir / MEMBER_DIR, ignore_errors=True)
    try:
        await embedded.start()
        client = embedded.config().client()
        try:
            copied = await copy_store(db, client, cluster_prefix(state.cluster_id))
        finally:
            await client.close()
        embedded.record()  # from here on the store is the member's, even after a crash
    except BaseException as e:
        log.error("the store could not move to etcd; it stays in SQLite", error=repr(e))
        await embedded.stop()
        embedded.member.remove_data()
        await daemon._start_manager()
        raise
    for path in _sqlite_files(db):  # kept, never read again
        path.replace(path.with_name(path.name + MIGRATED_SUFFIX))
    daemon._embedded = embedded
    await daemon._start_manager()
    log.info("the store moved to etcd", records=copied, member=embedded.client_url)


def _sqlite_files(db: Path) -> list[Path]:
    return [
        p
        for p in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"))
        if p.exists()
    ]


async def copy_store(db: Path, client: EtcdClient, prefix: bytes) -> int:
    """Every record of the SQLite store at `db`, as it is there (sealed), and its
    index (last), into etcd under `prefix`, as the etcd backend lays them out; the
    number of records. etcd must hold nothing under the prefix yet."""
    sqlite = SQLiteBackend(db)
    try:
        index, records = sqlite.load()
    finally:
        sqlite.close()
    layout = EtcdBackend(client, prefix=prefix)
    t = client.transactions
    ops: list[Any] = []
    size = 0
    try:
        for r in records:
            if r.data is None:
                continue
            ops.append(t.put(layout.object_key(r.kind, r.id), r.data))
            size += len(r.data)
            if len(ops) >= CHUNK_OPS or size >= CHUNK_BYTES:
                await _put_all(client, layout, ops)
                ops, size = [], 0
        ops.append(t.put(layout.index_key, _encode_index(index, MIGRATION_WRITER)))
        await _put_all(client, layout, ops)
    except FAILURES as e:
        raise EtcdError(f"cannot copy the store into etcd: {e}") from e
    log.info("store copied to etcd", index=index, records=len(records))
    return len(records)


async def _put_all(client: EtcdClient, layout: EtcdBackend, ops: list[Any]) -> None:
    # guarded by the index key not existing yet: a store already there is never
    # written over
    t = client.transactions
    result = await client.txn([t.create(layout.index_key) == 0], ops)
    if not result.succeeded:
        raise EtcdError("etcd already holds a store under this cluster's prefix")
