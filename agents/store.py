"""The engine's StateStore on a Faust table.

Writes go to the table's in-memory store and, with an explicit partition, to its changelog:
the engine checkpoints outside any single event's context, so the partition cannot be taken
from "the current event" as Faust's ``table[key] = value`` would. Keys carry their partition
(``a:<p>:<advertiser>``), so a key always lands in the changelog partition its events come from.

Relies on faust-streaming 0.15.3 internals (pinned in pyproject): ``Table.send_changelog`` and
the memory store's ``data`` / ``_key_partition``. tests/test_faust_internals.py fails loudly if an
upgrade moves them.
"""

from __future__ import annotations

from typing import Any, Iterable


class TableStore:
    def __init__(self, table: Any) -> None:
        self.table = table

    @property
    def _store(self) -> Any:
        return self.table.data

    def get(self, key: str) -> bytes | None:
        return self._store.data.get(key)

    def put(self, partition: int, key: str, value: bytes) -> None:
        store = self._store
        store.data[key] = value
        store._key_partition[key] = partition
        self.table.send_changelog(partition, key, value)

    def delete(self, partition: int, key: str) -> None:
        store = self._store
        store.data.pop(key, None)
        store._key_partition.pop(key, None)
        self.table.send_changelog(partition, key, None, value_serializer="raw")

    def keys(self) -> Iterable[str]:
        return list(self._store.data.keys())
