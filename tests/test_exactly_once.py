"""``RISKSTREAM_PROCESSING_GUARANTEE=exactly_once`` (app/eos.py).

On Apache Kafka: a worker SIGKILLed in the middle of its input is replaced, and a
``read_committed`` consumer of the outputs sees every window score, every alert and every dead
letter exactly once -- no duplicate record at all, not merely duplicate ids with the same content
(which at-least-once allows) -- and the same ids and scores as the replay. Before app/eos.py this
failed: outputs bypassed Faust's transactions and 66 score records were repeated after the kill.
~45 s (about 10 s of it Faust's changelog recovery waiting out a trailing transaction marker,
docs/faults.md); it runs in the default suite.

Without a broker: the protocol against fakes of Faust's producer and consumer (one transaction
per input partition carrying its outputs, changelog records and input offsets; nothing sent
before the checkpoint; held outputs of a revoked partition dropped; Faust's own commit path
switched off; a failed transaction crashes the worker) and the Faust internals it uses.

Broker behaviour relied on: a new transactional producer with the same transactional id fences
the dead one and its open transaction is aborted, so read_committed consumers never see it;
transaction markers occupy offsets.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import Counter
from types import SimpleNamespace

import orjson
import pytest

from tests.conftest import TopicReader, labelled_metrics, produce, timed_case, wait_until

BAD = [(f"adv-bad-{i}".encode(), b"{not json" + str(i).encode()) for i in range(24)]


def _consumed(w) -> float:
    return sum(v for (name, _), v in labelled_metrics(w).items()
               if name == "riskstream_events_consumed_total")


def _offset_span(bootstrap: str, topic: str) -> int:
    """Offsets used in ``topic`` (data records plus transaction markers)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "offset-span"})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(hi - lo for lo, hi in (c.get_watermark_offsets(TopicPartition(topic, p),
                                                                  timeout=10)
                                          for p in parts))
    finally:
        c.close()


@pytest.mark.integration
def test_exactly_once_kill_leaves_no_duplicate_output(kafka_broker, kafka_topics, worker):
    prefix, bootstrap = kafka_topics, kafka_broker.bootstrap
    if kafka_broker.kind == "embedded":
        pytest.skip("the embedded broker has no transactions")
    case = timed_case(seed=61, advertisers=12, duration_s=1800, spam_start_s=900)
    assert case.expected_alerts(), "test design: the incident must alert offline"
    by_topic = case.records_by_topic(prefix)
    impressions = f"{prefix}ad-impressions"
    # all input first (a deterministic replay); malformed records before and after the good
    # ones, so dead letters are written both before the kill and by the replacement
    produce(bootstrap, impressions, BAD[:12])
    for topic, records in by_topic.items():
        produce(bootstrap, topic, records)
    produce(bootstrap, impressions, BAD[12:])
    n = sum(len(r) for r in by_topic.values())
    eos = {"RISKSTREAM_PROCESSING_GUARANTEE": "exactly_once"}

    first = worker(prefix, **eos)
    wait_until(lambda: _consumed(first) >= n * 0.4, 90, "the first worker half-way",
               on_timeout=first.log_tail, interval=0.05)
    first.proc.kill()  # SIGKILL mid-stream: its open transaction stays open
    first.proc.wait(10)

    second = worker(prefix, RISKSTREAM_APP_ID=first.env["RISKSTREAM_APP_ID"], **eos)
    out = case.assert_live_output(bootstrap, prefix, on_timeout=second.log_tail)

    # TopicReader reads read_committed (librdkafka's default isolation level): each window
    # score and each alert record exactly once, no repeat even with identical content
    assert out["alert_repeats"] == 0 and out["score_repeats"] == 0, out
    with TopicReader(bootstrap, f"{prefix}risk-dead-letter") as dead:
        dead.wait_for(len(BAD), 30, "every malformed record dead-lettered",
                      on_timeout=second.log_tail)
        dead.poll(1.0)  # a repeat would show up now
        sources = Counter((d["source"]["partition"], d["source"]["offset"])
                          for d in (orjson.loads(r.value) for r in dead.records))
    assert len(dead.records) == len(BAD) and set(sources.values()) == {1}, sources
    # the outputs really went through transactions: markers take offsets of their own
    with TopicReader(bootstrap, f"{prefix}risk-scores",
                     **{"isolation.level": "read_uncommitted"}) as raw:
        raw.wait_for(out["windows"], 30, "uncommitted view")
        raw.poll(1.0)
        aborted = len(raw.records) - out["windows"]
    span = _offset_span(bootstrap, f"{prefix}risk-scores")
    assert span > len(raw.records), "no transaction markers: exactly_once is not in effect"
    print(f"\nexactly_once: {n} events + {len(BAD)} malformed, killed at >= 40%; "
          f"read_committed: {out}, {len(dead.records)} dead letters; "
          f"{aborted} aborted score records visible only to read_uncommitted; "
          f"{span - len(raw.records)} offsets taken by transaction markers")


