"""Agents: decode, call the engine, emit. No business logic lives here.

One agent reads both co-partitioned inputs (``ad-impressions`` and ``user-feedback``) as one
stream, in batches of whatever is queued (``app.transport.event_batches``): every event is
validated and fed to the engine and the outputs are produced at once; the engine's state is
checkpointed to the changelog table only every ``RISKSTREAM_CHECKPOINT_INTERVAL_S`` (or
``RISKSTREAM_CHECKPOINT_MAX_EVENTS`` events), and only then are the events since the previous
checkpoint acknowledged. Faust commits acknowledged offsets after flushing the producer, so
offsets never run ahead of the state and alerts they depend on (at-least-once; alert ids are
deterministic, so a replay re-emits the same ids).

A once-a-second task tells the engine which input partitions are idle: caught up (next offset at
the highwater) *and* silent for ``INPUT_IDLE_S`` of wall time, so an idle or empty input does not
hold windows open. Both conditions, because a highwater can be stale or, on some brokers,
under-reported, while a source that still has a backlog keeps delivering. The task shares a lock
with the batch loop, so no checkpoint ever includes half a batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson

from app.eos import ExactlyOnce
from app.transport import ack_events, commit_offsets, event_batches
from riskstream.engine import ModelConfig
from riskstream.events import (InvalidEvent, dead_letter_record, validate_decision,
                               validate_feedback, validate_impression)

log = logging.getLogger("riskstream.agents")

INPUT_IDLE_S = 2.0
MAX_REFETCHES = 20  # batches whose gap re-fetch starts past it; then its offsets count as gone
REFETCH_RETRY_S = 10.0  # an input partition with unread offsets silent this long is sought again
CHECKPOINT_POLL_S = 0.25  # the agent looks at least this often whether a checkpoint is due


def register_agents(ra: Any) -> None:
    app = ra.faust_app
    engine = ra.engine
    metrics = ra.metrics
    settings = ra.settings
    limits = ra.limits
    topics = ra.topics
    source_of = {topics["impressions"]: ("impression", validate_impression),
                 topics["feedback"]: ("feedback", validate_feedback),
                 topics["decisions"]: ("decision", validate_decision)}
    input_names = {topics["impressions"], topics["feedback"]}  # they drive event time
    positions: dict[Any, int] = {}  # next offset to process, per owned input partition
    last_active: dict[Any, float] = {}  # monotonic time of the last event (or assignment), per tp
    lock = asyncio.Lock()
    out_topic = {"alert": topics["alerts"], "shadow_alert": topics["shadow_alerts"],
                 "score": topics["scores"]}
    eos = ExactlyOnce(ra) if settings.processing_guarantee == "exactly_once" else None

    topic_names: dict[Any, str] = {}

    async def send(topic: Any, partition: int, key: bytes | None, value: bytes) -> None:
        """at_least_once: produce now; exactly_once: held for the partition's transaction at
        the next checkpoint (app/eos.py)."""
        name = topic_names.get(topic)
        if name is None:
            name = topic_names[topic] = topic.get_topic_name()
        if eos is None:
            # Straight to the producer, as ``topic.send`` ends up doing for raw bytes (the
            # partition from the key; delivered before the checkpoint acks, by its flush),
            # without Faust's per-message FutureMessage, codec and sensor steps.
            await app.producer.send(name, key, value, None, None, None)
        else:
            eos.add(partition, name, key, value)

    async def emit(outputs: list) -> None:
        now = time.time()
        for o in outputs:
            await send(out_topic[o.kind], o.partition, o.key.encode(), orjson.dumps(o.record))
            if o.kind == "score":
                metrics.windows_closed.inc()
                metrics.window_close_lag_seconds.set(now - o.record["window"]["end"] / 1000)
            else:
                r = o.record
                metrics.alerts.labels(r["severity"], r["mode"], r["status"]).inc()
                if o.kind == "alert":
                    metrics.event_to_alert_seconds.observe(max(now - r["window"]["end"] / 1000, 0))
                    log.info("alert %s %s %s", r["status"], r["advertiser_id"], r["severity"],
                             extra={"alert_id": r["alert_id"], "advertiser_id": r["advertiser_id"]})

    def record_decision(ev: dict) -> None:
        metrics.enforcement_decisions.labels(ev["decision"]).inc()
        for detector, (confirmed, dismissed) in engine.decisions.items():
            if confirmed + dismissed:
                metrics.detector_precision.labels(detector).set(
                    confirmed / (confirmed + dismissed))

    # Checkpoint-aligned acknowledgement (as Quix Streams checkpoints): events are processed as
    # they arrive, and acknowledged only together with a checkpoint -- every
    # ``checkpoint_interval_s`` or ``checkpoint_max_events`` events, whichever comes first, and
    # at once when a rebalance or shutdown suspends the flow (Faust waits for every tracked
    # message to be acked before it revokes). A crash replays from the last commit onto the last
    # checkpointed state: nothing lost, nothing counted twice.
    pending: list[Any] = []  # processed, not yet acknowledged
    last_checkpoint = [time.monotonic()]

    async def checkpoint() -> None:
        # Outputs first: once the state says a window is closed, its score and alert must
        # already be on the broker, or a crash would lose them instead of repeating them.
        await app.producer.flush()
        writes = engine.checkpoint()
        # Then the state, delivered before a single event is acknowledged: a committed offset
        # never runs ahead of the changelog (agents/store.py).
        await (eos.commit() if eos else engine.store.flush())  # exactly_once: with the outputs
        metrics.checkpoints.inc()
        metrics.checkpoint_writes.inc(writes)
        if writes:
            metrics.model_state_bytes.set(engine.stats["last_checkpoint_bytes"])
        last_checkpoint[0] = time.monotonic()
        consumer = app.consumer
        if eos is None:
            # Commit what the state now on the changelog records (app.transport.commit_offsets),
            # also when a rebalance or shutdown stops the flow: Faust's own commit of
            # acknowledged offsets then finds nothing beyond it.
            offsets = {}
            for tp in consumer.assignment():
                if tp.topic in source_of:
                    nxt = engine.input_offsets(tp.partition).get(tp.topic, -1)
                    if nxt >= 0:
                        offsets[tp] = nxt
            try:
                await commit_offsets(consumer, offsets)
            except Exception as exc:  # the next checkpoint commits again (at-least-once)
                log.warning("offset commit failed: %s", exc)
        if pending:
            ack_events(consumer, pending)  # as event.message.ack(consumer) for each, at once
            pending.clear()

    def checkpoint_due() -> bool:
        return (bool(pending) or engine.has_changes()) and (
            len(pending) >= settings.checkpoint_max_events
            or time.monotonic() - last_checkpoint[0] >= settings.checkpoint_interval_s
            or not app.flow_control.is_active())

    @app.agent(topics["inputs"], name="risk-events")
    async def risk_events(stream: Any) -> None:
        async for batch in event_batches(app, stream, settings.checkpoint_max_events,
                                         idle_s=CHECKPOINT_POLL_S):
            if batch:
                await process_batch(batch)
            if checkpoint_due():
                async with lock:
                    if checkpoint_due():
                        await checkpoint()

    # Each input partition's events are applied in offset order, from the offset the state
    # expects (``engine.next_offset``, checkpointed with the state): an earlier offset is a
    # replay (skipped), a later one a gap -- events delivered past ones that never came, e.g.
    # skipped by the consumer during a rebalance, or a committed offset ahead of the state. A
    # gap is never processed over: the partition is fetched again from the expected offset (the
    # run of events already fetched behind the gap is skipped until the re-fetch arrives, which
    # starts at or below the last offset seen). If the re-fetch itself starts past the expected
    # offset while the broker still holds it, it is fetched again (see refetched_past); if the
    # broker no longer holds it, or after MAX_REFETCHES batches, those offsets do not exist
    # (retention, transaction markers): counted, accepted.
    refetch: dict[Any, int] = {}  # tp -> last offset seen since its gap was found
    earliest: dict[Any, int] = {}  # tp -> the broker's earliest offset, while it may be needed
    # tp -> re-fetches of its gap that started past the expected offset although the broker
    # still holds that offset: something moved the position after our seek (Faust's seek to the
    # committed offsets at the end of a table recovery; docs/faults.md, "The scale test's flake
    # under load"), so the gap is fetched again; after MAX_REFETCHES the offsets count as gone
    refetched_past: dict[Any, int] = {}
    # tp -> monotonic time of the latest seek for its gap. A re-fetch of which nothing arrives
    # for REFETCH_RETRY_S is sought again (track_inputs): whatever swallowed it -- a seek of
    # Faust's own at the end of a recovery, records dropped for an older consumer generation --
    # the partition must not stall with its events unprocessed (tests/test_scale.py once did).
    refetch_sought: dict[Any, float] = {}

    async def earliest_offset(tp: Any, fresh: bool = False) -> int | None:
        """The broker's earliest offset of ``tp``, cached; ``fresh``: read anew and not
        cached (retention moves it). None when it cannot be read (broker away)."""
        first = None if fresh else earliest.get(tp)
        if first is None:
            try:
                first = (await app.consumer.earliest_offsets(tp)).get(tp)
            except Exception as exc:
                log.warning("could not read the earliest offset of %s: %s", tp, exc)
                return None
            if first is not None and not fresh:
                earliest[tp] = first
        return first

    async def offsets_exist(tp: Any, expected: int) -> bool:
        tries = refetched_past[tp] = refetched_past.get(tp, 0) + 1
        if tries > MAX_REFETCHES:
            return False
        first = await earliest_offset(tp, fresh=True)
        return first is None or first <= expected  # unknown: fetch again rather than lose

    async def process_batch(batch: list[Any]) -> None:
        started = time.perf_counter()
        async with lock:
            consumer = app.consumer
            assigned = consumer.assignment()
            untrack = consumer.unacked.discard
            now_ms = int(time.time() * 1000)
            now = time.monotonic()
            consumed: dict[str, int] = {}
            replayed = 0
            seek_to: dict[Any, int] = {}
            held: set[Any] = set()  # partitions whose re-fetch this batch fetches again
            # per event below: bound once per batch (the loop is the worker's hot path)
            next_offset, note_offset = engine.next_offset, engine.note_offset
            applied, process = engine.applied_to_advertiser, engine.process
            add_pending = pending.append
            for event in batch:
                msg = event.message
                tp = msg.tp
                if tp not in assigned:
                    untrack(msg)  # revoked mid-batch: not acknowledged, the new owner reads it
                    continue
                topic, partition, offset = tp.topic, tp.partition, msg.offset
                expected = next_offset(partition, topic)
                if expected < 0:
                    # Nothing of this partition in the state yet: it starts at the broker's
                    # earliest offset (consumer_auto_offset_reset="earliest"). An event past it
                    # is a gap like any other: e.g. events fetched, then dropped from the
                    # agent's queue by a rebalance before any checkpoint -- with no committed
                    # offset, Faust's seek after the rebalance leaves the position past them.
                    first = await earliest_offset(tp)
                    expected = -1 if first is None else first  # unknown: no gap check
                if offset > expected >= 0:
                    seen = refetch.get(tp)
                    if seen is None or offset > seen:  # a gap, or the run fetched behind it
                        if seen is None:
                            metrics.input_gaps.labels(topic, "refetched").inc()
                            log.warning("input gap: %s[%d] expected offset %d, got %d "
                                        "(committed %s); fetching again", topic, partition,
                                        expected, offset, consumer._committed_offset.get(tp))
                        refetch[tp] = offset
                        seek_to[tp] = expected
                        untrack(msg)  # never acknowledged: it comes again
                        continue
                    # the re-fetch starts past the expected offset: still held by the broker?
                    if tp in held or await offsets_exist(tp, expected):
                        if tp not in held:  # (asked once per batch and partition)
                            held.add(tp)
                            log.warning("input gap: %s[%d] re-fetch began at %d, not at %d; "
                                        "fetching again", topic, partition, offset, expected)
                        seek_to[tp] = expected
                        untrack(msg)
                        continue
                    del refetch[tp]
                    refetched_past.pop(tp, None)
                    refetch_sought.pop(tp, None)
                    metrics.input_gaps.labels(topic, "missing").inc()
                    log.warning("input offsets %d-%d of %s[%d] do not exist (retention or "
                                "transaction markers)", expected, offset - 1, topic, partition)
                elif refetch:
                    if refetch.pop(tp, None) is not None:  # the re-fetch arrived
                        refetched_past.pop(tp, None)
                        refetch_sought.pop(tp, None)
                add_pending(event)
                positions[tp] = offset + 1
                last_active[tp] = now
                if offset < expected:
                    replayed += 1  # already in the restored state: do not count it twice
                    continue
                note_offset(partition, topic, offset + 1)
                source, validate = source_of[topic]
                raw = event.value if event.value is not None else b""
                try:
                    ev = validate(raw, now_ms, limits)
                except InvalidEvent as exc:
                    consumed[topic] = consumed.get(topic, 0) + 1
                    await dead_letter(msg, raw, exc, now_ms)
                    continue
                if applied(partition, ev["advertiser_id"], topic, offset):
                    replayed += 1
                    continue
                consumed[topic] = consumed.get(topic, 0) + 1
                where = (topic, offset)
                if source == "decision":
                    engine.apply_decision(ev, partition, position=where)
                    record_decision(ev)
                    continue
                try:
                    outputs = process(ev, partition, caught_up=False, position=where)
                except InvalidEvent as exc:  # late_event
                    await dead_letter(msg, raw, exc, now_ms)
                    continue
                if outputs:
                    await emit(outputs)
            for topic, n in consumed.items():
                metrics.events_consumed.labels(topic).inc(n)
            if replayed:
                metrics.events_replayed_skipped.inc(replayed)
            for tp, offset in seek_to.items():
                refetch_sought[tp] = time.monotonic()
                try:
                    await consumer.seek(tp, offset)
                except Exception as exc:  # revoked meanwhile: the next owner starts from the state
                    log.warning("could not seek %s to %d: %s", tp, offset, exc)
        metrics.batch_seconds.observe(time.perf_counter() - started)

    async def dead_letter(msg: Any, raw: bytes, exc: InvalidEvent, now_ms: int) -> None:
        if exc.reason == "late_event":
            metrics.events_late.labels(msg.topic).inc()
        metrics.events_invalid.labels(msg.topic, exc.reason).inc()
        record = dead_letter_record(raw, exc, topic=msg.topic, partition=msg.partition,
                                    offset=msg.offset, at_ms=now_ms)
        await send(topics["dead_letter"], msg.partition, msg.key, record)
        log.warning("dead-letter %s", exc.reason,
                    extra={"topic": msg.topic, "partition": msg.partition, "offset": msg.offset})

    @app.timer(interval=1.0)
    async def track_inputs() -> None:
        """Mark caught-up input partitions (closes windows of idle inputs); export lag."""
        consumer = app.consumer
        tps = [tp for tp in consumer.assignment() if tp.topic in input_names]
        if not tps or app.rebalancing:
            return
        asked = time.monotonic()
        try:
            highwaters = await consumer.highwaters(*tps)
            missing = [tp for tp in tps if tp not in positions and tp not in earliest]
            if missing:
                earliest.update(await consumer.earliest_offsets(*missing))
        except Exception as exc:  # broker away: try again next second
            log.warning("could not read highwaters: %s", exc)
            highwaters = None
        now = time.monotonic()
        async with lock:
            if app.rebalancing:  # began while we waited: state may be mid-recovery
                return
            assignment = consumer.assignment()
            # The broker did not answer (in time): an input is not idle because we could not
            # hear from it. Every input counts as lagging again until it has been silent for
            # INPUT_IDLE_S with the broker reachable, so a backlog that producers resend after
            # an outage is not late behind windows closed meanwhile (docs/faults.md, "An outage
            # longer than the allowed lateness"). Un-catching only holds the watermark back: it
            # closes nothing (emitted all the same).
            reachable = highwaters is not None and now - asked <= INPUT_IDLE_S
            outputs = []
            resume: list[tuple[Any, int, int | None]] = []  # (stalled tp, its next offset, committed)
            for tp in tps:
                source = source_of[tp.topic][0]
                if not reachable:
                    if tp in assignment:
                        last_active[tp] = now
                        outputs += engine.set_caught_up(tp.partition, source, False)
                    continue
                idle_since = last_active.setdefault(tp, now)
                hw = highwaters.get(tp)
                if hw is None or tp not in assignment:
                    continue
                committed = consumer._committed_offset.get(tp)
                nxt, seek = read_position(
                    positions.get(tp), committed, earliest.get(tp, 0), hw,
                    engine.next_offset(tp.partition, tp.topic), tp in refetch,
                    now - refetch_sought.get(tp, now), now - idle_since)
                if seek is not None:
                    if tp in refetch:
                        refetch_sought[tp] = now
                    else:
                        last_active[tp] = now
                    resume.append((tp, seek, committed))
                metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(hw - nxt, 0))
                if nxt >= hw and now - idle_since >= INPUT_IDLE_S:
                    outputs += engine.set_caught_up(tp.partition, source, True)
            for tp, offset, committed in resume:
                metrics.input_gaps.labels(tp.topic, "stalled").inc()
                log.warning("input %s[%d] stalled: nothing came in %.0f s although the broker "
                            "holds offset %d, where the state is (committed %s); fetching again",
                            tp.topic, tp.partition, REFETCH_RETRY_S, offset, committed)
                try:
                    await consumer.seek(tp, offset)
                except Exception as exc:  # revoked meanwhile: the next owner starts from state
                    log.warning("could not seek %s to %d: %s", tp, offset, exc)
            if outputs:  # the closed windows' state goes with the next checkpoint
                await emit(outputs)
        metrics.active_advertisers.set(engine.active_advertisers())

    @app.task
    async def follow_model_control() -> None:
        """Every worker reads the whole compacted control topic (no consumer group)."""
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            topics["model_control"], bootstrap_servers=ra.bootstrap, group_id=None,
            auto_offset_reset="earliest", enable_auto_commit=False,
            **aiokafka_security(settings))
        await consumer.start()
        try:
            async for msg in consumer:
                try:
                    cfg = ModelConfig.from_json(orjson.loads(msg.value))
                except Exception as exc:  # a bad control record must never stop the worker
                    log.error("ignoring invalid model config at offset %s: %s", msg.offset, exc)
                    continue
                async with lock:
                    if engine.apply_model_config(cfg):
                        metrics.model_config_version.set(cfg.version)
                        log.info("model config v%s applied: enforce=%s shadows=%s", cfg.version,
                                 cfg.enforce, ",".join(cfg.shadows))
        finally:
            await consumer.stop()

    @app.on_partitions_revoked.connect
    async def on_revoked(sender: Any, revoked: Any, **_: Any) -> None:
        metrics.rebalances.inc()
        engine.revoke({tp.partition for tp in revoked if tp.topic in input_names})
        for tp in revoked:
            refetch.pop(tp, None)
            refetched_past.pop(tp, None)
            refetch_sought.pop(tp, None)
            if tp.topic in input_names:
                positions.pop(tp, None)
                earliest.pop(tp, None)
                last_active.pop(tp, None)
                try:
                    metrics.consumer_lag.remove(tp.topic, str(tp.partition))
                except KeyError:
                    pass


def read_position(position: int | None, committed: int | None, earliest: int, highwater: int,
                  expected: int, refetching: bool, refetch_age_s: float, idle_s: float
                  ) -> tuple[int, int | None]:
    """Where an input partition's reading stands, for its lag and caught-up mark, and where to
    seek it, if anywhere: ``(next offset, offset to seek to or None)``.

    ``position``: the next offset after the last event the agent accepted since the assignment
    (None: none yet); ``committed``: the group's committed offset; ``earliest``: the first offset
    the broker holds; ``highwater``: the offset after its last; ``expected``: the next offset
    the state expects (-1: none yet); ``refetching``: a gap of it is being fetched again, sought
    ``refetch_age_s`` ago; ``idle_s``: time since its last event (or its assignment).

    The next offset is the state's, not the committed offset's, until an event is read: a gap
    being fetched again is read up to ``expected`` (never caught up before the re-fetch arrives,
    or its windows would close and the re-fetched events come late); a partition with nothing
    read since the assignment stands at ``expected`` too (its committed offset may have run
    ahead of the state, and the worker's own checkpoint commits the state's offsets anyway).

    A partition is *stalled* when the broker holds the offset it needs next and nothing came
    for REFETCH_RETRY_S (since the re-fetch's seek, for a gap): it is sought there, and again
    every REFETCH_RETRY_S while nothing comes. Whatever held it up -- a re-fetch swallowed by a
    seek of Faust's own at the end of a recovery, a committed offset ahead of the state with no
    later event to show the agent's gap rule, a record the fetch loop never delivered -- the
    partition must not stall with events unprocessed (docs/faults.md, "Partitions never stall
    unread"). A seek that was not needed costs a re-fetch, never an event.
    """
    if refetching and expected >= 0:
        nxt, quiet = expected, refetch_age_s
    elif position is not None:
        nxt, quiet = position, idle_s
    elif expected >= earliest and expected >= 0:  # (below earliest: gone by retention)
        nxt, quiet = expected, idle_s
    else:
        nxt, quiet = (committed if committed is not None else earliest), idle_s
    stalled = earliest <= nxt < highwater and quiet >= REFETCH_RETRY_S
    return nxt, (nxt if stalled else None)


def aiokafka_security(settings: Any) -> dict[str, Any]:
    proto = settings.security_protocol.upper()
    if proto == "PLAINTEXT":
        return {}
    from aiokafka.helpers import create_ssl_context

    conf: dict[str, Any] = {"security_protocol": proto}
    if "SSL" in proto:
        conf["ssl_context"] = create_ssl_context(cafile=settings.ssl_cafile or None)
    if proto.startswith("SASL"):
        conf.update(sasl_mechanism=settings.sasl_mechanism or "SCRAM-SHA-512",
                    sasl_plain_username=settings.sasl_username,
                    sasl_plain_password=settings.sasl_password)
    return conf
