"""The risk engine: validated events in, window scores and alerts out. Shared by the live agents
and the offline replay, so both give the same alerts for the same input.

One engine instance serves all partitions a worker owns. Per partition it keeps an event-time
watermark; a window ``[start, end)`` of an advertiser closes once the partition's watermark
passes ``end + allowed_lateness``. Then, per model spec (the enforce spec and any shadows):
features -> ``score_one`` -> decision -> ``learn_one`` unless flagged.

Watermark across the two input topics: co-partitioned ``ad-impressions`` and ``user-feedback``
are consumed at different speeds, so the partition's watermark is the *minimum* over the input
sources that still have a backlog (a source with a backlog that has delivered nothing yet holds
it at minus infinity), and the maximum once every source is caught up. The caller says when a
source partition is caught up (online: its next offset reached the highwater; offline: the file
is exhausted). The result does not depend on how the two topics interleave, which is what makes
replay parity hold.

State: each advertiser's open windows, model states and alert lifecycle live in memory and are
written to the :class:`StateStore` (a changelog-backed Faust table online, a dict offline) only
at ``checkpoint()``. The caller acknowledges the events it fed in only after a checkpoint, so a
crash replays from the last committed offset onto the last checkpointed state: nothing lost,
nothing counted twice.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Protocol

import orjson

from models.protocol import RiskModel, learn_after_decision
from models.registry import get_spec
from riskstream.alerts import build_alert, iso_ms
from riskstream.decision import DecisionConfig, decide, evaluate_rules
from riskstream.events import InvalidEvent
from riskstream.features import window_features
from riskstream.windows import AdvertiserWindow

STATE_FORMAT = 1
MAX_STATE_BYTES = 256 * 1024
SOURCES = ("impression", "feedback")
NEG_INF = -(1 << 62)
RECENT_SCORES = 12  # per-advertiser score history kept for lookups (bounded state)
EXPIRY_EVERY_CHECKPOINTS = 60


class StateStore(Protocol):
    def get(self, key: str) -> bytes | None: ...

    def put(self, partition: int, key: str, value: bytes) -> None: ...

    def delete(self, partition: int, key: str) -> None: ...

    def keys(self) -> Iterable[str]: ...


class DictStore:
    """In-memory store for the offline replay and unit tests."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.writes = 0

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def put(self, partition: int, key: str, value: bytes) -> None:
        self.data[key] = value
        self.writes += 1

    def delete(self, partition: int, key: str) -> None:
        self.data.pop(key, None)
        self.writes += 1

    def keys(self) -> Iterable[str]:
        return list(self.data)


@dataclass(frozen=True)
class ModelConfig:
    """Which spec enforces and which shadow; published on risk-model-control."""

    version: int = 0
    enforce: str = "robust-baseline"
    shadows: tuple[str, ...] = ()

    def specs(self) -> tuple[str, ...]:
        return (self.enforce,) + tuple(s for s in self.shadows if s != self.enforce)

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "enforce": self.enforce, "shadows": list(self.shadows)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ModelConfig":
        cfg = cls(int(data["version"]), str(data["enforce"]), tuple(data.get("shadows", ())))
        for name in cfg.specs():
            get_spec(name)  # unknown names fail here, listing the valid ones
        return cfg


@dataclass(frozen=True)
class EngineConfig:
    window_ms: int = 60_000
    lateness_ms: int = 10_000
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    advertiser_ttl_ms: int = 7 * 24 * 3600 * 1000


class Output(NamedTuple):
    kind: str  # "alert" | "shadow_alert" | "score"
    key: str   # advertiser_id
    record: dict[str, Any]
    partition: int = -1  # the input partition whose state produced it (exactly_once routing)


