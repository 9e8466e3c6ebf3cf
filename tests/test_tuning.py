"""riskstream.tuning: replaying recorded window features gives exactly the engine's alerts."""

from __future__ import annotations

from functools import lru_cache

import orjson
import pytest

from app.factory import engine_config
from app.settings import Settings
from models import baseline
from riskstream.simulate import SimConfig, generate, ground_truth, write_truth
from riskstream.tuning import (
    capture,
    constants,
    engine_alert_summary,
    main,
    read_features,
    replay_features,
    write_features,
)

# 40 advertisers, 2 h of event time (past the drifts' 60-window warm-up), one incident of each
# alerting kind and a benign launch: a few dozen alerts, opens, escalations and resolves.
SIM = SimConfig(seed=41, advertisers=40, duration_s=7200, base_rate_per_s=40,
                incidents=("click_spam", "scam_ad", "cloaking", "slow_ramp", "bot_burst",
                           "benign_launch"))
ECFG = engine_config(Settings())


@lru_cache(maxsize=None)
def captured():
    imps, fbs = [], []
    for kind, _key, value in generate(SIM):
        (imps if kind == "impression" else fbs).append(value)
    return capture(imps, fbs, engine_config=ECFG, partitions=6)


def key(a: dict) -> tuple:
    return a["advertiser_id"], a["window"]["start"], a["status"]


def engine_alerts() -> list[dict]:
    return sorted((engine_alert_summary(a) for a in captured()[1].alerts()), key=key)


def test_capture_records_every_closed_window_once():
    windows, result = captured()
    assert len(windows) == result.engine.stats["windows_closed"]
    assert len({(adv, start) for adv, start, _end, _x in windows}) == len(windows)


def test_feature_replay_gives_exactly_the_engines_alerts():
    windows, _result = captured()
    expected = engine_alerts()
    statuses = {a["status"] for a in expected}
    assert {"open", "resolved"} <= statuses, statuses  # the lifecycle is exercised
    assert sorted(replay_features(windows, decision=ECFG.decision), key=key) == expected


def test_features_file_round_trips_exactly(tmp_path):
    windows, _result = captured()
    path = tmp_path / "features.jsonl"
    write_features(path, windows, ECFG)
    header, loaded = read_features(path)
    assert header["window_ms"] == ECFG.window_ms
    assert loaded == windows
    assert sorted(replay_features(loaded, decision=ECFG.decision), key=key) == engine_alerts()


def test_constants_change_the_replay_and_are_restored():
    windows, _result = captured()
    with constants([("models.baseline", "CUSUM_RATIOS", {})]):
        assert baseline.CUSUM_RATIOS == {}
        without_drift = replay_features(windows, decision=ECFG.decision)
    assert baseline.CUSUM_RATIOS == {"ctr": 3.0, "deception_rate": 10.0}
    assert sorted(without_drift, key=key) != engine_alerts()
    with pytest.raises(AttributeError):
        with constants([("models.baseline", "NO_SUCH_CONSTANT", 1)]):
            pass


def test_replay_command_evaluates_against_the_truth(tmp_path, capsys):
    windows, _result = captured()
    write_features(tmp_path / "f.jsonl", windows, ECFG)
    write_truth(ground_truth(SIM), str(tmp_path / "truth.jsonl"))
    assert main(["replay", "--features", str(tmp_path / "f.jsonl"),
                 "--truth", str(tmp_path / "truth.jsonl"), "--set", "CUSUM_OFFSET=3.0",
                 "--json", str(tmp_path / "ev.json"), "--alerts", str(tmp_path / "a.jsonl")]) == 0
    ev = orjson.loads((tmp_path / "ev.json").read_bytes())
    assert ev["incidents"] == 5 and ev["benign_lookalikes"] == 1
    assert f"recall {ev['detected']}/5" in capsys.readouterr().out
    replayed = [orjson.loads(line) for line in (tmp_path / "a.jsonl").read_bytes().splitlines()]
    assert sorted(replayed, key=key) == engine_alerts()