# -- the protocol, against fakes of Faust's producer and consumer ----------------------------
class FakeProducer:
    def __init__(self, fail_on: str | None = None) -> None:
        self.log: list[tuple] = []
        self.fail_on = fail_on

    async def send(self, topic, key, value, partition, timestamp, headers, *,
                   transactional_id=None):
        self.log.append(("send", transactional_id, topic, key, value, partition))
        fut = asyncio.get_running_loop().create_future()
        if topic == self.fail_on:
            fut.set_exception(RuntimeError("fenced"))
        else:
            fut.set_result(None)
        return fut

    async def commit_transactions(self, tid_to_offsets, group_id, start_new_transaction=True):
        assert start_new_transaction  # Faust's producers always have one transaction open
        for tid, offsets in tid_to_offsets.items():
            self.log.append(("commit", tid, group_id,
                             {(tp.topic, tp.partition): o for tp, o in offsets.items()}))

    async def commit_transaction(self, tid):
        self.log.append(("commit", tid, None, {}))

    async def begin_transaction(self, tid):
        self.log.append(("begin", tid))


def _fake_worker(producer: FakeProducer, owned: list[int]):
    from aiokafka.structs import TopicPartition

    from app.eos import ExactlyOnce

    receivers = []
    crashed = []

    async def faust_commit(offsets, start_new_transaction=True):
        raise AssertionError("Faust's own commit path must be switched off")

    async def crash(exc):
        crashed.append(exc)

    consumer = SimpleNamespace(
        assignment=lambda: {TopicPartition(t, p) for t in ("imp", "fb") for p in owned},
        transactions=SimpleNamespace(transactional_id_format="{group_id}-{tpg.group}-"
                                                             "{tpg.partition}",
                                     commit=faust_commit),
        _committed_offset={})
    from mode.utils.queues import FlowControlEvent

    app = SimpleNamespace(
        conf=SimpleNamespace(id="app"), consumer=consumer, producer=producer, crash=crash,
        flow_control=FlowControlEvent(initially_suspended=False),
        assignor=SimpleNamespace(group_for_topic=lambda topic: 1),
        on_partitions_revoked=SimpleNamespace(connect=lambda fn: receivers.append(fn) or fn))
    offsets = {0: {"imp": 10, "fb": 3}, 1: {"imp": 7}, 2: {"imp": 5}}
    unsent = [(0, "a:0:x", b"state-x"), (0, "m:0", b"meta"), (2, "a:2:y", None)]
    store = SimpleNamespace(topic_name="changelog",
                            take_unsent=lambda: [unsent.pop() for _ in list(unsent)][::-1])
    engine = SimpleNamespace(store=store, input_offsets=lambda p: dict(offsets.get(p, {})))
    ra = SimpleNamespace(faust_app=app, engine=engine, metrics=None,
                         topics={"impressions": "imp", "feedback": "fb", "decisions": "dec"})
    return ExactlyOnce(ra), app, receivers, crashed, offsets


def test_one_transaction_per_partition_with_its_outputs_state_and_offsets():
    producer = FakeProducer()
    eos, app, receivers, _, offsets = _fake_worker(producer, owned=[0, 1, 2])

    async def run():
        eos.add(0, "scores", b"x", b"s1")
        eos.add(1, "alerts", b"z", b"a1")
        eos.add(0, "dead", None, b"d1")
        assert producer.log == [], "nothing may be sent before the checkpoint"
        assert await eos.commit() == 3
        first = list(producer.log)
        producer.log.clear()
        assert await eos.commit() == 0, "nothing new: no transaction"
        offsets[1] = {"imp": 9}
        assert await eos.commit() == 1  # new offsets alone make a transaction
        return first

    first = asyncio.run(run())
    by_tid: dict[str, list] = {}
    for entry in first:
        by_tid.setdefault(entry[1], []).append(entry)
    assert by_tid["app-1-0"] == [
        ("send", "app-1-0", "scores", b"x", b"s1", None),
        ("send", "app-1-0", "dead", None, b"d1", None),
        ("send", "app-1-0", "changelog", orjson.dumps("a:0:x"), b"state-x", 0),
        ("send", "app-1-0", "changelog", orjson.dumps("m:0"), b"meta", 0),
        ("commit", "app-1-0", "app", {("imp", 0): 10, ("fb", 0): 3})]
    assert by_tid["app-1-1"] == [("send", "app-1-1", "alerts", b"z", b"a1", None),
                                 ("commit", "app-1-1", "app", {("imp", 1): 7})]
    assert by_tid["app-1-2"] == [
        ("send", "app-1-2", "changelog", orjson.dumps("a:2:y"), None, 2),
        ("commit", "app-1-2", "app", {("imp", 2): 5})]
    assert producer.log == [("commit", "app-1-1", "app", {("imp", 1): 9})]
    assert app.consumer._committed_offset[("imp", 1)] == 9  # Faust sees nothing to commit
    # Faust's own commit path (timer, rebalance, stop) is switched off
    assert asyncio.run(app.consumer.transactions.commit({("imp", 0): 99})) is False