class AdvertiserState:
    __slots__ = ("advertiser_id", "partition", "key", "windows", "models", "lifecycle",
                 "last_event_ms", "recent", "enforced_by", "offsets")

    def __init__(self, advertiser_id: str, partition: int) -> None:
        self.advertiser_id = advertiser_id
        self.partition = partition
        self.key = advertiser_key(partition, advertiser_id)  # its store key, built once
        self.windows: dict[int, AdvertiserWindow] = {}
        self.models: dict[str, RiskModel] = {}
        self.lifecycle: dict[str, dict[str, Any]] = {}  # detector -> open-alert state
        self.last_event_ms = 0
        self.recent: list[list[Any]] = []  # [window_start, risk, severity|None]
        self.enforced_by: str | None = None  # alert_id an enforcement team confirmed
        self.offsets: dict[str, int] = {}  # input topic -> next offset applied to this state

    def model(self, spec_name: str) -> RiskModel:
        m = self.models.get(spec_name)
        if m is None:
            m = self.models[spec_name] = get_spec(spec_name).create()
        return m

    def dumps(self) -> bytes:
        data = {
            "format": STATE_FORMAT,
            "advertiser_id": self.advertiser_id,
            "partition": self.partition,
            "windows": [w.snapshot() for w in self.windows.values()],
            "models": {
                name: {"version": get_spec(name).version, "state": m.state()}
                for name, m in self.models.items()
            },
            "lifecycle": self.lifecycle,
            "last_event_ms": self.last_event_ms,
            "recent": self.recent,
            "enforced_by": self.enforced_by,
            "offsets": self.offsets,
        }
        raw = orjson.dumps(data)
        if len(raw) > MAX_STATE_BYTES:
            raise ValueError(f"advertiser state {len(raw)} bytes > {MAX_STATE_BYTES}")
        return raw

    @classmethod
    def loads(cls, raw: bytes) -> "AdvertiserState":
        data = orjson.loads(raw)
        if data.get("format") != STATE_FORMAT:
            raise ValueError(f"unsupported advertiser state format {data.get('format')!r}")
        st = cls(data["advertiser_id"], data["partition"])
        for snap in data["windows"]:
            w = AdvertiserWindow.restore(snap)
            st.windows[w.start] = w
        for name, saved in data["models"].items():
            spec = get_spec(name)
            if saved["version"] != spec.version:
                continue  # a new spec version starts from the cohort prior, not stale state
            m = spec.create()
            m.load_state(saved["state"])
            st.models[name] = m
        st.lifecycle = data["lifecycle"]
        st.last_event_ms = data["last_event_ms"]
        st.recent = data["recent"]
        st.enforced_by = data.get("enforced_by")
        st.offsets = data.get("offsets", {})
        return st


class _PartitionClock:
    __slots__ = ("wm", "caught_up", "closed_to", "heap", "offsets", "states")

    def __init__(self) -> None:
        # advertiser id -> its state, for the hot path: a subset of RiskEngine._states (the
        # truth), filled on first use and emptied wherever a state leaves _states.
        self.states: dict[str, AdvertiserState] = {}
        self.offsets: dict[str, int] = {}  # input topic -> next offset reflected in the state
        self.wm = {s: NEG_INF for s in SOURCES}
        self.caught_up = {s: False for s in SOURCES}
        self.closed_to = NEG_INF  # every window ending at or before this is closed
        self.heap: list[tuple[int, str, int]] = []  # (window end, advertiser, window start)

    def close_watermark(self) -> int:
        # min over the sources still lagging, max once all are caught up (two sources: inlined)
        wm, caught_up = self.wm, self.caught_up
        imp, fb = wm["impression"], wm["feedback"]
        if caught_up["impression"]:
            return (imp if imp > fb else fb) if caught_up["feedback"] else fb
        return imp if caught_up["feedback"] or imp < fb else fb


def advertiser_key(partition: int, advertiser_id: str) -> str:
    return f"a:{partition}:{advertiser_id}"


def _meta_key(partition: int) -> str:
    return f"m:{partition}"


