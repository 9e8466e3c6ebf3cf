"""The risk board's data (riskstream.board): scores and alerts in, ranked pages and an alert feed
out. Pure and fast: no broker, a fake clock for the ranking cache."""

from __future__ import annotations

import pytest

from riskstream.board import (HISTORY, MAX_PAGE, SERIES, BoardFilterError, RiskBoard,
                              incident_kind, parse_filter)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def score(adv: str, minute: int, risk: float, *, flagged: bool = False, severity: str | None =
          None, rules: tuple[str, ...] = (), **metrics: float) -> dict:
    start = 1_700_000_000_000 + minute * 60_000
    return {"advertiser_id": adv, "window": {"start": start, "end": start + 60_000},
            "model": {"name": "robust-baseline", "version": "3", "config_version": 0},
            "risk_score": risk, "flagged": flagged, "severity": severity if flagged else None,
            "rules": list(rules), "metrics": {"impressions": 100.0, "ctr": 0.02, **metrics}}


def alert(adv: str, minute: int, status: str, severity: str, codes: tuple[str, ...],
          alert_id: str | None = None) -> dict:
    start = 1_700_000_000_000 + minute * 60_000
    return {"alert_id": alert_id or f"ra1-{adv}-{minute}-{status}", "advertiser_id": adv,
            "status": status, "severity": severity, "risk_score": 0.99,
            "detector": "risk:robust-baseline",
            "window": {"start": start, "end": start + 60_000,
                       "start_iso": "x", "end_iso": "y"},
            "model": {"name": "robust-baseline", "version": "3", "config_version": 0},
            "reasons": [{"type": "feature", "code": c, "message": f"{c} msg"} for c in codes],
            "episode": {}, "emitted_at": "z"}


def test_riskiest_first_and_open_alerts_outrank_any_score() -> None:
    b = RiskBoard(clock=Clock())
    for i, risk in enumerate([0.1, 0.7, 0.95, 0.3]):
        b.add_score(score(f"adv-{i}", 0, risk))
    b.add_alert(alert("adv-3", 0, "open", "medium", ("ctr_above_baseline",)))
    rows = b.top(10)["rows"]
    assert [r["advertiser_id"] for r in rows] == ["adv-3", "adv-2", "adv-1", "adv-0"]
    assert rows[0]["open_alert"]["severity"] == "medium" and rows[0]["severity"] == "medium"
    assert rows[0]["kind"] == "click_fraud"


def test_a_resolved_alert_drops_the_advertiser_back_to_its_score() -> None:
    clock = Clock()
    b = RiskBoard(clock=clock)
    b.add_score(score("adv-a", 0, 0.2))
    b.add_score(score("adv-b", 0, 0.5))
    b.add_alert(alert("adv-a", 0, "open", "high", ("report_rate_above_floor",)))
    assert b.top(1)["rows"][0]["advertiser_id"] == "adv-a"
    b.add_alert(alert("adv-a", 30, "resolved", "high", ()))
    clock.now += 1.5  # past the ranking cache
    assert b.top(1)["rows"][0]["advertiser_id"] == "adv-b"
    assert b.track("adv-a").alert is None


def test_the_ranking_is_cached_for_about_a_second() -> None:
    clock = Clock()
    b = RiskBoard(clock=clock, cache_s=1.0)
    b.add_score(score("adv-a", 0, 0.5))
    assert b.top(5)["total"] == 1
    b.add_score(score("adv-b", 0, 0.9))
    assert b.top(5)["total"] == 1  # same second: the cached ranking
    clock.now = 1.01
    page = b.top(5)
    assert page["total"] == 2 and page["rows"][0]["advertiser_id"] == "adv-b"


def test_filters_by_severity_and_kind() -> None:
    b = RiskBoard(clock=Clock())
    b.add_score(score("spam", 0, 0.99, flagged=True, severity="high",
                      rules=("click_spam_fast_clicks",)))
    b.add_score(score("scam", 0, 0.9, flagged=True, severity="medium", rules=("scam_reports",)))
    b.add_score(score("calm", 0, 0.05))
    high = b.top(10, severities=frozenset({"high"}))
    assert [r["advertiser_id"] for r in high["rows"]] == ["spam"] and high["total"] == 1
    scam = b.top(10, kinds=frozenset({"scam_or_harm"}))
    assert [r["advertiser_id"] for r in scam["rows"]] == ["scam"]
    calm = b.top(10, severities=frozenset({"none"}))
    assert [r["advertiser_id"] for r in calm["rows"]] == ["calm"]
    assert b.top(10, severities=frozenset({"high"}), kinds=frozenset({"complaints"}))["rows"] == []


def test_pages_never_exceed_the_page_size() -> None:
    b = RiskBoard(clock=Clock())
    for i in range(300):
        b.add_score(score(f"adv-{i:03d}", 0, i / 1000))
    first = b.top(10_000)
    assert len(first["rows"]) == MAX_PAGE and first["total"] == 300
    second = b.top(100, offset=100)
    assert second["rows"][0]["advertiser_id"] == "adv-199"
    assert [r["advertiser_id"] for r in b.top(2, offset=298)["rows"]] == ["adv-001", "adv-000"]


