"""The traffic simulator: deterministic, valid, ordered, and its incidents show in the data."""

from __future__ import annotations

import argparse
import collections
import dataclasses
import time

import orjson
import pytest

from riskstream import simulate
from riskstream.events import FEEDBACK_REASONS, validate_feedback, validate_impression
from riskstream.simulate import (
    INCIDENTS,
    FeedbackDelays,
    IncidentSpec,
    SimConfig,
    generate,
    ground_truth,
    live_config,
    parse_incidents,
    population,
    produce,
    write_jsonl,
)

KINDS = ("cloaking", "scam_ad", "slow_ramp", "click_spam", "bot_burst",
                 "benign_launch", "benign_seasonal")
INC_START_S, INC_DURATION_S = 900.0, 900.0
CLOAK_START_S, CLOAK_DURATION_S = 600.0, 1200.0  # early: its complaints trail by ~40 min


def _explicit_config() -> SimConfig:
    # post-conversion feedback sooner than by default (median 40 min), to fit a 40-minute run
    delays = FeedbackDelays(post_conversion_median_s=300, survey_median_s=300)
    base = SimConfig(seed=11, advertisers=10, duration_s=2400, base_rate_per_s=40,
                     sparse_fraction=0.0, incidents="none", feedback_delay=delays)
    # each kind on the free advertiser with the most of the traffic its signal is made of
    signal = {"cloaking": lambda p: p["rate"] * p["ctr"] * p["cvr"],
              "scam_ad": lambda p: p["rate"] * p["report"],
              "bot_burst": lambda p: p["rate"]}
    free = population(base)
    specs = []
    for kind in KINDS:
        p = max(free, key=signal.get(kind, lambda p: p["rate"] * p["ctr"]))
        free.remove(p)
        specs.append(IncidentSpec(
            kind, advertiser=p["advertiser_id"],
            start_s=CLOAK_START_S if kind == "cloaking" else INC_START_S,
            duration_s=CLOAK_DURATION_S if kind == "cloaking" else INC_DURATION_S))
    return dataclasses.replace(base, incidents=tuple(specs))


@pytest.fixture(scope="module")
def run():
    cfg = _explicit_config()
    raw = list(generate(cfg))
    events = [(kind, key, orjson.loads(value)) for kind, key, value in raw]
    truth = {t["kind"]: t for t in ground_truth(cfg)}
    return cfg, raw, events, truth


class Stats:
    """One advertiser's traffic split into before the incident and during it."""

    def __init__(self, events, truth, lo_ms=None, hi_ms=None):
        adv, start, end = truth["advertiser_id"], truth["start_ms"], truth["end_ms"]
        self.imps_before = [e for k, _, e in events if k == "impression"
                            and e["advertiser_id"] == adv and e["event_time"] < start]
        self.imps_during = [e for k, _, e in events if k == "impression"
                            and e["advertiser_id"] == adv and start <= e["event_time"] < end]
        lo = start if lo_ms is None else lo_ms
        hi = end if hi_ms is None else hi_ms
        self.fb_before = [e for k, _, e in events if k == "feedback"
                          and e["advertiser_id"] == adv and e["event_time"] < start]
        self.fb_during = [e for k, _, e in events if k == "feedback"
                          and e["advertiser_id"] == adv and lo <= e["event_time"] < hi]
        self.before_s = (start - events[0][2]["event_time"]) / 1000
        self.during_s = (end - start) / 1000

    @staticmethod
    def ctr(imps):
        return sum(e["clicked"] for e in imps) / len(imps)


def test_deterministic_same_seed_same_bytes():
    cfg = SimConfig(seed=5, advertisers=30, duration_s=900, base_rate_per_s=60,
                    incidents="auto", warmup_fraction=0.2, incident_min_s=120,
                    incident_max_s=300)
    first = list(generate(cfg))
    assert first == list(generate(cfg))
    assert len(first) > 30_000
    assert first != list(generate(dataclasses.replace(cfg, seed=6)))
    assert ground_truth(cfg) == ground_truth(cfg)


