"""SQLite backend: the embedded default for a single manager (WAL, fsync on commit).

Commits run on one thread of their own, off the event loop: the loop goes on serving
while the disk syncs, and the store groups what arrives meanwhile into the next commit.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from shoal.manager.store.backend import Commit, DiskFull, Record

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL,
    id   TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


class SQLiteBackend:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk when commit() returns; kill -9 loses nothing acknowledged.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-commit")

    def load(self) -> tuple[int, list[Record]]:
        row = self._db.execute("SELECT value FROM meta WHERE key='index'").fetchone()
        index = int(row[0]) if row else 0
        records = [
            Record(kind, id_, bytes(data))
            for kind, id_, data in self._db.execute("SELECT kind, id, data FROM objects")
        ]
        return index, records

    async def commit(self, index: int, records: list[Record]) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._thread, self._commit, index, records)
        except (sqlite3.Error, OSError) as e:
            if not _disk_full(e):
                raise
            raise DiskFull(f"cannot write {self._path} on {_disk_of(self._path)}") from e

    def foreign_commits(self, after: int) -> AsyncIterator[Commit] | None:
        return None  # one manager writes

    def _commit(self, index: int, records: list[Record]) -> None:
        db = self._db
        db.execute("BEGIN")
        try:
            upserts = [(r.kind, r.id, r.data) for r in records if r.data is not None]
            deletes = [(r.kind, r.id) for r in records if r.data is None]
            if upserts:
                db.executemany(
                    "INSERT INTO objects(kind, id, data) VALUES (?, ?, ?) "
                    "ON CONFLICT(kind, id) DO UPDATE SET data=excluded.data",
                    upserts,
                )
            if deletes:
                db.executemany("DELETE FROM objects WHERE kind=? AND id=?", deletes)
            db.execute(
                "INSERT INTO meta(key, value) VALUES ('index', ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (index,),
            )
            db.execute("COMMIT")
        except BaseException:
            # SQLite may already have rolled back (SQLITE_FULL at COMMIT can): a second
            # ROLLBACK would raise and hide why the commit failed.
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self._db.close()


def _disk_full(e: BaseException) -> bool:
    """Did the write fail for want of space (SQLite's SQLITE_FULL, or ENOSPC)? SQLite
    then wrote nothing of the transaction; any other error may have left it in doubt."""
    if isinstance(e, sqlite3.Error):
        return (getattr(e, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_FULL
    return isinstance(e, OSError) and e.errno == errno.ENOSPC


def _disk_of(path: Path) -> str:
    """The disk a file is on, as a message names it: its mount point and free bytes."""
    mount = path.resolve().parent
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    try:
        st = os.statvfs(mount)
    except OSError:
        return f"the disk mounted on {mount}"
    return f"the disk mounted on {mount} ({st.f_bavail * st.f_frsize} bytes free)"
