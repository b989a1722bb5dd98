"""Durability backends for the store. The store keeps everything in memory; a backend
only records committed transactions and gives them back at start-up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Record:
    """One object as the backend stores it; `data` None means deleted."""

    kind: str
    id: str
    data: bytes | None


class Backend(Protocol):
    def load(self) -> tuple[int, list[Record]]:
        """The last committed index and every live object."""
        ...

    def commit(self, index: int, records: list[Record]) -> None:
        """Durably apply one transaction before the store publishes it."""
        ...

    def close(self) -> None: ...


class MemoryBackend:
    """Keeps nothing: for unit tests and the scheduler benchmark."""

    def __init__(self) -> None:
        self.index = 0
        self.objects: dict[tuple[str, str], bytes] = {}

    def load(self) -> tuple[int, list[Record]]:
        return self.index, [Record(k, i, d) for (k, i), d in self.objects.items()]

    def commit(self, index: int, records: list[Record]) -> None:
        self.index = index
        for r in records:
            if r.data is None:
                self.objects.pop((r.kind, r.id), None)
            else:
                self.objects[(r.kind, r.id)] = r.data

    def close(self) -> None:
        pass
