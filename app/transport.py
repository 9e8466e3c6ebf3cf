"""The worker's Faust transport: aiokafka, minus Faust's per-message task overhead (about 3x
the worker's throughput, see docs/performance.md).

THE DEFAULT since session 3 (``RISKSTREAM_TRANSPORT=kafka`` selects Faust's stock transport).
It was opt-in while its delivery test (tests/test_transport.py: rebalance, then SIGKILL
mid-stream) failed in about half of the runs; the cause was not in the transport but in what
happened to messages skipped across a rebalance (acknowledged, so committed past, and lost), a
bug of every transport that the faster one only hit more often. It is fixed in the agent: the
checkpointed state is the offset authority (docs/faults.md, "Rebalance hand-over"). The rest of
this module -- ``event_batches``, ``commit_offsets``, ``keep_queued_events_on_resume``,
``QuietMonitor``, ``RawSchema``, ``tune_gc`` -- is used on every transport.

Registered as ``riskstream://`` (the ``faust.transports`` entry point in pyproject.toml; also
registered here on import, for a checkout whose install predates the entry point). It is the
stock aiokafka transport (``faust.transport.drivers.aiokafka.Transport``) with three changes,
each small and each pinned by tests/test_transport.py against faust-streaming 0.15.3,
aiokafka 0.14.0 and mode-streaming 0.7.1 (``PINNED``; an upgrade fails that test first):

1. :meth:`Consumer._drain_messages` hands each fetched message to the Conductor with a plain
   ``await callback(message)``. Faust's own loop wraps every message in
   ``Service.wait_first(callback(message), suspend_flow.wait())``: two tasks, an
   ``asyncio.wait`` and a dict of futures per event, about a quarter of a no-op worker's CPU.
   That wait exists so a callback blocked on flow control, a full producer buffer or a full
   channel queue can be abandoned when a rebalance suspends the flow. The fast path is taken
   only when none of those can block (checked before the call), so the callback runs to its end
   without yielding, exactly as it would inside ``wait_first``; otherwise the stock
   ``wait_first`` runs. And the loop does not commit every ``broker_commit_every`` acks itself:
   the agent acknowledges a whole checkpoint at once, often during a revocation, and a commit
   started by the fetch loop then could wait on the consumer thread that waits on the
   revocation (seen as a stalled partition in tests/test_transport.py). Commits come from
   Faust's commit timer (``broker_commit_interval``), rebalances and shutdown. Everything
   else -- gap tracking, read offsets, stop and cancel handling -- is Faust's code.
   Since session 4 the loop also inlines ``Consumer.getmany`` (no async-generator step per
   record) and puts a message whose partition feeds exactly one :class:`RawSchema` channel
   straight on that channel's queue (:func:`_direct_delivery`: the Event the callback would
   build, the same pressure callbacks), skipping the Conductor callback's coroutine, lock,
   flow/ebb awaits and decode; whether that can block is checked after every await of the
   loop rather than per message (nothing it depends on changes in between).
2. ``fetch_max_wait_ms`` is :data:`FETCH_MAX_WAIT_MS` instead of the 1,500 ms Faust hard-codes:
   aiokafka keeps one fetch in flight per broker, and a long-poll that only covers idle
   partitions (changelogs, caught-up inputs) otherwise stalls partitions that have data.
3. :class:`QuietMonitor` (the ``Monitor`` app setting, not part of the transport): Faust's
   default sensor keeps per-message statistics nobody here reads (our figures are the
   Prometheus metrics of ``app.metrics``); the per-message hooks are no-ops.

And the agents read their input with :func:`event_batches` instead of ``Stream.noack_take``,
which runs every event through the stream's iterator, a processor and a passive drainer task;
it takes whatever is queued at once (:func:`take_queued`).

Delivery: messages are still tracked as unacked, acknowledged by the agent only after its
checkpoint, and committed by Faust's own commit path; messages of an older consumer generation
are skipped exactly as ``Stream`` skips them. tests/test_transport.py kills and rebalances a
worker mid-stream on Apache Kafka and checks every input offset is committed, and that every
score and alert equals the backtest's (``RISKSTREAM_TEST_TRANSPORT=riskstream`` runs it on this
transport).

exactly_once: Faust's transactions live in the aiokafka transport's producer and consumer, which
this transport inherits unchanged; still, ``app.factory`` uses the stock ``kafka://`` transport
whenever ``RISKSTREAM_PROCESSING_GUARANTEE=exactly_once``, because only the stock one is tested
with transactions.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any, AsyncIterator, Callable

import faust
from mode.utils.futures import notify
from faust.sensors.monitor import Monitor
from faust.transport import producer as faust_producer
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types.tuples import TP, ConsumerMessage, ack_lock
from faust.types import EventT

#: The versions this module was written and tested against (tests/test_transport.py).
PINNED = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0", "mode-streaming": "0.7.1"}

SCHEME = "riskstream"
FETCH_MAX_WAIT_MS = 100
GC_GEN0_THRESHOLD = 50_000
MISSING = object()


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by AIOKafkaConsumer.start()
        return consumer


class Consumer(faust_aiokafka.Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._seeks: dict[Any, int] = {}  # tp -> number of seek() calls (the agent's re-fetch)
        self._seek_to: dict[Any, int] = {}  # tp -> offset of its latest seek()

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def seek(self, partition: Any, offset: int) -> None:
        """Seek ``partition`` to ``offset`` on the consumer thread, then drop, in
        :meth:`_drain_messages`, every record of it fetched before the seek.

        Faust's ``seek`` calls aiokafka's ``seek`` from the event loop's thread while the
        consumer thread's ``getmany`` may be between checking a partition's position and
        advancing it past the records it returns: the seek was then overwritten and lost.
        ``seek_wait`` runs it on the consumer thread (as Faust's own seeks to committed offsets
        do). And records already fetched past ``offset`` -- held by the fetch loop, or on their
        way from a fetch that began before the seek -- were delivered after it and raised
        Faust's read offset past it, so that the loop then silently dropped the re-fetched
        records below that read offset. Both made the agent's gap re-fetch (agents/events.py)
        arrive past the expected offset, which it takes for offsets that do not exist: events
        lost (docs/faults.md, "The scale test's flake under load")."""
        await self._seek_on_thread(partition, offset)
        self._seeks[partition] = self._seeks.get(partition, 0) + 1
        self._seek_to[partition] = offset

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - a thread loop
        # Faust 0.15.3's Consumer._drain_messages with Consumer.getmany inlined (one loop over
        # the fetched records instead of an async generator step per record). Changes, marked
        # "-- change" below: (1) a message for a partition whose only channel decodes with
        # RawSchema is put on that channel's queue right here, when nothing can block (flow
        # running, producer buffer below its limit, queue not full, the Conductor's index not
        # being rebuilt); otherwise the Conductor callback runs as before (plain ``await`` when
        # it cannot block, else Faust's ``wait_first``); (2) the partition's highwater is
        # passed to the Monitor once per fetched batch, not per record; (3) no commit every
        # ``broker_commit_every`` acks from this loop (see the module docstring); (4) records
        # of a partition seek()ed since the fetch began are dropped (see :meth:`seek`).
        app = self.app
        callback = self.callback
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        acks_enabled_for = app.topics.acks_enabled_for
        flow_suspended = self.suspend_flow.is_set
        app_flow_active = app.flow_control.is_active  # what the Conductor callback waits for
        buffer = app.producer.buffer
        conductor = app.topics
        tp_index = conductor._tp_index  # tp -> the channels the Conductor feeds
        index_lock = conductor._tp_to_callback_lock
        iterate = self.scheduler.iterate
        highwater = self.highwater
        track_tp_end_offset = app.monitor.track_tp_end_offset
        deliver_to = _direct_delivery(self, conductor)
        targets: dict[Any, Any] = {}  # tp -> deliver_to(tp), valid until the next await

        def deliverable() -> bool:
            # Nothing the direct delivery or a non-blocking callback waits for can change
            # until this loop awaits: checked after every await, not per message.
            targets.clear()
            return (app_flow_active() and not flow_suspended() and not index_lock.locked()
                    and buffer.size <= buffer.max_messages)

        sleep = asyncio.sleep
        flag = CONSUMER_FETCHING
        yield_every = 100
        num_since_yield = 0
        seeks = self._seeks
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(flag)
                # -- change (4): the seeks before this fetch began; a record of a partition
                # seeked since was (or may have been) fetched before that seek
                seeks_before = dict(seeks)
                reseeked: set[Any] = set()
                # ------------------------------------------------------------------------
                await self.sleep(0)
                if not self.should_stop:
                    # -- Consumer.getmany, inlined --------------------------------------------
                    records, active_partitions = await self._wait_next_records(1.0)
                    generation_id = app.consumer_generation_id
                    if records is None or self.should_stop:
                        records = {}
                    elif not self.flow_active:
                        self.log.dev("getmany called while flow not active. "
                                     "Seek back to committed offsets.")
                        try:
                            await self.perform_seek()
                        except Exception as ex:
                            self.log.warning(
                                f"exception performing seek when flow not active {ex}")
                        records = {}
                    for tp in records:  # -- change (2)
                        track_tp_end_offset(tp, highwater(tp))
                    can_deliver = deliverable()
                    for tp, record in iterate(records):
                        if not self.flow_active:
                            break
                        if app.consumer_generation_id != generation_id:
                            self.log.dev("Generation id changed from %r to %r. "
                                         "Cancelling getmany.", generation_id,
                                         app.consumer_generation_id)
                            break
                        if not (active_partitions is None or tp in active_partitions
                                or tp in self._buffered_partitions):
                            continue
                        timestamp = record.timestamp
                        message = ConsumerMessage(
                            record.topic, record.partition, record.offset,
                            None if timestamp is None else timestamp / 1000.0,
                            record.timestamp_type, record.headers, record.key, record.value,
                            record.checksum, record.serialized_key_size,
                            record.serialized_value_size, tp, generation_id=generation_id)
                        # -- the drain loop ---------------------------------------------------
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await sleep(0)
                            num_since_yield = 0
                            can_deliver = deliverable()
                        if seeks and seeks.get(tp) != seeks_before.get(tp):
                            # -- change (4): dropped, undelivered, the read offset untouched.
                            # The fetch may also have begun before the seek and read from its
                            # target: seek there once more, so those records come again.
                            if tp not in reseeked:
                                reseeked.add(tp)
                                await self._reseek(tp)
                                can_deliver = deliverable()
                            continue
                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            if gap > 1 and r_offset and acks_enabled_for(message.topic):
                                await self._add_gap(tp, r_offset + 1, offset)
                                can_deliver = deliverable()
                            # -- change (1) ---------------------------------------------------
                            if can_deliver:
                                to = targets.get(tp, MISSING)
                                if to is MISSING:
                                    to = targets[tp] = deliver_to(tp)
                                if to is not None and not to[0].full():
                                    queue, event_class, pressure_high, pressure_drop = to
                                    message.refcount = 1  # Message.incref: one channel
                                    queue.put_nowait_enhanced(
                                        event_class(app, message.key, message.value,
                                                    message.headers, message),
                                        on_pressure_high=pressure_high,
                                        on_pressure_drop=pressure_drop)
                                    set_read_offset(tp, offset)
                                    continue
                                if not any(c.queue.full() for c in tp_index.get(tp, ())):
                                    await callback(message)  # runs to its end, no yield
                                    set_read_offset(tp, offset)
                                    continue
                            await self.wait_first(callback(message),
                                                  self.suspend_flow.wait())
                            can_deliver = deliverable()
                            # -----------------------------------------------------------------
                            set_read_offset(tp, offset)
                    unset_flag(flag)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(flag)

    async def _reseek(self, tp: Any) -> None:
        """Seek ``tp`` to its latest seek's offset once more, if it is still assigned."""
        offset = self._seek_to[tp]
        try:
            await self._seek_on_thread(tp, offset)
        except Exception as exc:  # revoked meanwhile: the next owner starts from its state
            self.log.info("could not seek %s to %d again: %s", tp, offset, exc)

    async def _seek_on_thread(self, tp: Any, offset: int) -> None:
        """aiokafka's seek on the consumer thread; Faust's read offset follows it."""
        await self._thread.seek_wait({tp: offset})
        self._read_offset[tp] = offset if offset else None


