"""Cohort warm start (models/cohort.py): warm-started specs judge an advertiser from its first
window, identically in every process, and `riskstream models fit-cohort` rebuilds the
reference deterministically."""

from __future__ import annotations

import gzip
import subprocess
import sys

import pytest

from models import cohort
from models.registry import REGISTRY, ModelSpec, get_spec

WARM = sorted(n for n, s in REGISTRY.items() if s.warm_start)
NORMAL = {"impressions": 120.0, "ctr": 0.02, "fast_click_share": 0.05, "report_rate": 0.0,
          "mean_dwell_ms": 30_000.0, "median_click_delay_ms": 4_000.0}


def test_hst_and_ocsvm_are_warm_started() -> None:
    assert set(WARM) == {"hst", "river-ocsvm"}


@pytest.mark.parametrize("name", WARM)
def test_a_new_model_is_warm_but_young(name: str) -> None:
    spec = get_spec(name)
    warm, cold = spec.create(), spec.factory(**spec.params)
    assert warm.windows_seen == 0  # the decision's warm-up still applies to the advertiser
    # a cold River adapter scores nothing until it has calibrated; the warm one scores at once
    assert cold.score_one(NORMAL) == 0.0
    assert warm.state() != cold.state()
    assert 0.0 <= warm.score_one(NORMAL) <= 1.0


@pytest.mark.parametrize("name", WARM)
def test_warm_models_are_identical_and_independent(name: str) -> None:
    spec = get_spec(name)
    a, b = spec.create(), spec.create()
    assert a.state() == b.state()  # every worker and the replay start from the same state
    for _ in range(5):
        a.learn_one({**NORMAL, "ctr": 0.5})
    assert a.state() != b.state()
    assert spec.create().state() == b.state()  # learning on one copy leaks into no other


def test_cold_specs_are_untouched() -> None:
    made = ModelSpec("t", "1", lambda: "fresh").create()
    assert made == "fresh"


def test_sample_is_spread_filtered_and_bounded() -> None:
    recs = [{"window": {"start": t * 60_000}, "advertiser_id": adv, "flagged": flagged,
             "metrics": {"ctr": float(t)}}
            for t in range(100) for adv, flagged in (("a", False), ("b", False), ("bad", False),
                                                     ("c", True))]
    got = cohort.sample_windows(recs, exclude={"bad"}, limit=50)
    assert len(got) == 50
    assert got[0] == {"ctr": 0.0} and got[-1]["ctr"] >= 97  # the whole range is covered
    assert cohort.sample_windows([{**recs[0], "metrics": {"ctr": float("nan")}}]) == []


def test_reference_bytes_are_deterministic(tmp_path) -> None:
    rows = [{"b": 1.0, "a": 2.0}, {"a": 0.5}]
    p1, p2 = tmp_path / "1.gz", tmp_path / "2.gz"
    assert cohort.write_reference(rows, p1) == 2
    cohort.write_reference(rows, p2)
    assert p1.read_bytes() == p2.read_bytes()
    assert gzip.decompress(p1.read_bytes()).splitlines()[0] == b'{"a":2.0,"b":1.0}'
    assert cohort.load_reference(p1) == ({"a": 2.0, "b": 1.0}, {"a": 0.5})
    assert cohort.spread(tuple(range(10)), 3) == [0, 3, 6]


def test_packaged_reference_is_normal_traffic() -> None:
    ref = cohort.load_reference()
    assert 500 <= len(ref) <= cohort.DEFAULT_SAMPLE
    assert all("ctr" in x and 0.0 <= x["ctr"] <= 1.0 for x in ref)


def test_fit_cohort_command(tmp_path) -> None:
    sim = subprocess.run(
        [sys.executable, "-m", "app.cli", "simulate", "--out-dir", str(tmp_path),
         "--advertisers", "8", "--duration", "1800", "--base-rate", "8", "--seed", "3",
         "--incidents", "none"], capture_output=True, text=True, timeout=120)
    assert sim.returncode == 0, sim.stderr
    out = tmp_path / "ref.jsonl.gz"
    run = subprocess.run(
        [sys.executable, "-m", "app.cli", "models", "fit-cohort", "--impressions",
         str(tmp_path / "impressions.jsonl"), "--feedback", str(tmp_path / "feedback.jsonl"),
         "--out", str(out), "--sample", "40"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "fit-cohort: 40 reference windows" in run.stdout
    assert len(cohort.load_reference(out)) == 40
    missing = subprocess.run([sys.executable, "-m", "app.cli", "models", "fit-cohort"],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "--impressions" in missing.stderr