def test_every_event_valid_ordered_and_keyed(run):
    cfg, raw, events, _ = run
    now_ms = cfg.end_ms + 3600_000
    validators = {"impression": validate_impression, "feedback": validate_feedback}
    last = cfg.start_ms
    ids = set()
    kinds = collections.Counter()
    for kind, key, value in raw:
        ev = validators[kind](value, now_ms)
        assert key == ev["advertiser_id"].encode()
        assert cfg.start_ms <= ev["event_time"] < cfg.end_ms
        assert ev["event_time"] >= last
        last = ev["event_time"]
        ids.add(ev["event_id"])
        kinds[ev["kind"] if kind == "feedback" else kind] += 1
    assert len(ids) == len(raw)
    assert set(kinds) == {"impression", "report", "hide", "not_interested", "complaint",
                          "refund_request", "satisfaction"}, kinds
    # raw fields that validation would silently normalise are correct as produced
    for kind, _, e in events[:20_000]:
        if kind == "impression":
            assert isinstance(e["cost_micros"], int) and e["cost_micros"] > 0
            if not e["clicked"]:
                assert e["click_delay_ms"] == 0 and e["dwell_ms"] == 0 and not e["converted"]
        else:
            assert e["reason"] in FEEDBACK_REASONS or e["reason"] == ""
            assert ("rating" in e) == (e["kind"] == "satisfaction")


def test_baseline_rates_are_realistic(run):
    cfg, _, events, _ = run
    imps = [e for k, _, e in events if k == "impression"]
    expected = cfg.base_rate_per_s * cfg.duration_s
    assert 0.5 * expected < len(imps) < 1.5 * expected  # diurnal +-40 %
    ctr = sum(e["clicked"] for e in imps) / len(imps)
    assert 0.003 < ctr < 0.06
    first_incident = min(t["start_ms"] for t in ground_truth(cfg))
    clean = [e for e in imps if e["event_time"] < first_incident]
    assert len(clean) > 10_000
    assert len({e["user_id"] for e in clean}) > 0.99 * len(clean)
    clicks = [e for e in clean if e["clicked"]]
    assert sum(e["click_delay_ms"] < 300 for e in clicks) < 0.03 * len(clicks)
    assert sum(e["dwell_ms"] < 1000 for e in clicks) < 0.05 * len(clicks)
    assert len({e["region"] for e in imps}) > 5 and len({e["placement"] for e in imps}) > 3


def test_ground_truth_matches_injected(run):
    cfg, _, events, truth = run
    assert set(truth) == set(KINDS)
    for kind, t in truth.items():
        assert t["expected_alert"] is INCIDENTS[kind].expected_alert
        assert t["expected_alert"] is (not kind.startswith("benign"))
        start_s, duration_s = ((CLOAK_START_S, CLOAK_DURATION_S) if kind == "cloaking"
                               else (INC_START_S, INC_DURATION_S))
        assert t["start_ms"] == cfg.start_ms + start_s * 1000
        assert t["end_ms"] == t["start_ms"] + duration_s * 1000
        assert t["end_ms"] <= t["signal_end_ms"] <= cfg.end_ms
        assert t["description"].startswith(kind)
    assert len({t["advertiser_id"] for t in truth.values()}) == len(truth)


def test_auto_plan_fractions_warmup_and_no_overlap():
    cfg = SimConfig(seed=3, advertisers=200, duration_s=7200)
    truth = ground_truth(cfg)
    bad = [t for t in truth if t["expected_alert"]]
    benign = [t for t in truth if not t["expected_alert"]]
    assert len(bad) == 20 and len(benign) == 10
    assert {t["kind"] for t in bad} == {k for k, v in INCIDENTS.items() if v.expected_alert}
    assert {t["kind"] for t in benign} == {"benign_launch", "benign_seasonal"}
    counts = collections.Counter(t["kind"] for t in bad)
    assert max(counts.values()) - min(counts.values()) <= 1  # round-robin
    sparse = {p["advertiser_id"] for p in population(cfg) if p["sparse"]}
    assert len(sparse) == 10
    for t in truth:
        assert t["advertiser_id"] not in sparse
        assert t["start_ms"] >= cfg.start_ms + 0.3 * 7200_000
        assert t["end_ms"] <= cfg.end_ms - 0.1 * 7200_000
        assert 15 * 60_000 <= t["end_ms"] - t["start_ms"] <= 40 * 60_000
        assert t["start_ms"] % 60_000 == 0
    assert len({t["advertiser_id"] for t in truth}) == len(truth)
    assert ground_truth(SimConfig(seed=3, advertisers=50, incidents="none")) == []


