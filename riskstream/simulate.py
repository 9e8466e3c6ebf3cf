"""Traffic simulator: realistic ad traffic with injected incidents, and their ground truth.

:func:`generate` yields ``(kind, key, value)`` for the ``ad-impressions`` and ``user-feedback``
topics (``kind`` is ``"impression"`` or ``"feedback"``, ``key`` the advertiser id, ``value`` the
orjson-encoded event of :mod:`riskstream.events`), in non-decreasing ``event_time``. It is pure and
deterministic: the same :class:`SimConfig` gives byte-identical output, and it is lazy (event time
is generated chunk by chunk), so live mode can run for as long as it is asked to.

The model, per advertiser (drawn once from the seed):

* volume: heavy-tailed (lognormal weights) share of ``base_rate_per_s``, with a diurnal swing of
  ``diurnal_amplitude`` (+-40 %) over 24 h; a ``sparse_fraction`` of advertisers serve only a
  few impressions a minute;
* CTR 0.5-3 %, CVR of clicks 2-10 %, cost per impression (CPM $0.5-15) with per-impression noise,
  click delay ~ lognormal (median ~1.8 s), landing dwell ~ lognormal (median ~20 s);
* users from a pool of 50 M (unique users ~= impressions), regions and placements from a
  per-advertiser mix, 1-6 campaigns with 1-5 ads each;
* feedback: reports 1e-4..5e-4 per impression, hides and not-interested a few 1e-3 (seconds to
  minutes after the impression); complaints and refund requests 0.5-3 % of conversions and
  satisfaction surveys (minutes to hours after the conversion). Feedback is scheduled for its
  own later ``event_time`` and merged into the stream through a heap; feedback that would fall
  after the end of the run is dropped.

Incidents (:data:`INCIDENTS`, a registry ``name -> IncidentKind``; add one with the
:func:`incident` decorator) modify one advertiser's :class:`Params` while they are active.
:func:`ground_truth` lists the incidents a config injects.

>>> cfg = SimConfig(seed=1, advertisers=5, duration_s=120, base_rate_per_s=20, incidents="none")
>>> first = next(generate(cfg))
>>> first[0], first[1] == orjson.loads(first[2])["advertiser_id"].encode()
('impression', True)
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import orjson

IMPRESSION = "impression"
FEEDBACK = "feedback"
IMPRESSIONS_TOPIC = "ad-impressions"
FEEDBACK_TOPIC = "user-feedback"

DEFAULT_START_MS = 1_767_571_200_000  # 2026-01-05T00:00:00Z, a Monday, minute-aligned
USER_POOL = 50_000_000
REGIONS = ("US", "GB", "DE", "FR", "BR", "IN", "JP", "CA", "AU", "MX",
           "ES", "IT", "NL", "SE", "PL", "ID", "TR", "KR", "PH", "NG")
PLACEMENTS = ("feed", "stories", "search", "video", "marketplace", "sidebar")
_DAY_MS = 86_400_000


# --------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class FeedbackDelays:
    """Feedback delays: lognormal (median seconds, sigma of the log), clipped to [min, max]."""

    in_app_median_s: float = 45.0        # report / hide / not_interested after the impression
    in_app_sigma: float = 1.1            # -> 5 %: ~7 s, 95 %: ~4.5 min
    in_app_min_s: float = 1.0
    in_app_max_s: float = 3600.0
    post_conversion_median_s: float = 2400.0  # complaint / refund_request after the conversion
    post_conversion_sigma: float = 0.8        # -> 5 %: ~11 min, 95 %: ~2.5 h
    post_conversion_min_s: float = 120.0
    post_conversion_max_s: float = 12 * 3600.0
    survey_median_s: float = 1200.0      # satisfaction survey answer after the click/conversion
    survey_sigma: float = 0.9            # -> 5 %: ~4.5 min, 95 %: ~1.2 h
    survey_min_s: float = 60.0
    survey_max_s: float = 6 * 3600.0

    def p95_ms(self, lag: str) -> int:
        """95th percentile of one delay family ("in_app", "post_conversion", "survey"), in ms."""
        median = getattr(self, f"{lag}_median_s")
        sigma = getattr(self, f"{lag}_sigma")
        return int(min(median * math.exp(1.645 * sigma), getattr(self, f"{lag}_max_s")) * 1000)


@dataclass(frozen=True)
class IncidentSpec:
    """One explicit incident. ``None`` fields are drawn from the seed like ``"auto"`` ones.

    ``advertiser`` is an index (0-based) or an advertiser id; ``start_s`` is the offset from
    ``SimConfig.start_ms``; ``params`` override the kind's drawn magnitudes, e.g.
    ``(("ctr_x", 8.0),)``.
    """

    kind: str
    advertiser: int | str | None = None
    start_s: float | None = None
    duration_s: float | None = None
    params: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class SimConfig:
    """What to simulate. Everything random is drawn from ``seed``."""

    seed: int = 7
    advertisers: int = 200
    start_ms: int = DEFAULT_START_MS
    duration_s: float = 7200.0           # event-time span of the run
    base_rate_per_s: float = 300.0       # impressions per second of event time, all advertisers
    # "auto": bad_fraction / benign_fraction of the (non-sparse) advertisers, kinds round-robin;
    # "none"; or a tuple of IncidentSpec / kind names (one incident each).
    incidents: str | tuple[IncidentSpec | str, ...] = "auto"
    bad_fraction: float = 0.10
    benign_fraction: float = 0.05
    sparse_fraction: float = 0.05        # advertisers with ~0.2-2 impressions per minute
    incident_min_rate_per_s: float = 1.0  # "auto" picks advertisers with >= 60 impressions/min
    warmup_fraction: float = 0.30        # no incident starts in this first part of the run
    tail_fraction: float = 0.10          # ... nor ends in this last part (delayed feedback)
    incident_min_s: float = 900.0
    incident_max_s: float = 2400.0
    diurnal_amplitude: float = 0.40
    feedback_delay: FeedbackDelays = field(default_factory=FeedbackDelays)
    advertiser_prefix: str = "adv"

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError("seed must be >= 0")
        if self.advertisers < 1:
            raise ValueError("advertisers must be >= 1")
        if self.duration_s <= 0 or self.base_rate_per_s < 0:
            raise ValueError("duration_s must be > 0 and base_rate_per_s >= 0")
        if isinstance(self.incidents, list):
            object.__setattr__(self, "incidents", tuple(self.incidents))

    @property
    def end_ms(self) -> int:
        return self.start_ms + int(self.duration_s * 1000)


def parse_incidents(text: str) -> str | tuple[IncidentSpec, ...]:
    """CLI form: ``auto``, ``none``, or ``kind[:count],...`` (one incident per count).

    >>> parse_incidents("click_spam:2,scam_ad")[1].kind
    'click_spam'
    """
    text = text.strip()
    if text in ("auto", "none", ""):
        return text or "none"
    specs: list[IncidentSpec] = []
    for part in text.split(","):
        name, _, count = part.strip().partition(":")
        if name not in INCIDENTS:
            raise ValueError(f"unknown incident kind {name!r} (known: {', '.join(INCIDENTS)})")
        specs.extend(IncidentSpec(name) for _ in range(int(count or 1)))
    return tuple(specs)


# --------------------------------------------------------------------------------------------
# Per-advertiser generation parameters and the incident library

PARAM_FIELDS = (
    "rate",          # impressions/s at diurnal 1.0 (before ``volume``)
    "volume",        # multiplier on rate
    "ctr", "cvr",    # click-through per impression, conversion per (non-fast) click
    "fast_share",    # share of clicks that are machine-fast (< 300 ms, dwell < 1 s, no convert)
    "cpm",           # mean cost per impression, micros
    "report", "hide", "not_interested",   # per impression
    "complaint", "refund", "survey",      # per conversion
    "click_report",  # report per (non-fast) click: the landing page disappoints
    "survey_click",  # satisfaction survey per click
    "scam_share",    # share of reports citing scam / misleading
    "cloaked",       # 1.0: complaints cite not_received / counterfeit, ratings 1-2
    "bot_share",     # share of impressions from the bot pool (no feedback, fast clicks)
    "bot_base", "bot_size", "bot_region", "bot_region2", "bot_split",
    "launch_share",  # share of impressions served by the advertiser's new campaign
)


class Params:
    """One advertiser's generation parameters for one chunk of event time (mutable)."""

    __slots__ = PARAM_FIELDS

    def __init__(self, **values: float) -> None:
        for name in PARAM_FIELDS:
            setattr(self, name, float(values[name]))

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in PARAM_FIELDS}


