"""The cluster state: in-memory tables, transactions, watches; durable backends."""

from shoal.manager.store.backend import Backend, Commit, DiskFull, MemoryBackend, Record
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
    "DiskFull",
    "Event",
    "MemoryBackend",
    "ReadTx",
    "Record",
    "Store",
    "Tx",
    "Watcher",
    "WatcherClosed",
]