def test_outputs_of_a_revoked_partition_are_dropped_not_sent():
    from aiokafka.structs import TopicPartition

    producer = FakeProducer()
    eos, _, receivers, _, _ = _fake_worker(producer, owned=[0])

    async def run():
        eos.add(2, "scores", b"w", b"s")
        for receiver in receivers:  # Faust's on_partitions_revoked signal
            await receiver(None, {TopicPartition("imp", 2)})
        # not in the assignment, yet not revoked (a rebalance in progress): still committed
        eos.add(1, "scores", b"z", b"s")
        await eos.commit()

    asyncio.run(run())
    assert ("send", "app-1-2", "scores", b"w", b"s", None) not in producer.log
    assert ("send", "app-1-1", "scores", b"z", b"s", None) in producer.log


def test_a_failed_transaction_crashes_the_worker_and_is_not_acknowledged():
    producer = FakeProducer(fail_on="alerts")
    eos, _, _, crashed, _ = _fake_worker(producer, owned=[0, 1])

    async def run():
        eos.add(1, "alerts", b"z", b"a")
        await eos.commit()

    with pytest.raises(RuntimeError, match="fenced"):
        asyncio.run(run())
    assert len(crashed) == 1
    assert ("commit", "app-1-1", "app", {("imp", 1): 7}) not in producer.log


def test_resume_keeps_queued_events_unless_the_flow_was_suspended():
    """Faust's end of recovery resumes partitions, awaits the seek, then calls resume(): events
    queued meanwhile must survive (they are not fetched again); a real suspension still clears."""
    from mode.utils.queues import FlowControlEvent, FlowControlQueue

    from app.transport import keep_queued_events_on_resume

    async def run():
        flow = FlowControlEvent(initially_suspended=False)
        queue = FlowControlQueue(flow_control=flow, clear_on_resume=True)
        keep_queued_events_on_resume(flow)
        await queue.put("fetched during the seek")
        flow.resume()  # already active: nothing cleared
        kept = queue.qsize()
        flow.suspend()  # a rebalance
        flow.resume()
        return kept, queue.qsize(), flow.is_active()

    assert asyncio.run(run()) == (1, 0, True)


def test_faust_internals_exactly_once_uses_exist():
    """Upgrade guard: app/eos.py drives these faust-streaming 0.15.3 pieces directly."""
    from faust.transport.consumer import Consumer, TopicPartitionGroup, TransactionManager
    from faust.transport.drivers.aiokafka import Producer

    assert TransactionManager.transactional_id_format == "{group_id}-{tpg.group}-{tpg.partition}"
    assert TopicPartitionGroup._fields == ("topic", "partition", "group")
    assert "transactional_id" in inspect.signature(Producer.send).parameters
    for name in ("commit_transactions", "commit_transaction", "begin_transaction"):
        assert hasattr(Producer, name), name
    # Faust's producers are kept inside a transaction: a commit starts the next one
    assert "begin_transaction()" in inspect.getsource(Producer.commit_transactions)
    assert "_committed_offset" in Consumer.__annotations__ or \
        "_committed_offset" in inspect.getsource(Consumer.__init__)
    # the commit path app/eos.py switches off goes through TransactionManager.commit
    assert "self.transactions.commit(" in inspect.getsource(Consumer._commit_offsets)
    # the race keep_queued_events_on_resume closes: partitions resumed, seek awaited, then
    # resume() -- which clears every clear_on_resume queue, active or not
    from faust.tables.recovery import Recovery
    from mode.utils.queues import FlowControlEvent
    source = inspect.getsource(Recovery._resume_streams)
    assert source.index("resume_partitions") < source.index("perform_seek") < \
        source.index("flow_control.resume()")
    assert "self.clear()" in inspect.getsource(FlowControlEvent.resume)