class RiskEngine:
    def __init__(
        self,
        config: EngineConfig,
        store: StateStore,
        model_config: ModelConfig | None = None,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self.config = config
        self._window_ms = config.window_ms
        self._lateness_ms = config.lateness_ms
        self.store = store
        self.model_config = model_config or ModelConfig()
        self._clock_ms = clock_ms
        self._states: dict[str, AdvertiserState] = {}
        self._dirty: set[str] = set()
        self._partitions: dict[int, _PartitionClock] = {}
        self._dirty_meta: set[int] = set()
        self._specs_of: ModelConfig | None = None  # the model config _specs_cache is for
        self._specs_cache: list[tuple[str, str, Any, str]] = []
        self.stats = {"events": 0, "late": 0, "windows_closed": 0, "alerts": 0,
                      "shadow_alerts": 0, "suppressed": 0, "checkpoints": 0, "expired": 0,
                      "last_checkpoint_bytes": 0, "suppressed_enforced": 0}
        # Live precision per detector, from enforcement decisions: detector -> [confirmed,
        # dismissed]. In memory only: a restarted worker counts from its restart.
        self.decisions: dict[str, list[int]] = {}

    # -- partitions -----------------------------------------------------------------------
    def _partition(self, p: int) -> _PartitionClock:
        clock = self._partitions.get(p)
        if clock is None:
            clock = self._load_partition(p)
        return clock

    def _load_partition(self, p: int) -> _PartitionClock:
        """Rebuild a partition's watermark and open-window index from the store (restart or
        rebalance): the store is the single source of truth after a checkpoint."""
        clock = self._partitions[p] = _PartitionClock()
        raw = self.store.get(_meta_key(p))
        if raw is not None:
            meta = orjson.loads(raw)
            clock.wm.update(meta["wm"])
            clock.closed_to = meta["closed_to"]
            clock.offsets = meta.get("offsets", {})
        prefix = f"a:{p}:"
        for key in self.store.keys():
            if key.startswith(prefix):
                st = self._state_for_key(key)
                if st is not None:
                    for w in st.windows.values():
                        clock.heap.append((w.end, st.advertiser_id, w.start))
        heapq.heapify(clock.heap)
        return clock

    # -- input offsets ----------------------------------------------------------------------
    # The state records, per input topic of a partition, the next offset it reflects, and the
    # checkpoint writes it with the state. A consumer's committed offset can lag the state (a
    # crash between a checkpoint and the offset commit): the replayed events are then skipped
    # here instead of being counted twice. State and offsets agree without transactions.
    def next_offset(self, partition: int, topic: str) -> int:
        """The next offset of ``topic``'s ``partition`` the state expects (-1: none yet). The
        agent processes a partition's events in this order only: an earlier offset is a replay,
        a later one a gap that it fetches again."""
        clock = self._partitions.get(partition)
        if clock is None:
            clock = self._load_partition(partition)
        return clock.offsets.get(topic, -1)

    def input_offsets(self, partition: int) -> dict[str, int]:
        """Next offset per input topic of a partition held in memory ({} if it is not): what the
        last checkpoint makes safe to commit, once that checkpoint is on the changelog."""
        clock = self._partitions.get(partition)
        return dict(clock.offsets) if clock is not None else {}

    def applied_to_advertiser(self, partition: int, advertiser_id: str, topic: str,
                              offset: int) -> bool:
        """The partition meta is written after the advertisers' states in a checkpoint, and a
        crash mid-flush can keep a prefix of those records: states newer than the meta. Each
        state therefore also records the offsets it has applied, and skips them again."""
        clock = self._partitions.get(partition)  # its state cache first: no key to build
        st = clock.states.get(advertiser_id) if clock is not None else None
        if st is None:
            st = self._state_for_key(advertiser_key(partition, advertiser_id))
        return st is not None and offset < st.offsets.get(topic, -1)

    def note_offset(self, partition: int, topic: str, next_offset: int) -> None:
        clock = self._partition(partition)
        if next_offset > clock.offsets.get(topic, -1):
            clock.offsets[topic] = next_offset
            self._dirty_meta.add(partition)

    def revoke(self, partitions: Iterable[int]) -> None:
        """Forget in-memory state of partitions this worker no longer owns. Their events since
        the last checkpoint were not acknowledged, so the new owner replays them."""
        gone = set(partitions)
        for p in gone:
            self._partitions.pop(p, None)
            self._dirty_meta.discard(p)
        for key in [k for k, st in self._states.items() if st.partition in gone]:
            del self._states[key]
            self._dirty.discard(key)

    def set_caught_up(self, partition: int, source: str, caught_up: bool) -> list[Output]:
        clock = self._partition(partition)
        if clock.caught_up[source] == caught_up:
            return []
        clock.caught_up[source] = caught_up
        return self._advance(partition, clock)

    # -- state ----------------------------------------------------------------------------
    def _state_for_key(self, key: str) -> AdvertiserState | None:
        st = self._states.get(key)
        if st is None:
            raw = self.store.get(key)
            if raw is None:
                return None
            st = self._states[key] = AdvertiserState.loads(raw)
        return st

    def _cached_state(self, clock: _PartitionClock, partition: int,
                      advertiser_id: str) -> AdvertiserState | None:
        """The state of an advertiser of a loaded partition (``clock``), via its cache."""
        st = clock.states.get(advertiser_id)
        if st is None:
            st = self._state_for_key(advertiser_key(partition, advertiser_id))
            if st is not None:
                clock.states[advertiser_id] = st
        return st

    def _drop(self, key: str, st: AdvertiserState) -> None:
        """Drop a state from memory (deleted or expired), with its hot-path cache entry."""
        del self._states[key]
        clock = self._partitions.get(st.partition)
        if clock is not None:
            clock.states.pop(st.advertiser_id, None)

    def state_of(self, partition: int, advertiser_id: str) -> AdvertiserState | None:
        return self._state_for_key(advertiser_key(partition, advertiser_id))

    def has_changes(self) -> bool:
        """Whether a checkpoint would write anything."""
        return bool(self._dirty or self._dirty_meta)

    def checkpoint(self) -> int:
        """Write every changed advertiser and partition clock to the store. Returns writes."""
        writes = 0
        written_bytes = 0
        self.stats["checkpoints"] += 1
        if self.stats["checkpoints"] % EXPIRY_EVERY_CHECKPOINTS == 0:
            writes += self._expire_idle()
        for key in self._dirty:
            st = self._states.get(key)
            if st is None:
                continue  # revoked or expired since it changed
            if not st.windows and not st.lifecycle and not st.models:
                self.store.delete(st.partition, key)
                self._drop(key, st)
            else:
                raw = st.dumps()
                written_bytes += len(raw)
                self.store.put(st.partition, key, raw)
            writes += 1
        self._dirty.clear()
        if writes:
            self.stats["last_checkpoint_bytes"] = written_bytes
        for p in self._dirty_meta:
            clock = self._partitions.get(p)
            if clock is not None:
                meta = {"wm": clock.wm, "closed_to": clock.closed_to, "offsets": clock.offsets}
                self.store.put(p, _meta_key(p), orjson.dumps(meta))
                writes += 1
        self._dirty_meta.clear()
        return writes

    def _expire_idle(self) -> int:
        """Forget advertisers idle for longer than the TTL in event time (no open window, no
        open alert): bounded memory and state, whatever the churn of advertisers. Part of a
        checkpoint; returns the deletions written."""
        ttl = self.config.advertiser_ttl_ms
        expired = 0
        for key, st in list(self._states.items()):
            clock = self._partitions.get(st.partition)
            if clock is None or st.windows or st.lifecycle:
                continue
            if st.last_event_ms < clock.closed_to - ttl:
                self._drop(key, st)
                self._dirty.discard(key)
                self.store.delete(st.partition, key)
                expired += 1
        self.stats["expired"] += expired
        return expired

    # -- events ---------------------------------------------------------------------------
    def process(self, event: dict, partition: int, caught_up: bool = False,
                position: tuple[str, int] | None = None) -> list[Output]:
        """Add one validated event; return what windows closed because of it.

        Raises InvalidEvent("late_event") when the event's window has already closed.
        """
        # The hot path of both the worker and the replay: lookups are inlined on purpose
        # (window_start, _partition, _cached_state, close_watermark and _advance up to its
        # first window due), see docs/performance.md.
        source = event["type"]
        t = event["event_time"]
        size = self._window_ms
        start = t - t % size  # window_start(t, size)
        end = start + size
        clock = self._partitions.get(partition)
        if clock is None:
            clock = self._load_partition(partition)
        if end <= clock.closed_to:
            self.stats["late"] += 1
            raise InvalidEvent("late_event", f"window ending {iso_ms(end)} already closed")
        adv = event["advertiser_id"]
        st = clock.states.get(adv)
        if st is None:
            st = self._cached_state(clock, partition, adv)
            if st is None:
                st = AdvertiserState(adv, partition)
                clock.states[adv] = self._states[st.key] = st
        w = st.windows.get(start)
        if w is None:
            w = st.windows[start] = AdvertiserWindow(start, end)
            w.first_event_ms = t
            heapq.heappush(clock.heap, (end, adv, start))
        if source == "impression":
            w.add_impression(event)
        else:
            w.add_feedback(event)
        if t > w.last_event_ms:
            w.last_event_ms = t
        if t > st.last_event_ms:
            st.last_event_ms = t
        if position is not None:  # (input topic, offset) this event came from
            st.offsets[position[0]] = position[1] + 1
        self._dirty.add(st.key)
        self.stats["events"] += 1
        changed = False
        wm = clock.wm
        if t > wm[source]:
            wm[source] = t
            changed = True
        caught = clock.caught_up
        if caught[source] != caught_up:
            caught[source] = caught_up
            changed = True
        if not changed:
            return []
        self._dirty_meta.add(partition)
        # _advance inlined up to the first window due (most events close nothing)
        imp, fb = wm["impression"], wm["feedback"]
        if caught["impression"]:
            close_wm = (imp if imp > fb else fb) if caught["feedback"] else fb
        else:
            close_wm = imp if caught["feedback"] or imp < fb else fb
        due_before = close_wm - self._lateness_ms
        if due_before <= clock.closed_to:
            return []
        clock.closed_to = due_before
        heap = clock.heap
        if not heap or heap[0][0] > due_before:
            return []
        return self._close_due(partition, clock, due_before)

    def _advance(self, partition: int, clock: _PartitionClock) -> list[Output]:
        due_before = clock.close_watermark() - self._lateness_ms  # ends <= this are due
        if due_before <= clock.closed_to:
            return []
        clock.closed_to = due_before
        self._dirty_meta.add(partition)
        heap = clock.heap
        if not heap or heap[0][0] > due_before:
            return []
        return self._close_due(partition, clock, due_before)

    def _close_due(self, partition: int, clock: _PartitionClock, due_before: int
                   ) -> list[Output]:
        """Close every window of the partition that ends at or before ``due_before``."""
        heap = clock.heap
        out: list[Output] = []
        states = clock.states
        dirty = self._dirty
        while heap and heap[0][0] <= due_before:
            _end, adv, start = heapq.heappop(heap)
            st = states.get(adv) or self._cached_state(clock, partition, adv)
            if st is None:
                continue
            w = st.windows.pop(start, None)
            if w is None:
                continue
            self._close_window(st, w, out)
            dirty.add(st.key)
        return out

    def flush(self) -> list[Output]:
        """Close every open window (end of a finite replay): treat all sources as caught up."""
        out: list[Output] = []
        for p, clock in list(self._partitions.items()):
            for s in SOURCES:
                clock.caught_up[s] = True
            if clock.heap:
                last_end = max(e for e, _a, _s in clock.heap)
                for s in SOURCES:
                    clock.wm[s] = max(clock.wm[s], last_end + self.config.lateness_ms)
            out.extend(self._advance(p, clock))
        return out

    # -- enforcement decisions ------------------------------------------------------------
    def apply_decision(self, decision: dict, partition: int,
                       position: tuple[str, int] | None = None) -> None:
        """An enforcement team confirmed or dismissed an alert.

        confirmed: the advertiser is enforced: no further alerts (enforcement already acts) and
        its models stop learning from its windows (its traffic is known bad). dismissed: the
        open episode that alert belongs to is closed, so the next anomaly opens a fresh one.
        Both count toward the detector's live precision.
        """
        key = advertiser_key(partition, decision["advertiser_id"])
        st = self._state_for_key(key)
        if st is None:
            st = self._states[key] = AdvertiserState(decision["advertiser_id"], partition)
        alert_id = decision["alert_id"]
        detector = next((d for d, lc in st.lifecycle.items()
                         if lc.get("opened_alert_id") == alert_id), "unknown")
        counts = self.decisions.setdefault(detector, [0, 0])
        if decision["decision"] == "confirmed":
            st.enforced_by = alert_id
            counts[0] += 1
        else:
            counts[1] += 1
            if detector in st.lifecycle:
                del st.lifecycle[detector]
        if position is not None:
            st.offsets[position[0]] = position[1] + 1
        self._dirty.add(key)

    # -- closing a window -----------------------------------------------------------------
    def _specs(self) -> list[tuple[str, str, Any, str]]:
        """(spec name, mode, spec, detector) per configured spec, built once per model config."""
        mc = self.model_config
        if self._specs_of is not mc:
            self._specs_cache = [
                (name, "enforce" if name == mc.enforce else "shadow", get_spec(name),
                 f"risk:{name}") for name in mc.specs()]
            self._specs_of = mc
        return self._specs_cache

    def _close_window(self, st: AdvertiserState, w: AdvertiserWindow, out: list[Output]) -> None:
        self.stats["windows_closed"] += 1
        x = window_features(w)
        rule_hits = evaluate_rules(x)
        mc = self.model_config
        now = self._clock_ms() if self._clock_ms else w.end + self._lateness_ms
        lifecycles = st.lifecycle
        for spec_name, mode, spec, detector in self._specs():
            model = st.models.get(spec_name)
            if model is None:
                model = st.model(spec_name)
            risk = model.score_one(x)
            prev = lifecycles.get(detector)
            verdict, new_state = decide(prev, risk, rule_hits,
                                        model.windows_seen, self.config.decision)
            flagged, status, severity, threshold = verdict
            if new_state is None:
                lifecycles.pop(detector, None)
            else:
                lifecycles[detector] = new_state
            if mode == "enforce":
                out.append(Output("score", st.advertiser_id, {
                    "advertiser_id": st.advertiser_id, "window": {"start": w.start, "end": w.end},
                    "model": {"name": spec_name, "version": spec.version,
                              "config_version": mc.version},
                    "risk_score": round(risk, 6), "flagged": flagged,
                    "severity": severity, "rules": [h.code for h in rule_hits],
                    # round(v, 6) is v for a whole float (zeros and the counts, most values;
                    # the features are floats): skip the call, which formats the digits
                    "metrics": {k: v if v % 1.0 == 0.0 else round(v, 6) for k, v in x.items()},
                }, st.partition))
                recent = st.recent
                recent.append([w.start, round(risk, 4), severity if flagged else None])
                if len(recent) > RECENT_SCORES:
                    del recent[:-RECENT_SCORES]
            if st.enforced_by is not None and status in ("open", "escalated"):
                # Already enforced: enforcement acts on the confirmed alert; do not re-alert.
                self.stats["suppressed_enforced"] += 1
            elif status is not None:
                reasons = [
                    {"type": "rule", "code": h.code, "message": h.message,
                     "value": round(h.value, 6), "threshold": h.threshold}
                    for h in rule_hits
                ] if status != "resolved" else []
                if status != "resolved":
                    for c in model.explain(x):
                        reasons.append({
                            "type": "feature",
                            "code": f"{c.feature}_{'above' if c.value >= c.baseline else 'below'}"
                                    "_baseline",
                            "feature": c.feature, "value": round(c.value, 6),
                            "baseline": round(c.baseline, 6), "deviation": round(c.deviation, 3),
                            "message": f"{c.feature} {c.value:.4g} vs baseline {c.baseline:.4g} "
                                       f"({c.deviation:+.1f} sd)",
                        })
                else:
                    reasons.append({"type": "lifecycle", "code": "returned_to_normal",
                                    "message": f"{self.config.decision.resolve_after} consecutive "
                                               f"normal windows"})
                lifecycle = new_state or prev or {}
                alert = build_alert(
                    advertiser_id=st.advertiser_id, window_start=w.start, window_end=w.end,
                    detector=detector, status=status, severity=severity or "low",
                    risk_score=risk, threshold=threshold, model_name=spec_name,
                    model_version=spec.version, config_version=mc.version, mode=mode,
                    reasons=reasons, metrics=x,
                    episode={"flagged_windows": lifecycle.get("flagged_windows", 0)},
                    emitted_at_ms=now,
                )
                if status == "open":
                    st.lifecycle[detector]["opened_alert_id"] = alert["alert_id"]
                    st.lifecycle[detector]["opened_window_start"] = w.start
                alert["episode"]["opened_alert_id"] = lifecycle.get("opened_alert_id")
                out.append(Output("alert" if mode == "enforce" else "shadow_alert",
                                  st.advertiser_id, alert, st.partition))
                self.stats["alerts" if mode == "enforce" else "shadow_alerts"] += 1
            elif flagged:
                self.stats["suppressed"] += 1
            if st.enforced_by is None:  # confirmed-bad traffic never becomes a baseline
                learn_after_decision(model, x, flagged)

    # -- model control --------------------------------------------------------------------
    def apply_model_config(self, cfg: ModelConfig) -> bool:
        """Hot swap: new specs start per advertiser from the cohort prior on their next window;
        states of specs no longer configured are dropped at that advertiser's next checkpoint."""
        if cfg.version <= self.model_config.version and self.model_config.version != 0:
            return False
        self.model_config = cfg
        keep = set(cfg.specs())
        for key, st in self._states.items():
            for name in [n for n in st.models if n not in keep]:
                del st.models[name]
                self._dirty.add(key)
        return True

    def active_advertisers(self) -> int:
        return len(self._states)

    def iter_states(self) -> Iterator[AdvertiserState]:
        return iter(self._states.values())

    def peek_state(self, partition: int, advertiser_id: str) -> AdvertiserState | None:
        """Read-only look-up for the web API: the live state, else a copy decoded from the
        store that is *not* kept (unlike ``state_of``), so a look-up never changes what the
        engine holds, e.g. for a standby partition."""
        key = advertiser_key(partition, advertiser_id)
        st = self._states.get(key)
        if st is None:
            raw = self.store.get(key)
            st = AdvertiserState.loads(raw) if raw is not None else None
        return st


def wall_clock_ms() -> int:
    return int(time.time() * 1000)