def _direct_delivery(consumer: Any, conductor: Any) -> Callable[[Any], Any]:
    """``tp -> (queue, event class, on_pressure_high, on_pressure_drop)`` when the Conductor
    feeds ``tp`` to exactly one channel, decoded by :class:`RawSchema` (whose decode is only
    ``Event(app, key, value, headers, message)``); else None. What the Conductor's callback
    (``ConductorCompiler.build``, 0.15.3) does for such a message, minus its awaits: the
    pressure callbacks are the same calls (sensor + ``on_buffer_full``, ``on_buffer_drop``),
    built once per partition so that the queue recognises a pending drop callback. Rebuilt
    when the Conductor rebuilds its callback for the partition (every assignment)."""
    callbacks = conductor._tp_to_callback
    tp_index = conductor._tp_index
    on_topic_buffer_full = conductor.app.sensors.on_topic_buffer_full
    cache: dict[Any, tuple[Any, Any]] = {}  # tp -> (the Conductor's callback, delivery)

    def deliver_to(tp: Any) -> Any:
        callback = callbacks.get(tp)
        hit = cache.get(tp)
        if hit is not None and hit[0] is callback:
            return hit[1]
        delivery = None
        channels = tp_index.get(tp, ())
        if callback is not None and len(channels) == 1:
            (channel,) = channels
            event_class = getattr(channel.decode, "raw_event_class", None)
            if event_class is not None:
                key = TP(tp.topic, tp.partition)  # Faust's TP: records carry aiokafka's

                def pressure_high() -> None:
                    on_topic_buffer_full(key)
                    consumer.on_buffer_full(key)

                def pressure_drop() -> None:
                    consumer.on_buffer_drop(key)

                delivery = (channel.queue, event_class, pressure_high, pressure_drop)
        cache[tp] = (callback, delivery)
        return delivery

    return deliver_to


