"""The worker's Faust transport (app/transport.py) and what guards it.

Upgrade guards (no broker): app/transport.py copies or replaces a few pieces of faust-streaming
0.15.3 internals. These tests fail loudly -- with what to re-read -- when an upgrade changes a
version, a source we copied, or an attribute we use, instead of silently changing delivery.

Delivery (Apache Kafka): a worker on the transport, holding every processed event unacknowledged
(a 600 s checkpoint interval), is rebalanced (a second member joins: it must checkpoint and ack on
revocation) and then SIGKILLed mid-stream with processed but uncheckpointed events; the survivor
restores the state and replays. Every input offset ends up committed, and every window's score
record and every alert id equal the offline replay's. Broker behaviour relied on: a joining member triggers a rebalance in which the old
member's revoked partitions are committed before they move; a SIGKILLed member's partitions move
after its session times out; the new owner resumes from the group's committed offsets.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import os
import time
import tomllib
from collections import defaultdict
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace

import faust
import orjson
import pytest

from app import transport

ROOT = Path(__file__).resolve().parent.parent

# sha256[:16] of the source of each Faust internal app/transport.py copies, replaces or mirrors.
# A mismatch: re-read app/transport.py against the new source, port the change, update the hash.
FINGERPRINTS = {
    # copied into Consumer._drain_messages (the only change: no wait_first while the flow runs)
    ("faust.transport.consumer", "Consumer._drain_messages"): "44a2500309e83c63",
    # inlined into Consumer._drain_messages (session 4), with the message it builds per record
    ("faust.transport.consumer", "Consumer.getmany"): "4b168d84882a70d6",
    ("faust.transport.drivers.aiokafka", "Consumer._to_message"): "7c24f6511b2fcef7",
    # take_queued does what repeated get_nowait calls do, at once
    ("mode.utils.queues", "ThrowableQueue.get_nowait"): "d42b1be9219a0e6e",
    ("mode.utils.queues", "FlowControlQueue.get_nowait"): "57cb9b5c12e7ebd9",
    # event_batches mirrors its per-event delivery bookkeeping (tracking, stale generations)
    ("faust.streams", "Stream._py_aiter"): "3a48ee257a65435b",
    # ConsumerThread overrides the fetch_max_wait_ms it passes to aiokafka
    ("faust.transport.drivers.aiokafka", "AIOKafkaConsumerThread._create_worker_consumer"):
        "c2701bfc3e6f6cad",
    # ProducerBuffer.size replaced; Producer.__init__ is where the buffer is created
    ("faust.transport.producer", "ProducerBuffer.size"): "b543a978fdece62e",
    ("faust.transport.producer", "Producer.__init__"): "5c53a4b47aa1372b",
    # commit_offsets takes its turn as Consumer.commit does and commits via _commit_offsets
    ("faust.transport.consumer", "Consumer.commit"): "a354437baaa08bf8",
    ("faust.transport.consumer", "Consumer._commit_offsets"): "1a69799041188441",
    # RawSchema.compile replaces it
    ("faust.serializers.schemas", "Schema.compile"): "d46eec5ce3195b2c",
    # the Conductor callback: the fast path relies on it blocking only on flow control, the
    # producer buffer or a full channel queue
    ("faust.transport.conductor", "ConductorCompiler.build"): "837cf521368c1ee4",
}


def _source_hash(module: str, qualname: str) -> str:
    import importlib

    obj: object = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if isinstance(obj, property):
        obj = obj.fget
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]


# -- upgrade guards ------------------------------------------------------------------------------
def test_installed_versions_are_the_pinned_ones():
    installed = {name: version(name) for name in transport.PINNED}
    assert installed == transport.PINNED, (
        f"installed {installed} != app.transport.PINNED {transport.PINNED}: app/transport.py "
        "relies on Faust internals of exactly those versions; re-check it before moving them")


def test_pyproject_pins_exactly_those_versions():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = {d.split("==")[0].split("[")[0].strip(): d.split("==")[1].strip()
              for d in deps if "==" in d}
    for name, ver in transport.PINNED.items():
        assert pinned.get(name) == ver, f"pyproject.toml must pin {name}=={ver}"


@pytest.mark.parametrize("where", sorted(FINGERPRINTS), ids=lambda w: w[1])
def test_faust_sources_we_depend_on_are_unchanged(where):
    got = _source_hash(*where)
    assert got == FINGERPRINTS[where], (
        f"{where[0]}.{where[1]} changed (source sha256 {got}, expected {FINGERPRINTS[where]}): "
        "app/transport.py copies or mirrors it; port the change there, then update the hash")


def test_faust_internals_the_transport_uses_exist():
    from aiokafka import AIOKafkaConsumer
    from faust.transport.consumer import Consumer as BaseConsumer
    from faust.transport.drivers import TRANSPORTS

    # (the copied loop reads these the way Faust's own does: see its fingerprint)
    consumer_attrs = ("_read_offset", "_commit_every", "_n_acked", "_add_gap", "suspend_flow",
                      "consumer_stopped_errors", "unacked", "getmany", "commit",
                      "wait_first",
                      # app.transport.commit_offsets (the agent's checkpoint commits)
                      "_committed_offset", "_commit_fut", "maybe_wait_for_commit_to_finish",
                      "_commit_offsets", "seek")
    for attr in consumer_attrs:
        assert hasattr(BaseConsumer, attr) or attr in BaseConsumer.__annotations__, attr
    import mode
    assert hasattr(mode.Service, "Diag")  # Service.diag, the consumer's fetching flag
    assert "_fetch_max_wait_ms" in inspect.getsource(AIOKafkaConsumer.__init__)
    assert "self._fetch_max_wait_ms" in inspect.getsource(AIOKafkaConsumer.start)
    assert hasattr(TRANSPORTS, "aliases")
    from mode.utils.queues import ThrowableQueue
    assert "_errors" in inspect.getsource(ThrowableQueue.__init__)
    from faust.types.tuples import Message
    assert {"tracked", "generation_id"} <= set(Message.__slots__)
    from faust.transport.conductor import Conductor
    from faust.transport.producer import ProducerBuffer
    assert "_tp_index" in Conductor.__annotations__ and hasattr(ProducerBuffer, "max_messages")
    # agents/store.py: changelog records as aiokafka batches, through Faust's aiokafka producer
    from aiokafka import AIOKafkaProducer
    from faust.transport.drivers.aiokafka import Producer as FaustAioProducer
    assert hasattr(FaustAioProducer, "_ensure_producer")
    assert {"batch", "topic", "partition"} <= set(
        inspect.signature(AIOKafkaProducer.send_batch).parameters)
    assert hasattr(AIOKafkaProducer, "create_batch")
    # app.transport.take_queued and the direct delivery: asyncio.Queue / mode queue internals
    assert "self._putters" in inspect.getsource(asyncio.Queue.__init__) or hasattr(
        asyncio.Queue, "_wakeup_next")
    assert hasattr(asyncio.Queue, "_wakeup_next") and hasattr(ThrowableQueue,
                                                              "maybe_endorse_pressure_drop")
    assert "_tp_to_callback" in Conductor.__annotations__
    assert "_tp_to_callback_lock" in Conductor.__annotations__
    from faust.stores.memory import Store
    source = inspect.getsource(Store.__post_init__)  # agents/store.py writes both
    assert "self.data:" in source and "self._key_partition:" in source


def test_riskstream_url_resolves_to_the_transport_and_exactly_once_falls_back():
    from faust.transport.drivers import by_url

    from app.factory import create_app, transport_scheme
    from app.settings import Settings

    assert by_url("riskstream://127.0.0.1:9092") is transport.Transport
    assert transport_scheme(Settings()) == "riskstream"  # the default: docs/performance.md
    assert transport_scheme(Settings(transport="kafka")) == "kafka"
    assert transport_scheme(Settings(transport="riskstream",
                                     processing_guarantee="exactly_once")) == "kafka"
    with pytest.raises(ValueError, match="RISKSTREAM_TRANSPORT"):
        transport_scheme(Settings(transport="confluent"))
    ra = create_app(Settings(data_dir=str(ROOT / ".riskstream" / "test-transport"),
                             transport="riskstream"), "127.0.0.1:9")
    assert isinstance(ra.faust_app.transport, transport.Transport)
    assert ra.faust_app.transport.Consumer is transport.Consumer
    assert isinstance(ra.faust_app.monitor, transport.QuietMonitor)


# -- event_batches, with fakes ----------------------------------------------------------------
class _Queue(asyncio.Queue):
    def __init__(self) -> None:
        super().__init__()
        from collections import deque
        self._errors = deque()

    def maybe_endorse_pressure_drop(self) -> None:  # mode's FlowControlQueue hook
        pass


class _Channel:
    def __init__(self) -> None:
        self.queue = _Queue()

    def __aiter__(self) -> "_Channel":
        return self

    async def __anext__(self) -> object:  # (never called: batches read the queue)
        raise StopAsyncIteration


class _Message:
    def __init__(self, offset: int, generation_id: int) -> None:
        self.offset, self.generation_id, self.topic = offset, generation_id, "in"
        self.tracked = False
        self.acks = 0

    def ack(self, consumer: object) -> None:
        self.acks += 1


def test_event_batches_tracks_skips_stale_generations_and_wakes_up_when_idle():
    app = SimpleNamespace(consumer=SimpleNamespace(unacked=set()),
                          topics=SimpleNamespace(acking_topics={"in"}),
                          flow_control=SimpleNamespace(is_active=lambda: True),
                          consumer_generation_id=2)
    stream = SimpleNamespace(channel=_Channel(), should_stop=False)
    msgs = [_Message(i, 1 if i == 3 else 2) for i in range(7)]
    for m in msgs:
        stream.channel.queue.put_nowait(faust.Event(app, None, b"v", None, m))

    async def take(n: int) -> list[list[int]]:
        out = []
        it = transport.event_batches(app, stream, max_events=4, idle_s=0.05)
        async for batch in it:
            out.append([e.message.offset for e in batch])
            if len(out) == n:
                break
        await it.aclose()
        return out

    batches = asyncio.run(take(3))
    # at most 4 taken from the queue per batch; offset 3 (an older generation) is skipped, never
    # delivered, and not acknowledged (an ack would let Faust commit past it)
    assert batches == [[0, 1, 2], [4, 5, 6], []]  # [] after idle_s without events
    assert msgs[3].acks == 0 and not msgs[3].tracked
    delivered = [m for m in msgs if m.offset != 3]
    assert all(m.tracked and m.acks == 0 for m in delivered)  # acked later, by the caller
    assert app.consumer.unacked == set(delivered)


def _drain(fetches, on_message):
    """Run the transport's ``Consumer._drain_messages`` (a real, unstarted Consumer of a Faust
    app on ``riskstream://``) over ``fetches``: each item is what one fetch returns, a list of
    (tp, offset), or an async function ``consumer -> that list`` run during the fetch.
    ``on_message(consumer, offset)`` is the Conductor callback. Returns the offsets delivered
    and the seeks that reached the consumer thread."""
    async def run():
        app = faust.App("drain-test", broker="riskstream://127.0.0.1:9", web_enabled=False)
        app.flow_control.resume()
        consumer = app.consumer
        seeks: list[tuple[int, int]] = []

        async def seek_wait(partitions):  # on the consumer thread, in the real one
            seeks.extend((tp.partition, off) for tp, off in partitions.items())

        consumer._thread = SimpleNamespace(seek_wait=seek_wait, highwater=lambda tp: None)
        delivered: list[int] = []
        fetcher = SimpleNamespace(_stopped=asyncio.Event())
        pending = list(fetches)

        async def wait_next_records(timeout):  # what aiokafka's getmany returns, by partition
            fetched = pending.pop(0)
            if not pending:
                fetcher._stopped.set()  # the loop ends after this fetch
            records: dict = {}
            for tp, offset in (await fetched(consumer) if callable(fetched) else fetched):
                records.setdefault(tp, []).append(SimpleNamespace(
                    topic=tp.topic, partition=tp.partition, offset=offset, timestamp=0,
                    timestamp_type=0, headers=[], key=b"k", value=b"v", checksum=None,
                    serialized_key_size=1, serialized_value_size=1))
            return records, None

        async def callback(message):
            delivered.append(message.offset)
            await on_message(consumer, message.offset)

        consumer._wait_next_records, consumer.callback = wait_next_records, callback
        await consumer._drain_messages(fetcher)
        return delivered, seeks

    return asyncio.run(run())


def test_records_fetched_before_a_seek_are_not_delivered_after_it():
    """The agent's gap re-fetch (agents/events.py) seeks a partition back to the offset its
    state expects. Records of that partition fetched before the seek must not be delivered
    after it: they raised Faust's read offset past the seek, and the drain loop then dropped
    the re-fetched records below it, so the agent received a re-fetch starting past the
    expected offset and took the offsets between for nonexistent (events lost; the scale
    test's flake, docs/faults.md "The scale test's flake under load")."""
    from faust.types.tuples import TP

    tp = TP("in", 0)

    gap_found = []

    async def agent(consumer, offset):  # offset 12 shows a gap: the state expects 5
        if offset == 12 and not gap_found:
            gap_found.append(offset)
            await consumer.seek(tp, 5)

    # fetch 1: 10..19 (the gap), fetch 2: the re-fetch 5..19
    delivered, seeks = _drain([[(tp, o) for o in range(10, 20)],
                               [(tp, o) for o in range(5, 20)]], agent)
    assert delivered == [10, 11, 12] + list(range(5, 20)), delivered
    assert seeks[0] == (0, 5)

    # a seek while a fetch is under way: its records may be from before or after the seek
    # (here: after it, from the target); they are dropped and the partition is sought to the
    # target once more, so they come again
    async def seek_while_fetching(consumer):
        await consumer.seek(tp, 5)
        return [(tp, o) for o in range(5, 8)]

    async def nothing(consumer, offset):
        pass

    delivered, seeks = _drain([[(tp, o) for o in range(0, 3)], seek_while_fetching,
                               [(tp, o) for o in range(5, 8)]], nothing)
    assert delivered == [0, 1, 2, 5, 6, 7], delivered
    assert seeks == [(0, 5), (0, 5)], seeks  # the agent's seek, then the drain loop's again


# -- delivery on Apache Kafka -------------------------------------------------------------------
def _committed_and_highwaters(bootstrap: str, group: str, topics: list[str]
                              ) -> dict[tuple[str, int], tuple[int, int]]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "enable.auto.commit": False})
    try:
        md = c.list_topics(timeout=10)
        tps = [TopicPartition(t, p) for t in topics for p in sorted(md.topics[t].partitions)]
        committed = c.committed(tps, timeout=10)
        # (an empty partition has nothing to commit: its "no offset" counts as 0)
        return {(tp.topic, tp.partition): (max(tp.offset, 0),
                                           c.get_watermark_offsets(tp, timeout=10)[1])
                for tp in committed}
    finally:
        c.close()


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_rebalance_and_sigkill_mid_stream_lose_nothing_and_match_the_backtest(
        kafka_broker, kafka_topics, worker, tmp_path):
    from tests.conftest import TopicReader, produce_lines, simulated_case

    from app.factory import engine_config
    from app.settings import Settings
    from riskstream.backtest import replay

    prefix, bootstrap = kafka_topics, kafka_broker.bootstrap
    inputs = [f"{prefix}ad-impressions", f"{prefix}user-feedback"]
    duration_s = 2400
    case = simulated_case(tmp_path, seed=31, advertisers=12, duration_s=duration_s,
                          spam_start_s=1500)
    # Stage 1 (before the second member joins): everything before `split`. Stages 2 and 3
    # (between the rebalance and the kill, after the kill): impressions only, later in event
    # time than all of stage 1, so no input is late whatever the interleaving -- a live worker
    # closes windows of an idle source, and a source that then delivers older events would be
    # dead-lettered (feedback after `split` is left out, offline too).
    t0 = case.config.start_ms
    split, split2 = t0 + 1200_000, t0 + 1800_000

    def times(lines: list[bytes]) -> list[int]:
        return [orjson.loads(ln)["event_time"] for ln in lines]

    imps, imp_t = case.impressions, times(case.impressions)
    fbs = [ln for ln, t in zip(case.feedback, times(case.feedback)) if t < split]
    stages = [([ln for ln, t in zip(imps, imp_t) if t < split], fbs),
              ([ln for ln, t in zip(imps, imp_t) if split <= t < split2], []),
              ([ln for ln, t in zip(imps, imp_t) if t >= split2], [])]
    expected = replay(imps, fbs, engine_config=engine_config(Settings()), partitions=6)
    exp_scores = {(o.record["advertiser_id"], o.record["window"]["start"]): o.record
                  for o in expected.outputs if o.kind == "score"}
    exp_alerts = {a["alert_id"] for a in expected.alerts()}
    assert exp_alerts, "test design: the incident (in stage 2-3) must alert offline"
    n_events = len(imps) + len(fbs)

    def produce_stage(k: int) -> int:
        produce_lines(bootstrap, inputs[0], stages[k][0])
        if stages[k][1]:
            produce_lines(bootstrap, inputs[1], stages[k][1])
        return len(stages[k][0]) + len(stages[k][1])

    def consumed(*ws) -> float:
        return sum(w.metrics().get("riskstream_events_consumed_total", 0) for w in ws)

    def wait(cond, what: str, timeout: float, *ws) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline, (
                f"{what}; offsets (committed, highwater) "
                f"{_committed_and_highwaters(bootstrap, app_id, inputs)}; metrics "
                f"{[w.metrics() for w in ws if w.proc.poll() is None]}\n"
                + "\n".join(w.log_tail() for w in ws))
            time.sleep(0.2)  # polling interval of a condition

    # A checkpoints (and so acks and commits) only when the flow stops: a rebalance, a shutdown
    produced = produce_stage(0)
    # The worker's default transport; RISKSTREAM_TEST_TRANSPORT=riskstream runs this test on
    # the experimental one (docs/performance.md: it stalls a partition's commits in some runs)
    chosen = os.environ.get("RISKSTREAM_TEST_TRANSPORT") or Settings().transport
    a = worker(prefix, RISKSTREAM_CHECKPOINT_INTERVAL_S="600", RISKSTREAM_TRANSPORT=chosen)
    app_id = a.env["RISKSTREAM_APP_ID"]
    wait(lambda: consumed(a) >= produced, "A: stage 1 consumed", 60, a)
    assert a.metrics().get("riskstream_checkpoints_total", 0) == 0  # all of it unacknowledged

    b = worker(prefix, RISKSTREAM_APP_ID=app_id, RISKSTREAM_TRANSPORT=chosen)  # joins: rebalance mid-stream
    # Faust revokes A's partitions and waits for their acks: A checkpoints because the flow
    # stopped (its interval is 600 s), and the rebalance completes
    wait(lambda: a.metrics().get("riskstream_checkpoints_total", 0) >= 1,
         "A: checkpointed on revocation", 60, a, b)
    produced += produce_stage(1)
    wait(lambda: consumed(a, b) >= produced, "A+B: stage 2 consumed", 60, a, b)
    ma = a.metrics()
    consumed_by_a = ma.get("riskstream_events_consumed_total", 0)
    assert ma.get("riskstream_events_late_total", 0) == 0
    a.proc.kill()  # SIGKILL with processed, unacknowledged events: B must replay them
    a.proc.wait(10)
    produced += produce_stage(2)
    assert produced == n_events

    # every input offset committed ...
    def all_committed() -> bool:
        offs = _committed_and_highwaters(bootstrap, app_id, inputs)
        return all(com == hw for com, hw in offs.values())

    wait(all_committed, "B: every input offset committed", 90, b)
    # (on failure the offsets say where: see _committed_and_highwaters)
    mb = b.metrics()
    # ... and every event processed by A before its checkpoint, or (re)processed by B
    assert consumed_by_a + mb.get("riskstream_events_consumed_total", 0) >= n_events
    assert mb.get("riskstream_events_late_total", 0) == 0
    consumer_logger = {"riskstream": "app.transport",
                       "kafka": "faust.transport.drivers.aiokafka"}[chosen]
    assert (f'"logger":"{consumer_logger}","msg":"[^--Consumer]: Starting..."'
            in a.log_path.read_text())  # it ran on the chosen transport

    with TopicReader(bootstrap, f"{prefix}risk-scores") as scores, \
            TopicReader(bootstrap, f"{prefix}risk-alerts") as alerts:
        scores.wait_for(lambda rs: set(exp_scores) <= {
            (r.json()["advertiser_id"], r.json()["window"]["start"]) for r in rs}, 90,
            f"all {len(exp_scores)} window scores", on_timeout=b.log_tail)
        alerts.wait_for(lambda rs: exp_alerts <= {r.json()["alert_id"] for r in rs}, 60,
                        f"{len(exp_alerts)} alerts", on_timeout=b.log_tail)
        alerts.poll(1.0)
        live = defaultdict(set)
        for r in scores.records:
            rec = r.json()
            live[(rec["advertiser_id"], rec["window"]["start"])].add(
                orjson.dumps(rec, option=orjson.OPT_SORT_KEYS))
        alert_ids = {r.json()["alert_id"] for r in alerts.records}

    # No event lost or counted twice: every window's full score record (its counts and
    # features) equals the offline replay's, a replayed window repeats it exactly.
    assert set(live) == set(exp_scores)
    for key, copies in live.items():
        assert copies == {orjson.dumps(exp_scores[key], option=orjson.OPT_SORT_KEYS)}, key
    assert alert_ids == exp_alerts