def test_explicit_overlap_rejected():
    specs = (IncidentSpec("click_spam", advertiser=0, start_s=100, duration_s=600),
             IncidentSpec("scam_ad", advertiser=0, start_s=500, duration_s=600))
    with pytest.raises(ValueError, match="overlap"):
        ground_truth(SimConfig(advertisers=3, duration_s=3600, incidents=specs))


def test_click_spam_visible(run):
    _, _, events, truth = run
    s = Stats(events, truth["click_spam"])
    assert Stats.ctr(s.imps_during) > 4 * Stats.ctr(s.imps_before)
    clicks = [e for e in s.imps_during if e["clicked"]]
    assert sum(e["click_delay_ms"] < 300 for e in clicks) > 0.7 * len(clicks)
    assert sum(e["dwell_ms"] < 1000 for e in clicks) > 0.7 * len(clicks)


def test_bot_burst_visible(run):
    _, _, events, truth = run
    s = Stats(events, truth["bot_burst"])
    rate_before = len(s.imps_before) / s.before_s
    rate_during = len(s.imps_during) / s.during_s
    assert rate_during > 4 * rate_before
    users = collections.Counter(e["user_id"] for e in s.imps_during)
    top = sum(c for _, c in users.most_common(truth["bot_burst"]["params"]["pool_size"]))
    assert top > 0.75 * len(s.imps_during)
    assert len(users) < 0.3 * len(s.imps_during)
    regions = collections.Counter(e["region"] for e in s.imps_during)
    assert regions.most_common(1)[0][1] > 0.4 * len(s.imps_during)


def test_scam_ad_visible(run):
    _, _, events, truth = run
    s = Stats(events, truth["scam_ad"])
    rep_before = sum(e["kind"] == "report" for e in s.fb_before) / len(s.imps_before)
    reports = [e for e in s.fb_during if e["kind"] == "report"]
    assert len(reports) / len(s.imps_during) > 10 * max(rep_before, 1e-4)
    assert sum(e["reason"] in ("scam", "misleading") for e in reports) > 0.7 * len(reports)
    hides_before = sum(e["kind"] == "hide" for e in s.fb_before) / len(s.imps_before)
    hides = sum(e["kind"] == "hide" for e in s.fb_during) / len(s.imps_during)
    assert hides > 2.5 * hides_before


def test_cloaking_visible(run):
    cfg, _, events, truth = run
    t = truth["cloaking"]
    s = Stats(events, t, hi_ms=cfg.end_ms)  # complaints trail the conversions
    bad = ("not_received", "counterfeit")

    def complaints(fb):
        return sum(e["kind"] in ("complaint", "refund_request") and e["reason"] in bad
                   for e in fb)

    conversions_before = sum(e["converted"] for e in s.imps_before)
    conversions = sum(e["converted"] for e in s.imps_during)
    assert conversions / len(s.imps_during) > 1.5 * conversions_before / len(s.imps_before)
    assert complaints(s.fb_during) > 0.25 * conversions
    assert complaints(s.fb_before) <= 0.05 * conversions_before + 1
    ratings = [e["rating"] for e in s.fb_during if e["kind"] == "satisfaction"]
    assert ratings and sum(r <= 2 for r in ratings) > 0.5 * len(ratings)
    before = [e["rating"] for e in s.fb_before if e["kind"] == "satisfaction"]
    assert sum(r <= 2 for r in before) < 0.3 * max(len(before), 1)
    reports = [e for e in s.fb_during if e["kind"] == "report"
               and e["event_time"] < t["end_ms"] + 300_000]
    assert sum(e["reason"] in ("misleading", "scam", "counterfeit") for e in reports) >= 3


def _profile(cfg, advertiser_id):
    return next(p for p in population(cfg) if p["advertiser_id"] == advertiser_id)


def _near(observed, expected):
    """Within binomial/Poisson noise (4 sigma) of the expected count."""
    return abs(observed - expected) <= 4 * expected ** 0.5 + 3