class ProducerBuffer(faust_producer.ProducerBuffer):
    """Faust's buffer of ``send_soon`` messages, whose ``size`` -- asked by the Conductor for
    every message -- read the ``producer_threaded`` setting through the settings registry on
    every call."""

    @property
    def size(self) -> int:
        return self.pending.qsize()


class Producer(faust_aiokafka.Producer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.threaded_producer is None:  # the threaded producer keeps Faust's buffer
            self.buffer = ProducerBuffer(loop=self.loop, beacon=self.beacon)
            self.buffer.app = self.app


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer  # type: ignore[assignment]
    Producer = Producer  # type: ignore[assignment]
    driver_version = faust_aiokafka.Transport.driver_version


class QuietMonitor(Monitor):
    """Faust's Monitor without its per-message bookkeeping (rebalance and commit hooks stay)."""

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        pass

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> None:
        return None

    def on_stream_event_out(self, tp: Any, offset: int, stream: Any, event: Any,
                            state: Any = None) -> None:
        pass

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        pass

    def on_topic_buffer_full(self, tp: Any) -> None:
        pass

    def on_table_get(self, table: Any, key: Any) -> None:
        pass

    def on_table_set(self, table: Any, key: Any, value: Any) -> None:
        pass

    def on_table_del(self, table: Any, key: Any) -> None:
        pass

    def on_send_initiated(self, producer: Any, topic: str, message: Any, keysize: int,
                          valsize: int) -> Any:
        return None

    def on_send_completed(self, producer: Any, state: Any, metadata: Any) -> None:
        pass


class RawSchema(faust.Schema):
    """Keys and values as the bytes on the wire (validation is ours). Faust's decode of a raw
    schema still looks both codecs up in its registry and the Event class in the settings for
    every message; this one binds them once."""

    def __init__(self) -> None:
        super().__init__(key_serializer="raw", value_serializer="raw")

    def compile(self, app: Any, *, on_key_decode_error: Any = None,
                on_value_decode_error: Any = None, default_propagate: bool = False) -> Any:
        event_class = app.conf.Event

        async def decode(message: Any, *, propagate: bool = default_propagate) -> Any:
            return event_class(app, message.key, message.value, message.headers, message)

        decode.raw_event_class = event_class  # type: ignore[attr-defined]  # direct delivery
        return decode


def tune_gc() -> None:
    """Fewer garbage collections in a worker. Every event allocates a handful of short-lived
    objects (Message, Event, the decoded dict) while the heap holds the advertisers' states and
    the events awaiting their checkpoint: with CPython's default gen-0 threshold (700
    allocations) collections ran every few events and scanned that heap (about a tenth of the
    worker's CPU in a profile). Objects alive at start-up are frozen out of collection."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 50, 100)


def register() -> None:
    """Make ``riskstream://`` resolvable even without the installed entry point."""
    from faust.transport.drivers import TRANSPORTS

    TRANSPORTS.aliases.setdefault(SCHEME, f"{__name__}:Transport")


register()


async def event_batches(app: faust.App, stream: Any, max_events: int, idle_s: float
                        ) -> AsyncIterator[list[EventT]]:
    """The events of ``stream``'s channel, as lists: each list is what is queued when the agent
    asks (at most ``max_events``), so a backlog arrives in large lists and a trickle in small
    ones, without any wait for a batch to fill. An empty list after ``idle_s`` without events,
    so the caller can checkpoint (and must, when a rebalance or shutdown suspends the flow:
    Faust waits for every tracked message to be acknowledged). Nothing is acknowledged here:
    the caller acks each event (``event.message.ack(app.consumer)``) once it is safe.

    This replaces ``Stream.noack_take``, which runs every event through the stream's iterator, a
    processor and a passive drainer task. Per event it keeps what ``Stream.__aiter__`` does for
    delivery: it tracks the message as unacked (Faust's commit, rebalance and shutdown wait for
    it), and it skips a message of an older consumer generation or one that arrived while flow
    control is suspended (a rebalance). Unlike ``Stream``, it does NOT acknowledge what it
    skips: an acknowledgement lets Faust commit past an event nobody processed. Whoever owns the
    partition next reads it again -- from the committed offset after the rebalance, or, where the
    consumer's position has moved past it, from the offset its state expects (the agent's gap
    check in agents/events.py).
    """
    channel = aiter(stream.channel)  # registers the iterator's queue with the Conductor
    queue = channel.queue
    empty = queue.empty
    consumer = app.consumer
    add_unacked: Callable[[Any], None] = consumer.unacked.add
    acking_topics = app.topics.acking_topics
    flow_active = app.flow_control.is_active
    wait_for = asyncio.wait_for
    while not stream.should_stop:
        batch: list[EventT] = []
        items = []
        if empty():
            try:
                items.append(await wait_for(queue.get(), idle_s))
            except asyncio.TimeoutError:
                yield batch
                continue
            except StopAsyncIteration:  # the channel was closed (the agent is stopping)
                return
        items += take_queued(queue, max_events - len(items))
        generation_id = app.consumer_generation_id
        active = flow_active()
        for item in items:
            if isinstance(item, EventT):
                message = item.message
                if not active or message.generation_id != generation_id:
                    pass  # dropped unacknowledged: it is fetched again (see the docstring)
                else:
                    if message.topic in acking_topics and not message.tracked:
                        message.tracked = True
                        add_unacked(message)
                    batch.append(item)
        yield batch


def take_queued(queue: Any, n: int) -> list[Any]:
    """What up to ``n`` calls of ``queue.get_nowait()`` return, taken at once (mode 0.7.1's
    ``ThrowableQueue`` over CPython's ``asyncio.Queue``): a pending error is raised first, the
    queue's pressure-drop check runs once (as the first ``get_nowait`` would; the next take,
    or ``get()`` on the empty queue, runs the rest), and a blocked putter is woken per item."""
    if queue._errors:
        raise queue._errors.popleft()
    queue.maybe_endorse_pressure_drop()
    queued = queue._queue
    if len(queued) <= n:
        items = list(queued)
        queued.clear()
    else:
        items = [queued.popleft() for _ in range(n)]
    putters = queue._putters
    if putters:
        for _ in items:
            queue._wakeup_next(putters)
    return items


def ack_events(consumer: Any, events: list[EventT]) -> int:
    """Acknowledge ``events`` as ``event.message.ack(consumer)`` does for each (faust 0.15.3:
    ``Message.ack`` -> ``ConsumerMessage.on_final_ack`` -> ``Consumer.ack``), in one pass: the
    shared ack lock taken once instead of three times per message, and the consumer's
    per-partition bookkeeping (acked offsets, unacked set) updated once per partition. Same
    outcome per message: its reference count drops by one; at zero it is marked acked, and if
    its topic is acknowledged and its offset not below the committed one nor acked already, it
    leaves the unacked set and its offset is recorded for Faust's commit. Returns the number of
    offsets recorded."""
    by_tp: dict[Any, list[Any]] = {}
    with ack_lock:
        committed = consumer._committed_offset
        acking_topics = consumer.app.topics.acking_topics
        for event in events:
            message = event.message
            if message.acked:
                continue
            refcount = message.refcount = max(message.refcount - 1, 0)
            if refcount:
                continue
            message.acked = True
            if message.topic in acking_topics:
                tp = message.tp
                floor = committed[tp]
                if floor is None or message.offset >= floor:
                    if tp in by_tp:
                        by_tp[tp].append(message)
                    else:
                        by_tp[tp] = [message]
        recorded = 0
        discard = consumer._unacked_messages.discard
        for tp, messages in by_tp.items():
            index = consumer._acked_index[tp]
            append = consumer._acked[tp].append
            before = len(index)
            for message in messages:
                offset = message.offset
                if offset not in index:
                    index.add(offset)
                    append(offset)
                    discard(message)
            recorded += len(index) - before
        consumer._n_acked += recorded
        if by_tp:
            notify(consumer._waiting_for_ack)
    return recorded


async def commit_offsets(consumer: Any, offsets: dict[Any, int]) -> bool:
    """Commit ``offsets`` (tp -> next offset to read) through Faust's own commit path, taking
    its turn with Faust's committers exactly as ``Consumer.commit`` does (one commit at a time).

    The agent commits the offsets its checkpointed state records, at each checkpoint (see
    agents/events.py), instead of letting Faust derive them from acknowledged messages: that
    bookkeeping is kept per partition across rebalances and can stop (a hole that is never
    acknowledged) or run ahead (an acknowledgement of a message that was skipped). Offsets not
    beyond the last committed one, or of partitions no longer assigned, are left out.
    ``Consumer._commit_offsets`` flushes the producer, commits, and records the committed offsets,
    so Faust's later ack-driven commits never move them back."""
    committed = consumer._committed_offset
    due = {tp: off for tp, off in offsets.items()
           if (committed.get(tp) is None or off > committed[tp])}
    if not due:
        return False
    await consumer.maybe_wait_for_commit_to_finish()
    consumer._commit_fut = asyncio.Future()
    try:
        return await consumer._commit_offsets(due)
    finally:
        fut, consumer._commit_fut = consumer._commit_fut, None
        if not fut.done():
            fut.set_result(None)


def keep_queued_events_on_resume(flow_control: Any) -> None:
    """Make ``flow_control.resume()`` clear the channel queues only when the flow was actually
    suspended.

    mode's ``FlowControlEvent.resume`` always clears every ``clear_on_resume`` queue (the agent's
    channel among them), even when the flow is already active. At the end of a table recovery
    Faust resumes the input partitions, *then* awaits the seek to the committed offsets, *then*
    calls ``resume()``: events fetched during that await -- already past the position the seek
    keeps, since it is the committed offset the partition was reset to on assignment -- are
    wiped from the queue and never fetched again. Seen in every second exactly_once run (the
    ~10 s recovery leaves a fetch pending): the replacement's first event 1-3 offsets past the
    committed one, those events missing from its state, scores and an alert differing from the
    replay. Events queued before a real suspension (a rebalance) are still cleared; events of an
    older generation that remain are skipped by ``event_batches``.
    """
    resume = flow_control.resume

    def resume_once_suspended() -> None:
        if not flow_control.is_active():
            resume()

    flow_control.resume = resume_once_suspended