def test_history_is_bounded_and_ordered_for_the_sparkline() -> None:
    b = RiskBoard(clock=Clock())
    for m in range(HISTORY + 5):
        b.add_score(score("adv-a", m, m / 100, ctr=m / 1000))
    h = b.track("adv-a").history()
    assert len(h["window_start"]) == HISTORY and set(h) == {"window_start", *SERIES}
    assert h["window_start"] == sorted(h["window_start"])
    assert h["risk_score"][-1] == pytest.approx((HISTORY + 4) / 100, rel=1e-6)
    assert h["ctr"][0] == pytest.approx(5 / 1000, rel=1e-6)


def test_replayed_scores_and_duplicate_alerts_are_ignored() -> None:
    b = RiskBoard(clock=Clock())
    assert b.add_score(score("adv-a", 5, 0.3))
    assert not b.add_score(score("adv-a", 5, 0.3))   # at-least-once redelivery
    assert not b.add_score(score("adv-a", 4, 0.9))   # an older window (replay)
    assert b.track("adv-a").risk == pytest.approx(0.3)
    a = alert("adv-a", 5, "open", "high", ("ctr_above_baseline",))
    assert b.add_alert(a) and not b.add_alert(dict(a))
    assert len(b.alerts_after(0)["alerts"]) == 1 and b.stats["duplicates"] == 3


def test_memory_is_bounded_by_evicting_the_least_recently_scored() -> None:
    b = RiskBoard(max_advertisers=3, clock=Clock())
    for i in range(5):
        b.add_score(score(f"adv-{i}", 0, 0.5))
        b.add_alert(alert(f"adv-{i}", 0, "open", "low", ("ctr_above_baseline",)))
    assert len(b) == 3 and b.track("adv-0") is None and b.alerts_of("adv-0") == []
    assert b.track("adv-4") is not None and b.stats["evicted"] == 2


def test_the_alert_feed_returns_only_what_is_new_newest_first() -> None:
    b = RiskBoard(max_alerts=3, clock=Clock())
    for m in range(2):
        b.add_alert(alert(f"adv-{m}", m, "open", "high", ("scam_reports",)))
    feed = b.alerts_after(0)
    assert [a["advertiser_id"] for a in feed["alerts"]] == ["adv-1", "adv-0"]
    for m in range(2, 6):
        b.add_alert(alert(f"adv-{m}", m, "open", "low", ("ctr_above_baseline",)))
    new = b.alerts_after(feed["last_seq"])
    # only the 3 the bounded feed still holds, newest first
    assert [a["advertiser_id"] for a in new["alerts"]] == ["adv-5", "adv-4", "adv-3"]
    assert b.alerts_after(new["last_seq"])["alerts"] == []
    only_scam = b.alerts_after(0, kinds=frozenset({"scam_or_harm"}))["alerts"]
    assert only_scam == []  # adv-0/1 left the bounded feed
    assert new["alerts"][0]["reasons"] == ["ctr_above_baseline msg"]


def test_incident_kinds_from_reason_codes() -> None:
    assert incident_kind(["fast_click_share_above_baseline"]) == "click_fraud"
    assert incident_kind(["impressions_per_user_above_baseline"]) == "bot_traffic"
    assert incident_kind(["complaints_per_conversion"]) == "complaints"
    assert incident_kind(["returned_to_normal"]) == "other"


def test_unknown_filter_values_are_rejected_with_the_known_ones() -> None:
    with pytest.raises(BoardFilterError, match="known: low, medium, high, critical, none"):
        parse_filter("high,urgent", ("low", "medium", "high", "critical", "none"), "severity")


def test_summary_counts_every_advertiser() -> None:
    b = RiskBoard(clock=Clock())
    b.add_score(score("a", 0, 0.99, flagged=True, severity="critical"))
    b.add_score(score("b", 0, 0.1))
    b.add_alert(alert("b", 0, "open", "high", ("scam_reports",)))
    s = b.summary()
    assert s["advertisers"] == 2 and s["open_alerts"] == 1
    assert s["by_severity"]["critical"] == 1 and s["by_severity"]["high"] == 1


def test_the_scale_bench_runs_and_a_page_stays_small() -> None:
    from app.board_bench import run

    res = run(advertisers=3000, windows=2, repeats=2)
    assert res["score_records"] == 6000 and res["bytes_per_advertiser"] > 0
    assert res["page_json_bytes"] < 64 * 1024  # 25 rows with sparklines, whatever the total


def test_each_board_instance_names_itself_so_a_browser_can_restart_its_feed() -> None:
    a, b = RiskBoard(clock=Clock()), RiskBoard(clock=Clock())
    assert a.alerts_after(0)["board"] == a.alerts_after(5)["board"] != b.alerts_after(0)["board"]
