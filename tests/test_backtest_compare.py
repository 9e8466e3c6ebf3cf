"""Champion vs challenger on the same replay: agreement and volume, side by side."""

from __future__ import annotations

from pathlib import Path

import orjson

from app.cli import main
from riskstream.backtest import compare_specs, read_lines, replay
from riskstream.engine import ModelConfig
from riskstream.simulate import IncidentSpec, SimConfig, write_jsonl


def _files(tmp_path: Path) -> dict[str, Path]:
    cfg = SimConfig(seed=5, advertisers=20, duration_s=5400, base_rate_per_s=8,
                    incidents=(IncidentSpec("bot_burst", start_s=3000, duration_s=900),))
    paths = {n: tmp_path / f"{n}.jsonl" for n in ("impressions", "feedback", "truth")}
    write_jsonl(cfg, str(paths["impressions"]), str(paths["feedback"]), str(paths["truth"]))
    return paths


def test_a_spec_agrees_with_itself_and_differs_from_another(tmp_path: Path) -> None:
    paths = _files(tmp_path)
    imps, fbs = read_lines(paths["impressions"]), read_lines(paths["feedback"])
    champion = replay(imps, fbs, model_config=ModelConfig(1, "robust-baseline"))
    same = compare_specs(champion, champion)
    assert same["flagged_windows"]["jaccard"] == 1.0
    assert same["alerted_advertisers"]["champion"] >= 1  # the bot burst alerts
    other = compare_specs(champion, replay(imps, fbs, model_config=ModelConfig(1, "hst")))
    assert other["alerts"]["champion"] == len(champion.alerts())
    assert 0.0 <= other["flagged_windows"]["jaccard"] <= 1.0
    assert set(other["alerted_advertisers"]["only_champion"]) <= {
        a["advertiser_id"] for a in champion.alerts()}


def test_cli_writes_both_specs_and_the_comparison(tmp_path: Path) -> None:
    paths = _files(tmp_path)
    out, report = tmp_path / "alerts.jsonl", tmp_path / "report"
    assert main(["backtest", "--impressions", str(paths["impressions"]), "--feedback",
                 str(paths["feedback"]), "--truth", str(paths["truth"]), "--out", str(out),
                 "--model", "robust-baseline", "--model", "hst", "--report", str(report)]) == 0
    data = orjson.loads((report / "report.json").read_bytes())
    assert set(data["models"]) == {"robust-baseline", "hst"}
    assert "robust-baseline vs hst" in data["comparisons"]
    assert out.exists() and out.with_suffix(".hst.jsonl").exists()
    assert (report / "report-robust-baseline.html").read_text().count("<svg") >= 1
