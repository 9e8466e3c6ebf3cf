"""Feed the risk board from ``risk-scores`` and ``risk-alerts``: decode, call, nothing else.

Every worker reads *every* partition of both topics without a consumer group (partitions
assigned, no offsets committed), starting ``board_lookback_s`` (scores) and
``board_alerts_lookback_s`` (alerts) back in time, so the board on any worker shows the whole
platform, and a restarted worker rebuilds its view from the topics in seconds. Costs one record
per advertiser per window on every worker (100k advertisers, 60 s windows: ~1.7k records/s).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson

from agents.events import aiokafka_security
from riskstream.board import RiskBoard

log = logging.getLogger("riskstream.board")


def register_board(ra: Any) -> RiskBoard:
    settings = ra.settings
    board = RiskBoard(max_advertisers=max(settings.board_max_advertisers, 1))
    if settings.board_max_advertisers <= 0:
        return board  # board disabled: lookups still answer from the state
    scores_topic, alerts_topic = settings.topic("risk-scores"), settings.topic("risk-alerts")
    lookback_ms = {scores_topic: settings.board_lookback_s * 1000,
                   alerts_topic: settings.board_alerts_lookback_s * 1000}

    @ra.faust_app.task
    async def follow_board() -> None:
        from aiokafka import AIOKafkaConsumer

        # Subscribed without a group id: aiokafka assigns every partition of both topics (and
        # follows partition changes); nothing is committed.
        consumer = AIOKafkaConsumer(
            scores_topic, alerts_topic, bootstrap_servers=ra.bootstrap, group_id=None,
            enable_auto_commit=False, auto_offset_reset="latest",
            # exactly_once: never show a score of an aborted transaction
            isolation_level="read_committed", **aiokafka_security(settings))
        await consumer.start()
        try:
            wanted = {scores_topic, alerts_topic}
            while {tp.topic for tp in consumer.assignment()} != wanted:
                await asyncio.sleep(0.2)
            tps = sorted(consumer.assignment())
            now_ms = int(time.time() * 1000)
            ends = await consumer.end_offsets(tps)  # before the time lookup: nothing is skipped
            starts = await consumer.offsets_for_times(
                {tp: max(now_ms - lookback_ms[tp.topic], 0) for tp in tps})
            for tp in tps:
                found = starts.get(tp)
                consumer.seek(tp, ends[tp] if found is None else found.offset)
            log.info("board follows %s and %s (%d partitions)", scores_topic, alerts_topic,
                     len(tps))
            bad = 0
            while True:
                batches = await consumer.getmany(timeout_ms=1000, max_records=1000)
                for tp, msgs in batches.items():
                    add = board.add_score if tp.topic == scores_topic else board.add_alert
                    for msg in msgs:
                        try:
                            add(orjson.loads(msg.value))
                        except (ValueError, KeyError, TypeError) as exc:
                            bad += 1  # never stop the board for one bad record; ids only
                            if bad <= 10 or bad % 1000 == 0:
                                log.warning("board skipped %s[%d]@%d: %s (%d so far)",
                                            tp.topic, tp.partition, msg.offset,
                                            type(exc).__name__, bad)
                await asyncio.sleep(0)  # catching up: let the agents' loop run between batches
        finally:
            await consumer.stop()

    return board
