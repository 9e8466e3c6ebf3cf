"""Cohort warm start: a new per-advertiser model starts from what the cohort looks like.

A detector that starts from zero is blind for its first windows: River's HalfSpaceTrees scores
nothing until its first reference window (``window_size`` windows) is full, and every
calibrated adapter needs some raw scores before its risk means anything. On a new advertiser,
or when ML engineers add a shadow challenger to a running fleet, that is hours of silence.

So a spec registered with ``warm_start=True`` creates each advertiser's model as a copy of a
*prototype* that has already learned a reference sample of normal windows
(``models/cohort/reference-windows.jsonl.gz``: window feature vectors of advertisers with no
incident, fitted by ``riskstream models fit-cohort`` from recorded or simulated traffic).
The copy then adapts to its own advertiser window by window; ``windows_seen`` counts only the
advertiser's own windows, so the decision's warm-up (a stricter threshold for young models)
still applies.

The prototype is a pure function of the spec and the reference file, built once per process:
every worker and the offline replay start advertisers from the same state, so live alerts
still equal the replay's. Changing the reference file changes every new model: bump the
spec's version with it (old states of the previous version then restart from the new cohort).
"""

from __future__ import annotations

import gzip
import math
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable

import orjson

REFERENCE_FILE = Path(__file__).with_name("cohort") / "reference-windows.jsonl.gz"
DEFAULT_SAMPLE = 1500


def load_reference(path: Path | str = REFERENCE_FILE) -> tuple[dict[str, float], ...]:
    """The reference windows (feature dicts), in file order."""
    with gzip.open(path, "rb") as fh:
        return tuple(orjson.loads(line) for line in fh if line.strip())


def write_reference(windows: Iterable[dict[str, float]], path: Path | str) -> int:
    """Write feature dicts as gzipped JSON lines (mtime 0: the same windows give the same
    bytes). Returns the count."""
    n = 0
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as fh:
        for x in windows:
            fh.write(orjson.dumps(x, option=orjson.OPT_SORT_KEYS) + b"\n")
            n += 1
    return n


def spread(windows: tuple[dict[str, float], ...], n: int) -> list[dict[str, float]]:
    """``n`` windows evenly spread over the sequence, in order (all if ``n`` >= len)."""
    if n >= len(windows):
        return list(windows)
    return [windows[i * len(windows) // n] for i in range(n)]


def sample_windows(score_records: Iterable[dict[str, Any]], *, exclude: set[str] = frozenset(),
                   limit: int = DEFAULT_SAMPLE) -> list[dict[str, float]]:
    """A deterministic, evenly spread sample of normal windows from ``risk-scores`` records:
    unflagged windows of advertisers not in ``exclude``, ordered by (window start,
    advertiser), ``limit`` of them evenly spread so that the whole time range is covered (the
    prototype learns them in that order)."""
    rows = sorted(
        ((r["window"]["start"], r["advertiser_id"], r["metrics"]) for r in score_records
         if not r["flagged"] and r["advertiser_id"] not in exclude
         and all(math.isfinite(v) for v in r["metrics"].values())),
        key=lambda t: (t[0], t[1]))
    return [dict(m) for _, _, m in spread(tuple(rows), limit)]


@lru_cache(maxsize=None)
def prototype_state(name: str, version: str, factory: Callable[..., Any],
                    params_items: tuple[tuple[str, Any], ...], windows: int,
                    reference: str = str(REFERENCE_FILE)) -> dict[str, Any]:
    """The state of a fresh model of this spec after learning ``windows`` reference windows
    (cached per spec and version: built once per process). The count is the weight of the
    cohort against the advertiser's own history: detectors that never forget (River's
    StandardAbsoluteDeviation keeps running moments) need few, so the advertiser's windows
    soon outweigh the cohort's."""
    model = factory(**dict(params_items))
    for x in spread(load_reference(reference), windows):
        model.learn_one(x)
    start = getattr(model, "start_advertiser", None)
    if start is not None:
        start()  # windows_seen counts the advertiser's own windows from here
    return model.state()


def warm_model(name: str, version: str, factory: Callable[..., Any],
               params: dict[str, Any], windows: int) -> Any:
    """A new model of the spec, restored from its cohort prototype."""
    state = prototype_state(name, version, factory, tuple(sorted(params.items())), windows)
    model = factory(**params)
    model.load_state(state)
    return model