def test_slow_ramp_rises_gradually(run):
    cfg, _, events, truth = run
    s = Stats(events, truth["slow_ramp"])
    ctr = _profile(cfg, truth["slow_ramp"]["advertiser_id"])["ctr"]
    third = len(s.imps_during) // 3
    first, last = s.imps_during[:third], s.imps_during[-third:]
    assert _near(sum(e["clicked"] for e in first), ctr * third * (1 + 4 / 6))
    assert _near(sum(e["clicked"] for e in last), ctr * third * (1 + 4 * 5 / 6))
    assert Stats.ctr(last) > 2 * Stats.ctr(first)


def test_incident_library_params():
    base = dict(population(SimConfig(seed=1, advertisers=3, incidents="none"))[0])
    del base["advertiser_id"], base["sparse"], base["campaigns"]

    def applied(kind, progress, **x):
        p = simulate.Params(**base)
        params = INCIDENTS[kind].draw(__import__("random").Random(1))
        params.update(x)
        INCIDENTS[kind].apply(p, progress, params)
        return p.as_dict()

    ramp = [applied("slow_ramp", t) for t in (0.0, 0.5, 0.999)]
    assert [round(r["report"] / base["report"], 1) for r in ramp] == [1.0, 3.0, 5.0]
    assert [round(r["ctr"] / base["ctr"], 1) for r in ramp] == [1.0, 3.0, 5.0]
    spam = applied("click_spam", 0.5, ctr_x=8.0)
    assert spam["ctr"] == pytest.approx(8 * base["ctr"]) and spam["fast_share"] == 0.875
    scam = applied("scam_ad", 0.5, report_x=30.0)
    assert scam["report"] == pytest.approx(30 * base["report"]) and scam["scam_share"] > 0.8
    bot = applied("bot_burst", 0.5, volume_x=10.0, pool_size=7)
    assert bot["volume"] == 10.0 and bot["bot_share"] == 0.9 and bot["bot_size"] == 7
    cloak = applied("cloaking", 0.5)
    assert cloak["cloaked"] == 1.0 and cloak["complaint"] >= 0.25 and cloak["refund"] >= 0.2
    rates = ("ctr", "cvr", "fast_share", "report", "hide", "not_interested", "complaint",
             "refund", "survey", "click_report", "scam_share", "cloaked", "bot_share")
    for kind in ("benign_launch", "benign_seasonal"):
        assert not INCIDENTS[kind].expected_alert
        for t in (0.05, 0.25, 0.75):
            p = applied(kind, t)
            assert {k: p[k] for k in rates} == {k: base[k] for k in rates}
            assert p["volume"] != 1.0
    swing = [applied("benign_seasonal", t, swing_x=3.0, sign=1)["volume"]
             for t in (0.25, 0.75)]
    assert swing == pytest.approx([3.0, 1 / 3])
    assert applied("benign_launch", 0.5, volume_x=4.0)["launch_share"] == 0.75


@pytest.mark.parametrize("kind", ["benign_launch", "benign_seasonal"])
def test_benign_lookalikes_keep_rates_normal(run, kind):
    cfg, _, events, truth = run
    s = Stats(events, truth[kind])
    p = _profile(cfg, truth[kind]["advertiser_id"])
    n = len(s.imps_during)
    assert _near(sum(e["clicked"] for e in s.imps_during), p["ctr"] * n)
    fast = sum(e["click_delay_ms"] < 300 for e in s.imps_during if e["clicked"])
    assert fast <= 0.05 * sum(e["clicked"] for e in s.imps_during) + 1
    assert len({e["user_id"] for e in s.imps_during}) > 0.95 * n
    reports = sum(e["kind"] == "report" for e in s.fb_during)
    assert reports <= 3 * (p["report"] + p["ctr"] * p["click_report"]) * n + 5
    if kind == "benign_launch":
        assert n / s.during_s > 2.5 * len(s.imps_before) / s.before_s
        new = {e["campaign_id"] for e in s.imps_during} - {e["campaign_id"] for e in s.imps_before}
        assert len(new) == 1
        share = sum(e["campaign_id"] in new for e in s.imps_during) / n
        assert share > 0.5


def test_sparse_advertisers_are_sparse():
    cfg = SimConfig(seed=2, advertisers=40, duration_s=600, base_rate_per_s=100,
                    incidents="none", sparse_fraction=0.1)
    sparse = {p["advertiser_id"] for p in population(cfg) if p["sparse"]}
    assert len(sparse) == 4
    per_adv = collections.Counter(orjson.loads(v)["advertiser_id"]
                                  for k, _, v in generate(cfg) if k == "impression")
    assert all(per_adv[a] <= 40 for a in sparse)  # <= ~2 per minute over 10 minutes


