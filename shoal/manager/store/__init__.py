"""The cluster state: in-memory tables, transactions, watches; durable backends."""

from shoal.manager.store.backend import (
    Backend,
    Commit,
    CommitInDoubt,
    DiskFull,
    MemoryBackend,
    Record,
    ReloadNeeded,
    SharedBackend,
)
from shoal.manager.store.memory import (
    RUNNING_TOPIC,
    Event,
    ReadTx,
    Store,
    Tx,
    Watcher,
    WatcherClosed,
)

__all__ = [
    "RUNNING_TOPIC",
    "Backend",
    "Commit",
    "CommitInDoubt",
    "DiskFull",
    "Event",
    "MemoryBackend",
    "ReadTx",
    "Record",
    "ReloadNeeded",
    "SharedBackend",
    "Store",
    "Tx",
    "Watcher",
    "WatcherClosed",
]
