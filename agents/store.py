"""The engine's StateStore on a Faust table.

Writes go to the table's in-memory store at once and to its changelog with :meth:`flush`: the
agent calls it at the end of every checkpoint and acknowledges the checkpoint's input events
only once the broker has every changelog record (acks=all). Offsets are committed only for
acknowledged events, so a committed offset always has its state on the changelog: a crash at any
moment restarts from a state that contains exactly the committed input. (Faust's own path,
``Table.send_changelog``, buffers the records and lets a commit run ahead of them.)

The engine checkpoints outside any single event's context, so the partition cannot be taken
from "the current event" as Faust's ``table[key] = value`` would. Keys carry their partition
(``a:<p>:<advertiser>``), so a key always lands in the changelog partition its events come from;
they are JSON strings on the changelog (the table's key serializer), values the engine's bytes.

With exactly_once the agent does not call :meth:`flush`: ``app.eos`` takes the records
(:meth:`take_unsent`) and sends each in the transaction of its partition, with that partition's
outputs and input offsets.

Relies on faust-streaming 0.15.3 internals (pinned in pyproject): the memory store's ``data`` /
``_key_partition`` and ``Table.changelog_topic``; tests/test_transport.py fails loudly if an
upgrade moves them.
"""

from __future__ import annotations

import asyncio
from typing import Any, Iterable

import orjson


class TableStore:
    def __init__(self, table: Any) -> None:
        self.table = table
        self._unsent: list[tuple[int, str, bytes | None]] = []

    @property
    def _store(self) -> Any:
        return self.table.data

    def get(self, key: str) -> bytes | None:
        return self._store.data.get(key)

    def put(self, partition: int, key: str, value: bytes) -> None:
        store = self._store
        store.data[key] = value
        store._key_partition[key] = partition
        self._changelog(partition, key, value)

    def delete(self, partition: int, key: str) -> None:
        store = self._store
        store.data.pop(key, None)
        store._key_partition.pop(key, None)
        self._changelog(partition, key, None)

    def keys(self) -> Iterable[str]:
        return list(self._store.data.keys())

    def _changelog(self, partition: int, key: str, value: bytes | None) -> None:
        self._unsent.append((partition, key, value))

    @property
    def topic_name(self) -> str:
        return self.table.changelog_topic.get_topic_name()

    def take_unsent(self) -> list[tuple[int, str, bytes | None]]:
        """The changelog records (partition, key, value) written since the last flush or take;
        the caller sends them (exactly_once: app/eos.py)."""
        unsent, self._unsent = self._unsent, []
        return unsent

    async def flush(self) -> int:
        """Send the changelog records written since the last flush; return once the broker has
        acknowledged all of them (raises if one failed). Returns the number sent.

        Each partition's records go as aiokafka record batches (``create_batch`` /
        ``send_batch``: one delivery future per batch instead of one per record, in order
        within the partition), the partitions concurrently."""
        unsent = self.take_unsent()
        if not unsent:
            return 0
        producer = self.table.app.producer._ensure_producer()  # the AIOKafkaProducer
        topic = self.topic_name
        by_partition: dict[int, list[tuple[bytes, bytes | None]]] = {}
        for partition, key, value in unsent:
            by_partition.setdefault(partition, []).append((orjson.dumps(key), value))

        async def send_partition(partition: int, records: list) -> None:
            delivered = []
            batch = producer.create_batch()
            for key, value in records:
                if batch.append(key=key, value=value, timestamp=None) is None:  # full
                    delivered.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        raise ValueError(f"changelog record {key!r} does not fit a batch")
            delivered.append(await producer.send_batch(batch, topic, partition=partition))
            await asyncio.gather(*delivered)

        await asyncio.gather(*(send_partition(p, records)
                               for p, records in by_partition.items()))
        return len(unsent)