def test_write_jsonl_bounded_by_max_events(tmp_path):
    cfg = SimConfig(seed=1, advertisers=20, duration_s=600, base_rate_per_s=100)
    paths = [tmp_path / "imp.jsonl", tmp_path / "fb.jsonl", tmp_path / "truth.jsonl"]
    res = write_jsonl(cfg, *map(str, paths), max_events=1500)
    lines = [p.read_bytes().splitlines() for p in paths]
    assert res["events"] == 1500 == len(lines[0]) + len(lines[1])
    assert [orjson.loads(x) for x in lines[2]] == ground_truth(cfg)
    expected = [v for _, _, v in generate(cfg)][:1500]
    assert sorted(lines[0] + lines[1]) == sorted(expected)


class FakeProducer:
    def __init__(self, buffer_errors: int = 2):
        self.messages: list[tuple[str, bytes, bytes]] = []
        self.buffer_errors = buffer_errors
        self.polls = 0

    def produce(self, topic, value, key, on_delivery=None):
        if self.buffer_errors:
            self.buffer_errors -= 1
            raise BufferError("queue full")
        self.messages.append((topic, key, value))
        on_delivery(None, None)

    def poll(self, timeout=0):
        self.polls += 1
        return 0

    def flush(self, timeout=None):
        return 0


def test_produce_bounded_and_handles_buffer_error():
    cfg = SimConfig(seed=1, advertisers=20, duration_s=600, base_rate_per_s=100)
    fake = FakeProducer()
    res = produce(cfg, "unused:9092", "imp", "fb", max_events=2500, max_seconds=30,
                  producer=fake)
    assert res["events"] == 2500 == len(fake.messages) == res["delivered"]
    assert res["stopped_by"] == "max_events" and res["failed"] == 0
    expected = list(generate(cfg))[:2500]
    assert [(k, v) for _, k, v in fake.messages] == [(k, v) for _, k, v in expected]
    assert {t for t, _, _ in fake.messages} == {"imp", "fb"}
    assert all((t == "imp") == (e[0] == "impression") for (t, _, _), e in
               zip(fake.messages, expected))


def test_produce_rate_limit():
    cfg = SimConfig(seed=1, advertisers=5, duration_s=600, base_rate_per_s=50)
    t0 = time.monotonic()
    res = produce(cfg, "x", "imp", "fb", rate=2000, max_events=600, producer=FakeProducer(0))
    assert res["events"] == 600 and time.monotonic() - t0 > 0.25


def test_live_config_keeps_event_time_behind_wall_clock():
    now = 1_800_000_123_456
    cfg = live_config(SimConfig(duration_s=6000), speedup=10, now_ms=now)
    assert cfg.start_ms % 60_000 == 0
    assert cfg.start_ms <= now - 5400_000 < cfg.start_ms + 60_000
    assert cfg.end_ms <= now + 600_000  # ends when the wall clock reaches it (600 s later)
    assert live_config(SimConfig(), 1.0, now).start_ms == now - now % 60_000


def test_parse_incidents():
    assert parse_incidents("auto") == "auto" and parse_incidents("none") == "none"
    specs = parse_incidents("click_spam:2,bot_burst")
    assert [s.kind for s in specs] == ["click_spam", "click_spam", "bot_burst"]
    with pytest.raises(ValueError):
        parse_incidents("nope")


def test_cli_out_dir(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    simulate.add_arguments(parser)
    args = parser.parse_args(["--advertisers", "8", "--duration", "300", "--base-rate", "50",
                              "--incidents", "click_spam", "--out-dir", str(tmp_path)])
    assert simulate.run(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("simulate: ") and out.count("\n") == 1
    truth = [orjson.loads(x) for x in (tmp_path / "truth.jsonl").read_bytes().splitlines()]
    assert [t["kind"] for t in truth] == ["click_spam"]
    assert (tmp_path / "impressions.jsonl").stat().st_size > 0
    args = parser.parse_args(["--duration", "60"])
    assert simulate.run(args) == 2  # neither --bootstrap nor --out-dir
