"""The cluster state: in-memory tables, transactions, watches; durable backends."""

from shoal.manager.store.backend import Backend, MemoryBackend
from shoal.manager.store.memory import Event, Store, Tx, Watcher

__all__ = ["Backend", "Event", "MemoryBackend", "Store", "Tx", "Watcher"]