@dataclass(frozen=True)
class IncidentKind:
    name: str
    apply: Callable[[Params, float, dict], None]  # (params, progress in [0,1), magnitudes)
    expected_alert: bool
    draw: Callable[[random.Random], dict]        # seeded magnitudes, drawn once per incident
    describe: Callable[[dict], str]
    signal_lag: str = "none"  # "none", "in_app", "post_conversion": how long the signal trails


INCIDENTS: dict[str, IncidentKind] = {}


def incident(name: str, *, expected_alert: bool, draw: Callable[[random.Random], dict],
             describe: Callable[[dict], str], signal_lag: str = "none"):
    """Register ``fn(params, progress, magnitudes)`` as incident kind ``name``."""

    def register(fn: Callable[[Params, float, dict], None]):
        INCIDENTS[name] = IncidentKind(name, fn, expected_alert, draw, describe, signal_lag)
        return fn

    return register


@incident("click_spam", expected_alert=True,
          draw=lambda r: {"ctr_x": round(r.uniform(5, 10), 2)},
          describe=lambda x: f"CTR x{x['ctr_x']}, extra clicks < 300 ms with dwell < 1 s")
def click_spam(p: Params, progress: float, x: dict) -> None:
    k = x["ctr_x"]
    p.ctr = min(p.ctr * k, 0.5)
    p.fast_share = 1.0 - (1.0 - p.fast_share) / k


@incident("bot_burst", expected_alert=True,
          draw=lambda r: (lambda region: {
              "volume_x": round(r.uniform(5, 20), 2),
              "pool_base": r.randrange(USER_POOL),
              "pool_size": r.randint(3, 40),
              "region": region,
              # "often one region": 3 in 4 bursts come from one region, else split in two
              "region2": region if r.random() < 0.75 else r.randrange(len(REGIONS)),
          })(r.randrange(len(REGIONS))),
          describe=lambda x: (f"volume x{x['volume_x']} from {x['pool_size']} users in "
                              f"{REGIONS[x['region']]}"
                              + (f"+{REGIONS[x['region2']]}" if x['region2'] != x['region']
                                 else "")))
def bot_burst(p: Params, progress: float, x: dict) -> None:
    k = x["volume_x"]
    p.volume *= k
    p.bot_share = 1.0 - 1.0 / k
    p.bot_base = x["pool_base"]
    p.bot_size = x["pool_size"]
    p.bot_region = x["region"]
    p.bot_region2 = x["region2"]
    p.bot_split = 1.0 if x["region2"] == x["region"] else 0.6


@incident("scam_ad", expected_alert=True, signal_lag="in_app",
          draw=lambda r: {"report_x": round(r.uniform(20, 50), 1),
                          "hide_x": round(r.uniform(4, 10), 1),
                          "not_interested_x": round(r.uniform(2, 4), 1)},
          describe=lambda x: (f"reports x{x['report_x']} citing scam/misleading, "
                              f"hides x{x['hide_x']}"))
def scam_ad(p: Params, progress: float, x: dict) -> None:
    p.report *= x["report_x"]
    p.hide *= x["hide_x"]
    p.not_interested *= x["not_interested_x"]
    p.scam_share = 0.85


@incident("cloaking", expected_alert=True, signal_lag="post_conversion",
          draw=lambda r: {"cvr_x": round(r.uniform(2.0, 4.0), 2),
                          "click_report": round(r.uniform(0.05, 0.10), 3),
                          "complaint": round(r.uniform(0.25, 0.45), 3),
                          "refund": round(r.uniform(0.20, 0.35), 3),
                          "survey_x": round(r.uniform(2.0, 3.0), 2)},
          describe=lambda x: (f"cloaked landing page: CVR x{x['cvr_x']}, "
                              f"{x['click_report']:.0%} of clickers report it (misleading/scam), "
                              f"then {x['complaint']:.0%} complaints + {x['refund']:.0%} refund "
                              "requests (not_received/counterfeit) and ratings 1-2, minutes to "
                              "hours after conversion"))
