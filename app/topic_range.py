"""Read a bounded range of a Kafka topic: every partition, from a start (the beginning, or the
first offset at or after an event time) up to the high watermark seen when the read starts.

Used by ``riskstream backtest --from-topics`` (replay recorded traffic offline) and
``riskstream models compare`` (champion vs challenger on live alert topics). It is a plain
assigned consumer: no consumer group is joined and no offsets are committed, so it never
disturbs the workers or the enforcement consumers.

The end is fixed when the read starts, so a busy topic still gives a finite, reproducible
range; records produced afterwards are not read. Records come back in (partition, offset)
order; within a partition that is the order the workers saw them.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable


class TopicRangeError(RuntimeError):
    """The topic is missing, or the range was not read within the time bound."""


@dataclass(frozen=True)
class TopicRecord:
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None


def parse_time(text: str | None) -> int | None:
    """Epoch milliseconds from ``None``, digits (epoch ms), or ISO 8601 (UTC if no offset).

    >>> parse_time("2026-11-26T10:00Z"), parse_time("1795687200000"), parse_time(None)
    (1795687200000, 1795687200000, None)
    """
    if text is None or not text.strip():
        return None
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a time: {text!r} (want ISO 8601 like 2026-11-26T10:00Z, "
                         f"or epoch milliseconds)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def read_topic_range(bootstrap: str, topic: str, *, client_config: dict[str, Any] | None = None,
                     since_ms: int | None = None, until_ms: int | None = None,
                     timeout: float = 120.0,
                     progress: Callable[[int, int], None] | None = None) -> list[TopicRecord]:
    """Every record of ``topic`` from ``since_ms`` (record timestamp; None = the beginning) to
    the high watermark at the start of the read, dropping records stamped at or after
    ``until_ms``. Raises TopicRangeError if the topic is missing or the range is not read
    within ``timeout`` seconds. ``progress(done, total)`` is called now and then."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"riskstream-range-{uuid.uuid4().hex}",  # required by the client; never joined
        "enable.auto.commit": False,
        "enable.partition.eof": False,
        "isolation.level": "read_committed",
        **(client_config or {}),
    })
    deadline = time.monotonic() + timeout
    try:
        try:
            meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        except KafkaException as exc:
            raise TopicRangeError(f"cannot read {topic} at {bootstrap}: {exc}") from None
        if meta is None or meta.error is not None or not meta.partitions:
            why = meta.error if meta is not None and meta.error is not None else "missing"
            raise TopicRangeError(f"topic {topic} not available ({why}); create it with "
                                  f"`riskstream topics apply`")
        ends: dict[int, int] = {}
        starts: dict[int, int] = {}
        for p in sorted(meta.partitions):
            low, high = _watermarks(consumer, TopicPartition(topic, p), deadline)
            ends[p], starts[p] = high, low
        if since_ms is not None:
            asked = [TopicPartition(topic, p, since_ms) for p in ends]
            for tp in consumer.offsets_for_times(asked, timeout=max(deadline - time.monotonic(), 1)):
                # -1: no record at or after since_ms -> nothing to read in that partition
                starts[tp.partition] = ends[tp.partition] if tp.offset < 0 else tp.offset
        todo = {p for p in ends if starts[p] < ends[p]}
        total = sum(ends[p] - starts[p] for p in todo)
        records: dict[int, list[TopicRecord]] = {p: [] for p in todo}
        if not todo:
            return []
        consumer.assign([TopicPartition(topic, p, starts[p]) for p in todo])
        done, reported = 0, time.monotonic()
        while todo:
            left = deadline - time.monotonic()
            if left <= 0:
                behind = {p: ends[p] - (records[p][-1].offset + 1 if records[p] else starts[p])
                          for p in todo}
                raise TopicRangeError(f"read {done:,} of {total:,} records of {topic} within "
                                      f"{timeout:.0f}s; still behind per partition: {behind}")
            for msg in consumer.consume(num_messages=1000, timeout=min(left, 0.5)):
                err = msg.error()
                if err is not None:
                    if err.fatal():
                        raise TopicRangeError(f"reading {topic}: {err}")
                    continue
                p, off = msg.partition(), msg.offset()
                if p not in todo or off >= ends[p]:
                    continue
                ts = msg.timestamp()[1]
                if until_ms is None or ts < until_ms:
                    records[p].append(TopicRecord(p, off, ts, msg.key(), msg.value()))
                done += 1
                if off >= ends[p] - 1:
                    todo.discard(p)
            if progress is not None and (not todo or time.monotonic() - reported > 0.5):
                progress(done, total)
                reported = time.monotonic()
            if todo:
                # transactional markers occupy offsets but are never delivered: a partition is
                # done once its position reaches the end
                for tp in consumer.position([TopicPartition(topic, p) for p in list(todo)]):
                    if tp.offset >= ends[tp.partition]:
                        todo.discard(tp.partition)
        return [r for p in sorted(records) for r in records[p]]
    finally:
        consumer.close()


def _watermarks(consumer: Any, tp: Any, deadline: float) -> tuple[int, int]:
    """The partition's (low, high) watermarks, retrying retriable errors (e.g. no leader yet
    right after ``topics apply``) until ``deadline``."""
    from confluent_kafka import KafkaError, KafkaException

    transient = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                 KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError.REQUEST_TIMED_OUT,
                 KafkaError._TRANSPORT}
    while True:
        try:
            return consumer.get_watermark_offsets(
                tp, timeout=max(deadline - time.monotonic(), 1.0))
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            retry = isinstance(err, KafkaError) and (err.code() in transient or err.retriable())
            if not retry or time.monotonic() >= deadline:
                raise TopicRangeError(f"cannot read the offsets of {tp.topic} "
                                      f"[{tp.partition}]: {exc}") from None
            time.sleep(0.2)  # back off before asking again
