"""One advertiser at a glance (riskstream.lookup), over the offline replay of a simulated stream
with one click-spam incident: the engine's state plus a board fed with the replay's scores and
alerts, exactly what a worker holds. No broker."""

from __future__ import annotations

import pytest

from riskstream.backtest import partition_for
from riskstream.board import RiskBoard
from riskstream.lookup import BadAdvertiserId, advertiser_lookup, parse_advertiser_id
from riskstream.simulate import ground_truth
from tests.conftest import simulated_case


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    # 20 minutes, click spam from minute 15 to the end: the alert is still open at the end.
    case = simulated_case(tmp_path_factory.mktemp("lookup"), seed=21, advertisers=15,
                          duration_s=1200, spam_start_s=900,
                          diurnal_amplitude=0.0)
    board = RiskBoard()
    for o in case.expected.outputs:
        if o.kind == "score":
            board.add_score(o.record)
        elif o.kind == "alert":
            board.add_alert(o.record)
    (truth,) = ground_truth(case.config)
    return case, board, truth


def lookup(replayed, adv: str) -> dict | None:
    case, board, _truth = replayed
    engine = case.expected.engine
    p = partition_for(adv.encode(), 6)
    return advertiser_lookup(adv, p, engine.peek_state(p, adv), board,
                             enforce_spec=engine.model_config.enforce, served_by="test")


def test_the_incident_advertiser_shows_its_open_alert_with_reasons(replayed) -> None:
    case, _board, truth = replayed
    adv = truth["advertiser_id"]
    doc = lookup(replayed, adv)
    assert doc is not None and doc["sources"] == {"state": True, "board": True}
    (episode,) = doc["open_alerts"]
    mine = [a for a in case.expected.alerts() if a["advertiser_id"] == adv]
    opened, latest = mine[0], [a for a in mine if a["status"] != "resolved"][-1]
    assert opened["status"] == "open" and episode["opened_alert_id"] == opened["alert_id"]
    # the reasons of the episode's latest alert (the opening one, or its escalation)
    assert episode["latest_alert"]["alert_id"] == latest["alert_id"]
    assert episode["reasons"] == latest["reasons"] and episode["reasons"]
    assert episode["kind"] == doc["kind"] == "click_fraud"
    assert doc["severity"] == episode["severity"] == latest["severity"]
    assert doc["recent_alerts"][0]["alert_id"] == mine[-1]["alert_id"]


def test_latest_score_recent_windows_baseline_and_model(replayed) -> None:
    case, _board, truth = replayed
    adv = truth["advertiser_id"]
    doc = lookup(replayed, adv)
    scores = [o.record for o in case.expected.outputs
              if o.kind == "score" and o.record["advertiser_id"] == adv]
    last = scores[-1]
    assert doc["latest"]["window"]["start"] == last["window"]["start"]
    assert doc["latest"]["risk_score"] == pytest.approx(last["risk_score"], abs=1e-6)
    assert doc["latest"]["features"]["ctr"] == pytest.approx(last["metrics"]["ctr"], rel=1e-5)
    recent = doc["recent_windows"]
    assert [w["window_start"] for w in recent] == sorted(w["window_start"] for w in recent)
    assert recent[-1]["window_start"] == last["window"]["start"]
    assert recent[-1]["features"]["ctr"] == pytest.approx(last["metrics"]["ctr"], rel=1e-5)
    # the click spam runs to the end: fast clicks far above this advertiser's own baseline
    # (the baseline is the model's as of now; it is compared on the newest window, here the
    # one the replay left open)
    assert doc["baseline"]["computed_on"].endswith(doc["current_windows"][-1]["window"]
                                                   ["start_iso"])
    rows = doc["baseline"]["features"]
    assert [r["deviation"] for r in rows] == sorted((r["deviation"] for r in rows), reverse=True)
    fast = next(f for f in rows if f["feature"] == "fast_click_share")
    assert last["metrics"]["fast_click_share"] > 5 * fast["baseline"]
    assert doc["model"]["name"] == "robust-baseline" and doc["model"]["windows_seen"] > 0
    assert doc["model"]["scored_by"]["name"] == "robust-baseline"


def test_a_quiet_advertiser_has_no_open_alert(replayed) -> None:
    case, _board, truth = replayed
    quiet = next(st.advertiser_id for st in case.expected.engine.iter_states()
                 if st.advertiser_id != truth["advertiser_id"] and not st.lifecycle)
    doc = lookup(replayed, quiet)
    assert doc["open_alerts"] == [] and doc["severity"] in ("none", "low")


def test_open_windows_show_their_features_so_far() -> None:
    from riskstream.engine import DictStore, EngineConfig, RiskEngine

    engine = RiskEngine(EngineConfig(), DictStore())
    t0 = 1_700_000_000_000
    for i in range(3):
        engine.process({"type": "impression", "event_time": t0 + i, "advertiser_id": "adv-x",
                        "user_id": f"u{i}", "region": "de", "cost_micros": 1000,
                        "clicked": i == 0, "click_delay_ms": 900, "converted": False,
                        "dwell_ms": 5000, "event_id": f"e{i}", "campaign_id": "c",
                        "ad_id": "ad", "placement": "feed"}, partition=0)
    doc = advertiser_lookup("adv-x", 0, engine.peek_state(0, "adv-x"), RiskBoard(),
                            enforce_spec="robust-baseline")
    (w,) = doc["current_windows"]
    assert w["features"]["impressions"] == 3 and w["features"]["clicks"] == 1
    assert doc["latest"] is None and doc["sources"] == {"state": True, "board": False}


def test_unknown_advertiser_is_none(replayed) -> None:
    assert lookup(replayed, "adv-never-seen") is None


def test_advertiser_ids_are_validated_like_input_events() -> None:
    assert parse_advertiser_id("adv-00007") == "adv-00007"
    for bad in ["", "x" * 129, "adv\n1", "tab\there", None, 7]:
        with pytest.raises(BadAdvertiserId):
            parse_advertiser_id(bad)


def test_peek_state_never_changes_what_the_engine_holds(replayed) -> None:
    from riskstream.engine import AdvertiserState, DictStore, EngineConfig, RiskEngine, \
        advertiser_key

    store = DictStore()
    store.put(2, advertiser_key(2, "adv-s"), AdvertiserState("adv-s", 2).dumps())
    engine = RiskEngine(EngineConfig(), store)
    assert engine.peek_state(2, "adv-s").advertiser_id == "adv-s"
    assert engine.active_advertisers() == 0  # read from the store, not loaded into the engine