def cloaking(p: Params, progress: float, x: dict) -> None:
    p.cvr = min(p.cvr * x["cvr_x"], 0.5)
    p.click_report = x["click_report"]
    p.complaint = x["complaint"]
    p.refund = x["refund"]
    p.survey = min(p.survey * x["survey_x"], 0.6)
    p.cloaked = 1.0


@incident("slow_ramp", expected_alert=True, signal_lag="in_app",
          draw=lambda r: {"target_x": 5.0},
          describe=lambda x: f"reports and CTR rise linearly to x{x['target_x']} over the span")
def slow_ramp(p: Params, progress: float, x: dict) -> None:
    m = 1.0 + (x["target_x"] - 1.0) * progress
    p.ctr = min(p.ctr * m, 0.5)
    p.report *= m
    p.scam_share = max(p.scam_share, 0.5)


@incident("benign_launch", expected_alert=False,
          draw=lambda r: {"volume_x": round(r.uniform(3, 5), 2)},
          describe=lambda x: (f"new campaign launch: volume x{x['volume_x']} (new campaign_id, "
                              "new users), all rates normal"))
def benign_launch(p: Params, progress: float, x: dict) -> None:
    m = 1.0 + (x["volume_x"] - 1.0) * min(1.0, progress / 0.1)  # ramps up in the first 10 %
    p.volume *= m
    p.launch_share = 1.0 - 1.0 / m


@incident("benign_seasonal", expected_alert=False,
          draw=lambda r: {"swing_x": round(r.uniform(2, 3), 2), "sign": r.choice((1, -1))},
          describe=lambda x: ("sale day: volume swings smoothly "
                              + ("up then down" if x["sign"] > 0 else "down then up")
                              + f" by up to x{x['swing_x']}, rates normal"))
def benign_seasonal(p: Params, progress: float, x: dict) -> None:
    p.volume *= x["swing_x"] ** (x["sign"] * math.sin(2.0 * math.pi * progress))


# --------------------------------------------------------------------------------------------
# The world: advertisers and the incident plan, both pure functions of the config


@dataclass(frozen=True)
class PlannedIncident:
    advertiser: int
    kind: str
    start_ms: int
    end_ms: int
    params: dict


class _World:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        n = config.advertisers
        g = np.random.default_rng([config.seed, 1])
        w = g.lognormal(0.0, 1.3, n)
        n_sparse = min(int(round(config.sparse_fraction * n)), n - 1) if n >= 4 else 0
        sparse = np.zeros(n, dtype=bool)
        sparse[g.choice(n, n_sparse, replace=False)] = True
        rate = config.base_rate_per_s * w / w[~sparse].sum()
        rate[sparse] = g.uniform(0.2, 2.0, n_sparse) / 60.0
        self.sparse = sparse

        def loguniform(lo: float, hi: float) -> np.ndarray:
            return np.exp(g.uniform(math.log(lo), math.log(hi), n))

        p = {
            "rate": rate,
            "volume": np.ones(n),
            "ctr": loguniform(0.005, 0.03),
            "cvr": g.uniform(0.02, 0.10, n),
            "fast_share": np.zeros(n),
            "cpm": loguniform(500, 15_000),
            "report": loguniform(1e-4, 5e-4),
            "hide": loguniform(5e-4, 3e-3),
            "not_interested": loguniform(3e-4, 2e-3),
            "complaint": g.uniform(0.005, 0.02, n),
            "refund": g.uniform(0.01, 0.03, n),
            "survey": g.uniform(0.05, 0.15, n),
            "click_report": loguniform(5e-4, 3e-3),
            "survey_click": g.uniform(0.002, 0.01, n),
            "scam_share": g.uniform(0.05, 0.20, n),
            "cloaked": np.zeros(n),
            "bot_share": np.zeros(n),
            "bot_base": np.zeros(n),
            "bot_size": np.ones(n),
            "bot_region": np.zeros(n),
            "bot_region2": np.zeros(n),
            "bot_split": np.ones(n),
            "launch_share": np.zeros(n),
        }
        assert tuple(p) == PARAM_FIELDS
        self.base = p

        # regions: 1-6 per advertiser, Dirichlet weights; placements: all, Dirichlet weights
        nr, npl = len(REGIONS), len(PLACEMENTS)
        region_p = np.zeros((n, nr))
        for a in range(n):
            k = int(g.integers(1, 7))
            cols = g.choice(nr, k, replace=False)
            region_p[a, cols] = g.dirichlet(np.full(k, 1.5))
        self.region_cum = _cumulative(region_p)
        self.placement_cum = _cumulative(g.dirichlet(np.ones(npl), n))

        # campaigns and ads; each advertiser also has one not-yet-launched campaign
        self.adv_ids = [f"{config.advertiser_prefix}-{a:05d}" for a in range(n)]
        self.adv_keys = [s.encode() for s in self.adv_ids]
        camps: list[str] = []
        ads: list[str] = []
        ad_off, ad_cnt, launch_off, launch_cnt = (np.zeros(n, dtype=np.int64) for _ in range(4))
        for a, adv in enumerate(self.adv_ids):
            n_camp = min(1 + int(g.poisson(1.5)), 6)
            ad_off[a] = len(ads)
            for c in range(1, n_camp + 2):
                if c == n_camp + 1:
                    ad_cnt[a] = len(ads) - ad_off[a]
                    launch_off[a] = len(ads)
                for j in range(1, min(1 + int(g.poisson(1.5)), 5) + 1):
                    camps.append(f"{adv}-c{c}")
                    ads.append(f"{adv}-c{c}-a{j}")
            launch_cnt[a] = len(ads) - launch_off[a]
        self.campaigns, self.ads = camps, ads
        self.ad_off, self.ad_cnt = ad_off, ad_cnt
        self.launch_off, self.launch_cnt = launch_off, launch_cnt

        self.plan = _plan(config, self)

    def profile(self, a: int) -> dict:
        return {name: float(v[a]) for name, v in self.base.items()}