# -- ack_events: Faust's per-message acknowledgement, at once ----------------------------------
def _ack_consumer(committed: dict) -> object:
    from collections import defaultdict
    from weakref import WeakSet

    from faust.transport.consumer import Consumer as FaustConsumer

    class AckConsumer:  # the state Consumer.ack reads and writes, and Faust's own ack
        ack = FaustConsumer.ack

        def __init__(self) -> None:
            self.app = SimpleNamespace(topics=SimpleNamespace(
                acking_topics={"in"}, acks_enabled_for=lambda topic: topic == "in"))
            self._committed_offset = defaultdict(lambda: None, committed)
            self._acked = defaultdict(list)
            self._acked_index = defaultdict(set)
            self._unacked_messages = WeakSet()
            self._n_acked = 0
            self._waiting_for_ack = None

    return AckConsumer()


def test_ack_events_equals_acking_each_message():
    from faust.types import TP
    from faust.types.tuples import ConsumerMessage

    def messages() -> list:
        out = []
        for topic, partition, offset, refcount in [
                ("in", 0, 5, 1), ("in", 0, 6, 1), ("in", 1, 2, 1), ("in", 0, 6, 1),  # dup
                ("in", 0, 3, 1),            # below the committed offset 4
                ("in", 1, 3, 2),            # delivered to two channels: one ack leaves one
                ("other", 0, 9, 1),         # a topic without acks
                ("in", 1, 4, 1)]:
            m = ConsumerMessage(topic, partition, offset, 0.0, 0, None, None, b"v", None,
                                tp=TP(topic, partition), generation_id=1)
            m.refcount = refcount
            out.append(m)
        out[-1].acked = True  # acked before: nothing happens to it
        return out

    def state(consumer: object, msgs: list) -> tuple:
        return ({tp: list(v) for tp, v in consumer._acked.items() if v},
                {tp: set(v) for tp, v in consumer._acked_index.items() if v},
                consumer._n_acked, [(m.acked, m.refcount) for m in msgs],
                sorted(msgs.index(m) for m in consumer._unacked_messages))

    committed = {TP("in", 0): 4}
    one_by_one, at_once = _ack_consumer(committed), _ack_consumer(committed)
    each, batch = messages(), messages()
    for c, msgs in ((one_by_one, each), (at_once, batch)):
        for m in msgs:
            c._unacked_messages.add(m)
    for m in each:
        m.ack(one_by_one)
    recorded = transport.ack_events(at_once, [SimpleNamespace(message=m) for m in batch])
    assert state(at_once, batch) == state(one_by_one, each)
    assert recorded == one_by_one._n_acked == 3  # 0:5, 0:6, 1:2
