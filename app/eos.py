"""exactly_once: one Kafka transaction per input partition and checkpoint.

Protocol (``RISKSTREAM_PROCESSING_GUARANTEE=exactly_once``). The agent processes events as they
arrive but, in this mode, sends nothing at once: every output record (``risk-scores``,
``risk-alerts``, ``risk-alerts-shadow``, ``risk-dead-letter``) is held here under the *input*
partition whose state produced it (:meth:`ExactlyOnce.add`). At each checkpoint
(:meth:`ExactlyOnce.commit`, called by the agent after ``engine.checkpoint()`` and before it
acknowledges a single event), for every owned input partition ``p`` that has held outputs,
changelog writes or input offsets newer than its last commit, one transaction on ``p``'s
transactional producer carries

1. ``p``'s held outputs,
2. ``p``'s changelog records (the engine's state for ``p``, ``agents/store.py``), and
3. the next input offset of every input topic of ``p`` (``RiskEngine.input_offsets``), as a
   consumer-group offset commit (``send_offsets_to_transaction``),

and is committed. The partitions' transactions run concurrently. A ``read_committed`` consumer
therefore sees a window's score, its alert, the state that closed the window and the offsets of
the events that made it all at once or not at all: a crash before the commit leaves an open
transaction that is aborted, and the replacement replays the same events onto the same state
and emits the same outputs once.

Zombie fencing: the transactional producers are Faust's own (``processing_guarantee`` is also
handed to Faust): its TransactionManager starts one per assigned input partition, with the
transactional id ``<app id>-<topic group>-<partition>``, *before* the tables recover. A new
producer with the same id bumps the epoch, so the broker aborts a dead or paused owner's open
transaction and refuses its later sends and commits (``ProducerFenced``: the worker then
crashes rather than acknowledge anything). Faust in exactly_once mode also reads with
``isolation_level=read_committed``, takes the last stable offset as the highwater and skips
aborted changelog records in recovery.

Faust's own offset commits (its timer, ``broker_commit_every``, rebalances, stop) would commit a
transaction of the same producer with the acknowledged offsets -- possibly half-way through a
checkpoint's sends. They are switched off (:meth:`_take_over_commits`): the transactions here
are the only thing that commits input offsets, and the consumer's ``_committed_offset`` view is
kept equal to what they committed.

And a race of Faust's end of recovery that dropped freshly fetched events is closed here
(``app.transport.keep_queued_events_on_resume``, applied in both modes by
``app.factory.create_app``; docs/faults.md).

Why Faust's producers rather than our own ``AIOKafkaProducer(transactional_id=...)`` or
confluent-kafka's: Faust in exactly_once mode starts one per input partition anyway, at the right
moment of a rebalance (before recovery, so the fence comes first), and stops them on revocation;
a second set would double the producers and leave Faust's set able to commit offsets.
confluent-kafka's ``send_offsets_to_transaction`` needs a confluent consumer's group metadata,
which aiokafka's group membership cannot give.

Relies on faust-streaming 0.15.3 (pinned: tests/test_transport.py checks the version,
tests/test_exactly_once.py these pieces): the
aiokafka driver's ``Producer.send(..., transactional_id=)``, ``commit_transactions``,
``commit_transaction`` / ``begin_transaction`` (always one transaction open per producer),
``TransactionManager.transactional_id_format``, ``TransactionManager.commit``,
``Consumer._committed_offset`` and mode's ``FlowControlEvent.resume``; on the
broker: transactions (Apache Kafka; not the embedded broker, app/brokers.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

import orjson
from aiokafka.structs import TopicPartition
from faust.transport.consumer import TopicPartitionGroup
from faust.types import TP

log = logging.getLogger("riskstream.eos")


class ExactlyOnce:
    def __init__(self, ra: Any) -> None:
        self.app = ra.faust_app
        self.engine = ra.engine
        topics = ra.topics
        self._inputs = (topics["impressions"], topics["feedback"], topics["decisions"])
        self._held: dict[int, list[tuple[str, bytes | None, bytes]]] = defaultdict(list)
        self._committed: dict[int, dict[str, int]] = {}  # partition -> offsets we committed
        self._took_over = False

        @self.app.on_partitions_revoked.connect
        async def forget_revoked(sender: Any, revoked: Any, **_: Any) -> None:
            # The revocation waited for the last checkpoint; anything still held belongs to
            # events the new owner replays from the committed offsets.
            for p in {tp.partition for tp in revoked if tp.topic in self._inputs}:
                self._held.pop(p, None)
                self._committed.pop(p, None)

    def add(self, partition: int, topic: str, key: bytes | None, value: bytes) -> None:
        """Hold an output record for ``partition``'s next transaction."""
        self._held[partition].append((topic, key, value))

    def transactional_id(self, partition: int) -> str:
        app = self.app
        topic = self._inputs[0]  # the inputs are one channel: one topic group
        tpg = TopicPartitionGroup(topic, partition, app.assignor.group_for_topic(topic))
        return app.consumer.transactions.transactional_id_format.format(
            tpg=tpg, group_id=app.conf.id)

    async def commit(self) -> int:
        """Commit one transaction per input partition with anything to commit (after
        ``engine.checkpoint()``). Returns the number of transactions; raises (after crashing
        the worker) if one failed, so the caller acknowledges nothing."""
        self._take_over_commits()
        store = self.engine.store
        changelog: dict[int, list[tuple[str, bytes | None]]] = defaultdict(list)
        for partition, key, value in store.take_unsent():
            changelog[partition].append((key, value))
        owned = {tp.partition for tp in self.app.consumer.assignment()
                 if tp.topic in self._inputs}
        # Held records are dropped only on revocation (forget_revoked), never for a partition
        # merely missing from the assignment: a partition that stays would lose them. A
        # partition whose producer is gone makes its send fail, and the worker crashes.
        todo = [p for p in sorted(owned | set(self._held) | set(changelog))
                if self._held.get(p) or changelog.get(p)
                or self.engine.input_offsets(p) != self._committed.get(p, {})]
        if not todo:
            return 0
        try:
            await asyncio.gather(*(self._transaction(p, self._held.pop(p, []),
                                                     changelog.get(p, []), store.topic_name)
                                   for p in todo))
        except Exception as exc:
            log.error("exactly_once: transaction failed, stopping the worker: %r", exc)
            await self.app.crash(exc)
            raise
        return len(todo)

    async def _transaction(self, partition: int, outputs: list, changelog: list,
                           changelog_topic: str) -> None:
        producer = self.app.producer
        tid = self.transactional_id(partition)
        futures = [await producer.send(topic, key, value, None, None, None,
                                       transactional_id=tid)
                   for topic, key, value in outputs]
        futures += [await producer.send(changelog_topic, orjson.dumps(key), value, partition,
                                        None, None, transactional_id=tid)
                    for key, value in changelog]
        await asyncio.gather(*futures)  # raises if one was refused (e.g. fenced)
        offsets = self.engine.input_offsets(partition)
        if offsets:
            await producer.commit_transactions(
                {tid: {TopicPartition(topic, partition): offset
                       for topic, offset in offsets.items()}},
                self.app.conf.id, start_new_transaction=True)
        else:  # outputs without any input offset yet (nothing to commit for the group)
            await producer.commit_transaction(tid)
            await producer.begin_transaction(tid)
        self._committed[partition] = offsets
        self.app.consumer._committed_offset.update(
            {TP(topic, partition): offset for topic, offset in offsets.items()})

    def _take_over_commits(self) -> None:
        """Make Faust's own commit path a no-op: the acknowledged offsets are committed by our
        transactions only (see the module docstring)."""
        if self._took_over:
            return
        transactions = self.app.consumer.transactions

        async def no_commit(offsets: Any, start_new_transaction: bool = True) -> bool:
            return False

        transactions.commit = no_commit
        self._took_over = True