def _cumulative(p: np.ndarray) -> np.ndarray:
    cum = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)
    cum[:, -1] = 1.0 + 1e-12
    return cum


def _plan(config: SimConfig, world: _World) -> list[PlannedIncident]:
    spec = config.incidents
    if spec == "none" or spec == ():
        return []
    r = random.Random(f"riskstream-sim:{config.seed}:plan")
    n = config.advertisers
    candidates = [a for a in range(n) if not world.sparse[a]]
    r.shuffle(candidates)
    # seeded picks among advertisers with enough traffic to show an incident; only when those
    # run out, the busiest of the others
    rate = world.base["rate"]
    eligible = [a for a in candidates if rate[a] >= config.incident_min_rate_per_s]
    rest = sorted((a for a in candidates if rate[a] < config.incident_min_rate_per_s),
                  key=lambda a: -rate[a])
    candidates = eligible + rest
    if spec == "auto":
        bad = [k for k, v in INCIDENTS.items() if v.expected_alert]
        benign = [k for k, v in INCIDENTS.items() if not v.expected_alert]
        n_bad = min(math.ceil(config.bad_fraction * n), len(candidates))
        n_benign = min(math.ceil(config.benign_fraction * n), len(candidates) - n_bad)
        o1, o2 = r.randrange(len(bad)), r.randrange(len(benign))
        specs: list[IncidentSpec] = (
            [IncidentSpec(bad[(o1 + i) % len(bad)]) for i in range(n_bad)]
            + [IncidentSpec(benign[(o2 + i) % len(benign)]) for i in range(n_benign)])
    elif isinstance(spec, str):
        specs = list(parse_incidents(spec))  # type: ignore[arg-type]
    else:
        specs = [IncidentSpec(s) if isinstance(s, str) else s for s in spec]

    run_ms = config.end_ms - config.start_ms
    lo_ms = config.start_ms + int(config.warmup_fraction * run_ms)
    hi_ms = config.end_ms - int(config.tail_fraction * run_ms)
    span_ms = max(hi_ms - lo_ms, 1)
    step = 60_000 if span_ms >= 10 * 60_000 else 1000  # align to minutes (chunks divide 60 s)
    explicit = {s.advertiser for s in specs if s.advertiser is not None}
    free = [a for a in candidates if a not in explicit and world.adv_ids[a] not in explicit]
    out: list[PlannedIncident] = []
    for s in specs:
        if s.kind not in INCIDENTS:
            raise ValueError(f"unknown incident kind {s.kind!r}")
        kind = INCIDENTS[s.kind]
        params = kind.draw(random.Random(f"riskstream-sim:{config.seed}:{len(out)}:{s.kind}"))
        params.update(dict(s.params))
        if s.advertiser is None:
            if not free:
                free = list(candidates)  # more incidents than advertisers: reuse, if room
            a = free.pop(0)
        elif isinstance(s.advertiser, str):
            if s.advertiser not in world.adv_ids:
                raise ValueError(f"incident advertiser {s.advertiser!r} is not simulated")
            a = world.adv_ids.index(s.advertiser)
        else:
            a = int(s.advertiser)
            if not 0 <= a < n:
                raise ValueError(f"incident advertiser {a} out of range")
        if s.duration_s is not None:
            dur = int(s.duration_s * 1000)
        else:
            scale = min(1.0, span_ms / (config.incident_max_s * 1000))
            dur = int(r.uniform(config.incident_min_s, config.incident_max_s) * 1000 * scale)
            dur = max(step, dur // step * step)
        if s.start_s is not None:
            start = config.start_ms + int(s.start_s * 1000)
        else:
            start = lo_ms + int(r.uniform(0, max(span_ms - dur, 0)))
            start = config.start_ms + (start - config.start_ms) // step * step
        inc = PlannedIncident(a, s.kind, start, start + dur, params)
        for other in out:
            if (other.advertiser == a and other.start_ms < inc.end_ms
                    and inc.start_ms < other.end_ms):
                raise ValueError(f"incidents overlap for advertiser {world.adv_ids[a]}: "
                                 f"{other.kind} and {inc.kind}")
        out.append(inc)
    out.sort(key=lambda i: (i.start_ms, i.advertiser))
    return out


def population(config: SimConfig) -> list[dict]:
    """Per-advertiser base profile (ids, rates, campaigns): for tests, docs and debugging."""
    world = _World(config)
    return [{"advertiser_id": world.adv_ids[a], "sparse": bool(world.sparse[a]),
             "campaigns": len({world.campaigns[i] for i in range(
                 int(world.ad_off[a]), int(world.ad_off[a] + world.ad_cnt[a]))}),
             **world.profile(a)} for a in range(config.advertisers)]


def ground_truth(config: SimConfig) -> list[dict]:
    """The incidents ``config`` injects, by start time.

    ``signal_end_ms`` is when the incident's trailing signal has mostly arrived (feedback keeps
    coming after ``end_ms``: ~95 % of it by then, capped at the end of the run);
    ``baseline_impressions_per_min`` the advertiser's normal volume at the start (a detector
    cannot be blamed much for missing an incident on a few impressions a minute); ``params``
    the drawn magnitudes.
    """
    world = _World(config)
    out = []
    for inc in world.plan:
        kind = INCIDENTS[inc.kind]
        lag = 0 if kind.signal_lag == "none" else config.feedback_delay.p95_ms(kind.signal_lag)
        out.append({
            "advertiser_id": world.adv_ids[inc.advertiser],
            "kind": inc.kind,
            "start_ms": inc.start_ms,
            "end_ms": inc.end_ms,
            "signal_end_ms": min(inc.end_ms + lag, config.end_ms),
            "expected_alert": kind.expected_alert,
            # the advertiser's normal volume then (diurnal included): how visible it can be
            "baseline_impressions_per_min": round(
                60.0 * float(world.base["rate"][inc.advertiser]) * _diurnal(config, inc.start_ms),
                2),
            "description": f"{inc.kind}: {kind.describe(inc.params)}",
            "params": inc.params,
        })
    return out


# --------------------------------------------------------------------------------------------
# The generator

_REPORT_REASONS = (("irrelevant", "repetitive", "offensive", "quality", "misleading", "other"),
                   (0.30, 0.22, 0.10, 0.13, 0.10, 0.15))
_SCAM_REASONS = (("scam", "misleading"), (0.6, 0.4))
_CLOAK_REPORT_REASONS = (("misleading", "scam", "counterfeit"), (0.5, 0.3, 0.2))
_HIDE_REASONS = (("", "irrelevant", "repetitive"), (0.7, 0.2, 0.1))
_COMPLAINT_REASONS = (("quality", "not_received", "misleading", "counterfeit", "other"),
                      (0.40, 0.20, 0.15, 0.05, 0.20))
_CLOAK_COMPLAINT_REASONS = (("not_received", "counterfeit", "scam"), (0.55, 0.35, 0.10))
_REFUND_REASONS = (("quality", "not_received", "other"), (0.40, 0.30, 0.30))
_CLOAK_REFUND_REASONS = (("not_received", "counterfeit"), (0.6, 0.4))
_RATINGS = ((1, 2, 3, 4, 5), (0.04, 0.06, 0.15, 0.35, 0.40))
_CLOAK_RATINGS = ((1, 2, 3, 4, 5), (0.55, 0.35, 0.05, 0.03, 0.02))


def _cum(table: tuple) -> tuple[tuple, list[float]]:
    values, weights = table
    total, cum = 0.0, []
    for w in weights:
        total += w
        cum.append(total)
    return values, cum


def _chunk_ms(config: SimConfig) -> int:
    """Chunk of event time generated at once: ~2000 events, 1-10 s, a divisor of 60 s."""
    target = 2000.0 / config.base_rate_per_s if config.base_rate_per_s > 0 else 10.0
    return 1000 * max(d for d in (1, 2, 3, 4, 5, 6, 10) if d <= max(1.0, target))


def _diurnal(config: SimConfig, t_ms: int) -> float:
    hour = (t_ms % _DAY_MS) / 3_600_000.0
    return 1.0 + config.diurnal_amplitude * math.cos(2.0 * math.pi * (hour - 15.0) / 24.0)


def generate(config: SimConfig) -> Iterator[tuple[str, bytes, bytes]]:
    """Yield ``(kind, key, value)`` for the whole run, in non-decreasing event time (lazily)."""
    for kind, key, value, _t in generate_timed(config):
        yield kind, key, value


def generate_timed(config: SimConfig) -> Iterator[tuple[str, bytes, bytes, int]]:
    """:func:`generate` with each event's ``event_time`` (ms) as a fourth element."""
    world = _World(config)
    dumps = orjson.dumps
    heappush, heappop = heapq.heappush, heapq.heappop
    g = np.random.default_rng([config.seed, 3])
    pr = random.Random(f"riskstream-sim:{config.seed}:feedback")
    prand = pr.random
    lognorm = pr.lognormvariate
    delays = config.feedback_delay
    ln_in_app, ln_post, ln_survey = (math.log(delays.in_app_median_s),
                                     math.log(delays.post_conversion_median_s),
                                     math.log(delays.survey_median_s))
    tag = f"{config.seed:x}.{config.start_ms // 1000:x}"
    imp_prefix, fb_prefix = f"i{tag}.", f"f{tag}."
    adv_ids, adv_keys = world.adv_ids, world.adv_keys
    camps, ads = world.campaigns, world.ads
    regions, placements = REGIONS, PLACEMENTS
    n = config.advertisers
    base = world.base
    chunk = _chunk_ms(config)
    end_ms = config.end_ms
    plan = world.plan
    n_imp = 0
    n_fb = 0
    heap: list[tuple[int, int, bytes, bytes]] = []
    reasons = {name: _cum(t) for name, t in (
        ("report", _REPORT_REASONS), ("scam", _SCAM_REASONS),
        ("cloak_report", _CLOAK_REPORT_REASONS), ("hide", _HIDE_REASONS),
        ("complaint", _COMPLAINT_REASONS), ("cloak_complaint", _CLOAK_COMPLAINT_REASONS),
        ("refund", _REFUND_REASONS), ("cloak_refund", _CLOAK_REFUND_REASONS),
        ("rating", _RATINGS), ("cloak_rating", _CLOAK_RATINGS))}

    def pick(name: str) -> Any:
        values, cum = reasons[name]
        u = prand() * cum[-1]
        for v, c in zip(values, cum):
            if u < c:
                return v
        return values[-1]

    def schedule(t: int, a: int, ad: int, user: int, kind: str, reason: str, channel: str,
                 rating: int | None = None) -> None:
        nonlocal n_fb
        if t >= end_ms:
            return
        n_fb += 1
        ev = {"event_id": f"{fb_prefix}{n_fb:x}", "event_time": t, "advertiser_id": adv_ids[a],
              "ad_id": ads[ad], "user_id": f"u{user}", "kind": kind, "reason": reason,
              "channel": channel}
        if rating is not None:
            ev["rating"] = rating
        heappush(heap, (t, n_fb, adv_keys[a], dumps(ev)))

    def in_app_delay() -> int:
        s = min(max(lognorm(ln_in_app, delays.in_app_sigma), delays.in_app_min_s),
                delays.in_app_max_s)
        return int(s * 1000)

    def post_delay() -> int:
        s = min(max(lognorm(ln_post, delays.post_conversion_sigma),
                    delays.post_conversion_min_s), delays.post_conversion_max_s)
        return int(s * 1000)

    def survey_delay() -> int:
        s = min(max(lognorm(ln_survey, delays.survey_sigma), delays.survey_min_s),
                delays.survey_max_s)
        return int(s * 1000)

    arange = np.arange(n)
    ln_click, ln_dwell = math.log(1800.0), math.log(20_000.0)
    for t0 in range(config.start_ms, end_ms, chunk):
        t1 = min(t0 + chunk, end_ms)
        mid = (t0 + t1) // 2
        active = [inc for inc in plan if inc.start_ms <= mid < inc.end_ms]
        if active:
            P = {k: v.copy() for k, v in base.items()}
            for inc in active:
                a = inc.advertiser
                p = Params(**{k: v[a] for k, v in P.items()})
                progress = (mid - inc.start_ms) / (inc.end_ms - inc.start_ms)
                INCIDENTS[inc.kind].apply(p, progress, inc.params)
                for k, v in p.as_dict().items():
                    P[k][a] = v
        else:
            P = base
        lam = P["rate"] * P["volume"] * (_diurnal(config, mid) * (t1 - t0) / 1000.0)
        counts = g.poisson(lam)
        e = int(counts.sum())
        if e:
            adv = np.repeat(arange, counts)
            times = g.integers(t0, t1, e)
            order = np.argsort(times, kind="stable")
            times, adv = times[order], adv[order]
            u = g.random((12, e))
            z = g.standard_normal((3, e))
            bot = u[0] < P["bot_share"][adv]
            launch = u[0] < P["launch_share"][adv]
            region = (u[1][:, None] >= world.region_cum[adv]).sum(axis=1)
            placement = (u[2][:, None] >= world.placement_cum[adv]).sum(axis=1)
            ad = world.ad_off[adv] + (u[3] * world.ad_cnt[adv]).astype(np.int64)
            users = g.integers(0, USER_POOL, e)
            if launch.any():
                la = adv[launch]
                ad[launch] = world.launch_off[la] + (u[3][launch] * world.launch_cnt[la]).astype(
                    np.int64)
            ctr = P["ctr"][adv]
            if bot.any():
                ba = adv[bot]
                users[bot] = (P["bot_base"][ba] + np.floor(u[4][bot] * P["bot_size"][ba])).astype(
                    np.int64)
                region[bot] = np.where(u[1][bot] < P["bot_split"][ba], P["bot_region"][ba],
                                       P["bot_region2"][ba]).astype(np.int64)
                ctr = np.where(bot, ctr * 0.3, ctr)
            clicked = u[5] < ctr
            fast = clicked & ((u[6] < P["fast_share"][adv]) | bot)
            slow = clicked & ~fast
            click_delay = np.where(
                fast, 40.0 + u[7] * 250.0,
                np.where(slow, np.clip(np.exp(ln_click + 0.7 * z[0]), 120.0, 60_000.0), 0.0))
            dwell = np.where(
                fast, 50.0 + u[8] * 900.0,
                np.where(slow, np.clip(np.exp(ln_dwell + 1.2 * z[1]), 300.0, 600_000.0), 0.0))
            converted = slow & (u[9] < P["cvr"][adv])
            cost = np.maximum(P["cpm"][adv] * np.exp(0.35 * z[2] - 0.06125), 1.0)

            # feedback: in-app (report / hide / not_interested), post-click and post-conversion
            r_rep = P["report"][adv]
            r_hide = r_rep + P["hide"][adv]
            r_ni = r_hide + P["not_interested"][adv]
            fb_in_app = (u[10] < r_ni) & ~bot
            r_click_rep = P["click_report"][adv]
            fb_click = slow & (u[11] < r_click_rep + P["survey_click"][adv])
            fb_idx = np.flatnonzero(fb_in_app | fb_click | converted)

            times_l = times.tolist()
            adv_l = adv.tolist()
            ad_l = ad.tolist()
            users_l = users.tolist()
            if len(fb_idx):
                scam_share = P["scam_share"]
                cloaked = P["cloaked"]
                complaint, refund, survey = P["complaint"], P["refund"], P["survey"]
                for i, ia, ic, iv, u10, rr, rh, u11, rc, dw in zip(
                        fb_idx.tolist(), fb_in_app[fb_idx].tolist(), fb_click[fb_idx].tolist(),
                        converted[fb_idx].tolist(), u[10][fb_idx].tolist(),
                        r_rep[fb_idx].tolist(), r_hide[fb_idx].tolist(),
                        u[11][fb_idx].tolist(), r_click_rep[fb_idx].tolist(),
                        dwell[fb_idx].tolist()):
                    t, a, d, usr = times_l[i], adv_l[i], ad_l[i], users_l[i]
                    cl = cloaked[a] > 0.5
                    if ia:
                        if u10 < rr:
                            reason = pick("scam" if prand() < scam_share[a] else "report")
                            schedule(t + in_app_delay(), a, d, usr, "report", reason,
                                     "in_app" if prand() < 0.9 else "email")
                        elif u10 < rh:
                            schedule(t + in_app_delay(), a, d, usr, "hide", pick("hide"), "in_app")
                        else:
                            schedule(t + in_app_delay(), a, d, usr, "not_interested",
                                     pick("hide"), "in_app")
                    if ic:
                        if u11 < rc:  # after seeing the landing page
                            reason = pick("cloak_report" if cl else (
                                "scam" if prand() < scam_share[a] else "report"))
                            schedule(t + int(dw) + in_app_delay(), a, d, usr, "report", reason,
                                     "in_app")
                        else:
                            schedule(t + survey_delay(), a, d, usr, "satisfaction", "",
                                     "survey", pick("cloak_rating" if cl else "rating"))
                    if iv:
                        if prand() < complaint[a]:
                            schedule(t + post_delay(), a, d, usr, "complaint",
                                     pick("cloak_complaint" if cl else "complaint"),
                                     "support" if prand() < 0.6 else "email")
                        if prand() < refund[a]:
                            schedule(t + post_delay(), a, d, usr, "refund_request",
                                     pick("cloak_refund" if cl else "refund"),
                                     "support" if prand() < 0.7 else "email")
                        if prand() < survey[a]:
                            schedule(t + survey_delay(), a, d, usr, "satisfaction", "",
                                     "survey" if prand() < 0.8 else "email",
                                     pick("cloak_rating" if cl else "rating"))

            next_fb = heap[0][0] if heap else end_ms
            for t, a, d, usr, reg, pl, c, ck, cd, cv, dw in zip(
                    times_l, adv_l, ad_l, users_l, region.tolist(), placement.tolist(),
                    cost.astype(np.int64).tolist(), clicked.tolist(),
                    click_delay.astype(np.int64).tolist(), converted.tolist(),
                    dwell.astype(np.int64).tolist()):
                if t >= next_fb:
                    while heap and heap[0][0] <= t:
                        item = heappop(heap)
                        yield FEEDBACK, item[2], item[3], item[0]
                    next_fb = heap[0][0] if heap else end_ms
                n_imp += 1
                yield IMPRESSION, adv_keys[a], dumps({
                    "event_id": f"{imp_prefix}{n_imp:x}", "event_time": t,
                    "advertiser_id": adv_ids[a], "campaign_id": camps[d], "ad_id": ads[d],
                    "user_id": f"u{usr}", "region": regions[reg], "placement": placements[pl],
                    "cost_micros": c, "clicked": ck, "click_delay_ms": cd, "converted": cv,
                    "dwell_ms": dw}), t
        while heap and heap[0][0] < t1:
            item = heappop(heap)
            yield FEEDBACK, item[2], item[3], item[0]
    while heap:  # only events before end_ms were scheduled
        item = heappop(heap)
        yield FEEDBACK, item[2], item[3], item[0]


def live_config(config: SimConfig, speedup: float = 1.0, now_ms: int | None = None) -> SimConfig:
    """``config`` re-timed for live mode: event time follows the wall clock.

    Event time advances ``speedup`` times faster than the wall clock, so the run is back-dated to
    end (about) now: ``start_ms = now - duration * (1 - 1/speedup)``, floored to the minute.
    Emitting each event at ``wall_start + (event_time - start_ms) / speedup`` (what
    :func:`produce` does in live mode) keeps every event_time <= the wall clock.
    """
    if speedup < 1.0:
        raise ValueError("speedup must be >= 1")
    now = int(time.time() * 1000) if now_ms is None else now_ms
    start = now - int(config.duration_s * 1000 * (1.0 - 1.0 / speedup))
    return replace(config, start_ms=start - start % 60_000)


# --------------------------------------------------------------------------------------------
# Sinks: Kafka and JSON lines


def _limited(events: Iterable[tuple[str, bytes, bytes]], max_events: int | None):
    if max_events is None:
        return iter(events)
    return itertools.islice(events, max(max_events, 0))


def write_jsonl(config: SimConfig, impressions_path: str, feedback_path: str,
                truth_path: str | None, *, max_events: int | None = None) -> dict:
    """Write the streams as JSON lines (one event per line) and the ground truth likewise."""
    counts = {IMPRESSION: 0, FEEDBACK: 0}
    with open(impressions_path, "wb") as fi, open(feedback_path, "wb") as ff:
        files = {IMPRESSION: fi, FEEDBACK: ff}
        for kind, _key, value in _limited(generate(config), max_events):
            files[kind].write(value + b"\n")
            counts[kind] += 1
    truth = ground_truth(config)
    if truth_path:
        write_truth(truth, truth_path)
    return {"impressions": counts[IMPRESSION], "feedback": counts[FEEDBACK],
            "events": counts[IMPRESSION] + counts[FEEDBACK], "incidents": len(truth)}


def write_truth(truth: list[dict], path: str) -> None:
    with open(path, "wb") as f:
        for row in truth:
            f.write(orjson.dumps(row) + b"\n")


def producer_settings(bootstrap: str, extra: dict | None = None) -> dict:
    """The simulator's confluent-kafka producer configuration (``extra`` wins)."""
    conf = {
        "bootstrap.servers": bootstrap,
        "partitioner": "murmur2_random",  # same partition as Java / aiokafka for a key
        "linger.ms": 20,
        "batch.size": 512 * 1024,
        "compression.type": "lz4",
        "acks": "all",
        "enable.idempotence": True,
        "queue.buffering.max.messages": 500_000,
        "queue.buffering.max.kbytes": 512 * 1024,
    }
    conf.update(extra or {})
    return conf


def _make_producer(conf: dict):
    from confluent_kafka import KafkaException, Producer

    try:
        return Producer(conf), conf.get("compression.type", "none")
    except KafkaException:
        if conf.get("compression.type", "none") == "none":
            raise
        conf = {**conf, "compression.type": "none"}  # librdkafka built without lz4
        return Producer(conf), "none"


def produce(config: SimConfig, bootstrap: str, impressions_topic: str, feedback_topic: str,
            rate: float | None = None, max_events: int | None = None,
            max_seconds: float | None = None, producer_config: dict | None = None, *,
            live_speedup: float | None = None, producer: Any = None,
            flush_timeout_s: float = 60.0) -> dict:
    """Produce the simulation to Kafka; returns counts.

    ``rate``: events per wall-clock second (None: as fast as possible). ``live_speedup``: live
    mode, each event is sent at ``start + (event_time - config.start_ms) / live_speedup`` of wall
    time (``rate`` is then ignored; build ``config`` with :func:`live_config`). Stops at
    ``max_events`` events or ``max_seconds`` of wall time, whichever first, then flushes.
    ``producer`` replaces the confluent-kafka producer (tests).
    """
    compression = "n/a"
    if producer is None:
        producer, compression = _make_producer(producer_settings(bootstrap, producer_config))
    failed = [0]
    first_error: list[str] = []

    def on_delivery(err, _msg) -> None:
        if err is not None:
            failed[0] += 1
            if not first_error:
                first_error.append(str(err))

    topics = {IMPRESSION: impressions_topic, FEEDBACK: feedback_topic}
    counts = {IMPRESSION: 0, FEEDBACK: 0}
    clock = time.monotonic
    t_start = clock()
    deadline = t_start + max_seconds if max_seconds else math.inf
    limit = max_events if max_events is not None else math.inf
    stopped = "exhausted"
    sent = 0
    prod = producer.produce
    poll = producer.poll
    for kind, key, value, event_time in generate_timed(config):
        if sent >= limit:
            stopped = "max_events"
            break
        if live_speedup:
            due = t_start + (event_time - config.start_ms) / (1000.0 * live_speedup)
            now = clock()
            if due - now > 0.002:  # sleep only when >= 2 ms early: no syscall per event
                if due > deadline:
                    stopped = "max_seconds"
                    break
                poll(0)
                time.sleep(due - now)
        if not sent % 1000:
            now = clock()
            if now >= deadline:
                stopped = "max_seconds"
                break
            if rate and not live_speedup:
                ahead = sent / rate - (now - t_start)
                if ahead > 0:
                    if now + ahead >= deadline:
                        time.sleep(max(deadline - now, 0))
                        stopped = "max_seconds"
                        break
                    time.sleep(ahead)
            poll(0)
        elif rate and not live_speedup and not sent % 50:
            ahead = sent / rate - (clock() - t_start)
            if ahead > 0.002:
                time.sleep(ahead)
        while True:
            try:
                prod(topics[kind], value, key, on_delivery=on_delivery)
                break
            except BufferError:
                poll(0.05)
        counts[kind] += 1
        sent += 1
    produce_s = clock() - t_start
    remaining = producer.flush(flush_timeout_s)
    elapsed = clock() - t_start
    result = {
        "impressions": counts[IMPRESSION], "feedback": counts[FEEDBACK], "events": sent,
        "failed": failed[0], "undelivered": int(remaining or 0),
        "delivered": sent - failed[0] - int(remaining or 0),
        "seconds": round(elapsed, 3), "produce_seconds": round(produce_s, 3),
        "events_per_s": round(sent / elapsed, 1) if elapsed > 0 else 0.0,
        "stopped_by": stopped, "compression": compression,
    }
    if first_error:
        result["first_error"] = first_error[0]
    return result


# --------------------------------------------------------------------------------------------
# CLI: `riskstream simulate`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--advertisers", type=int, default=200, help="advertisers (default 200)")
    parser.add_argument("--duration", type=float, default=None,
                        help="event-time span in seconds (default 7200; live: "
                             "max-seconds x speedup)")
    parser.add_argument("--base-rate", type=float, default=300.0,
                        help="impressions per second of event time, all advertisers (default 300)")
    parser.add_argument("--rate", type=float, default=None,
                        help="events per wall-clock second (default: as fast as possible)")
    parser.add_argument("--max-events", type=int, default=None, help="stop after N events")
    parser.add_argument("--max-seconds", type=float, default=600.0,
                        help="stop after this much wall time (default 600)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--incidents", default="auto",
                        help="auto | none | kind[:count],... (kinds: " + ", ".join(INCIDENTS) + ")")
    parser.add_argument("--start-ms", type=int, default=None,
                        help="event time of the start (epoch ms). Default: Kafka mode ends the "
                             "run at now (so events pass the age check); --out-dir uses the "
                             "fixed 2026-01-05T00:00Z")
    parser.add_argument("--out-dir", default=None,
                        help="write impressions.jsonl, feedback.jsonl, truth.jsonl here "
                             "instead of producing to Kafka")
    parser.add_argument("--truth", default=None, help="write the ground truth (JSON lines) here")
    parser.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers")
    parser.add_argument("--topic-prefix", default=None, help="prefix of the topic names")
    parser.add_argument("--warmup-fraction", type=float, default=0.30,
                        help="no incident starts in this first part of the run (default 0.3)")
    parser.add_argument("--live", action="store_true",
                        help="event time follows the wall clock (for demos)")
    parser.add_argument("--speedup", type=float, default=1.0,
                        help="live mode: event time runs this many times faster than the "
                             "wall clock; the run is back-dated to end at now (default 1)")


def config_from_args(args: argparse.Namespace) -> SimConfig:
    live = getattr(args, "live", False)
    duration = args.duration
    if duration is None:
        duration = (args.max_seconds or 600.0) * args.speedup if live else 7200.0
    cfg = SimConfig(seed=args.seed, advertisers=args.advertisers, duration_s=duration,
                    base_rate_per_s=args.base_rate, incidents=parse_incidents(args.incidents),
                    warmup_fraction=getattr(args, "warmup_fraction", 0.30))
    if live:
        return live_config(cfg, args.speedup)
    if args.start_ms is not None:
        return replace(cfg, start_ms=args.start_ms)
    if not args.out_dir:
        now = int(time.time() * 1000)
        return replace(cfg, start_ms=now - now % 60_000 - int(duration * 1000))
    return cfg


def run(args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    truth = ground_truth(cfg)
    n_alert = sum(t["expected_alert"] for t in truth)
    t0 = time.monotonic()
    if args.out_dir:
        os.makedirs(args.out_dir, exist_ok=True)
        truth_path = args.truth or os.path.join(args.out_dir, "truth.jsonl")
        res = write_jsonl(cfg, os.path.join(args.out_dir, "impressions.jsonl"),
                          os.path.join(args.out_dir, "feedback.jsonl"), truth_path,
                          max_events=args.max_events)
        secs = time.monotonic() - t0
        print(f"simulate: {res['impressions']} impressions + {res['feedback']} feedback -> "
              f"{args.out_dir} in {secs:.1f} s ({res['events'] / max(secs, 1e-9):,.0f} ev/s); "
              f"{len(truth)} incidents ({n_alert} expected alerts) -> {truth_path}")
        return 0
    bootstrap = getattr(args, "bootstrap", None)
    if not bootstrap:
        print("simulate: no Kafka bootstrap servers (pass --bootstrap or --out-dir)",
              file=sys.stderr)
        return 2
    prefix = getattr(args, "topic_prefix", None) or ""
    if args.truth:
        write_truth(truth, args.truth)
    imp_topic, fb_topic = prefix + IMPRESSIONS_TOPIC, prefix + FEEDBACK_TOPIC
    res = produce(cfg, bootstrap, imp_topic, fb_topic, rate=args.rate,
                  max_events=args.max_events, max_seconds=args.max_seconds,
                  producer_config=getattr(args, "producer_config", None),
                  live_speedup=args.speedup if args.live else None)
    print(f"simulate: {res['impressions']} impressions + {res['feedback']} feedback -> "
          f"{bootstrap} ({imp_topic}, {fb_topic}) in {res['seconds']:.1f} s "
          f"({res['events_per_s']:,.0f} ev/s, {res['delivered']} delivered, {res['failed']} "
          f"failed, stopped by {res['stopped_by']}); {len(truth)} incidents ({n_alert} expected "
          f"alerts)" + (f" -> {args.truth}" if args.truth else "")
          + (f"; first error: {res['first_error']}" if "first_error" in res else ""))
    return 0 if res["failed"] == 0 and res["undelivered"] == 0 else 1


if __name__ == "__main__":  # pragma: no cover - `riskstream simulate` is the entry point
    _p = argparse.ArgumentParser(prog="riskstream-simulate")
    add_arguments(_p)
    sys.exit(run(_p.parse_args()))
