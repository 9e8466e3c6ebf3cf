"""Generic series mode: online detectors over one metric, scored row by row, and their evaluation.

``riskstream backtest --series FILE.csv --out SCORES.csv`` reads ``timestamp,value[,label]`` (one
file is one entity's metric; header names in any case, values may be quoted; an empty value or
``nan``/``null``/``NA`` is a missing point) and writes ``timestamp,value,anomaly_score`` with a
risk score in [0, 1] per row. ``--series DIR`` does the same for every ``*.csv`` under DIR (the
output tree mirrors the input under ``--out``). With labels it prints point- and event-level
precision/recall/F1 per ``--model`` spec and, with ``--report DIR``, writes ``report.json``.
See docs/series-mode.md for the figures on the Cloud Monitoring dataset.

The harness is the same for every spec (``score_series``): score before learn, and a point whose
score reaches the spec's threshold is not learned (a detector may keep it in short-horizon state
through an optional ``observe_flagged``). Missing values score 0 and are neither learned nor
observed.

Specs (``SERIES_REGISTRY``; ``--model`` takes these names):

* ``series-robust`` (ours, :class:`RobustSeries`): a robust (Huber-clipped) exponentially
  weighted level, time-of-day profile and scale of ``asinh(value / c)`` -- logarithmic for large
  values, linear near zero and for negatives -- with a variance floor (and Poisson variance for
  integer counts), plus a decayed two-sided CUSUM of the standardised residuals for level shifts,
  through the repository's logistic ``calibrate``.
* ``river-hst``: ``river.anomaly.HalfSpaceTrees`` on ``{"value": x}`` scaled by
  ``river.preprocessing.MinMaxScaler``.
* ``river-gaussian``: ``river.anomaly.GaussianScorer`` (``score_one(None, y)``) over a rolling
  window.

The River detectors' raw scores go to [0, 1] through :class:`Calibrated` (running quantile, EW
z-score or raw); each baseline's calibration, learning mode and settings were picked by the same
procedure as every threshold: best event F1 on the tuning half of the dataset.

>>> rows = [(str(i), 10.0 + (i % 3), None) for i in range(200)] + [("200", 60.0, None)]
>>> scores = score_series(rows, "series-robust")
>>> max(scores[:200]) < 0.5 < scores[200]
True
"""

from __future__ import annotations

import bisect
import csv
import math
import sys
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from statistics import NormalDist
from typing import Any, Callable, Iterable, Protocol, Sequence, runtime_checkable

import numpy as np

from models.baseline import calibrate

Row = tuple[str, float, "int | None"]

TIMESTAMP_NAMES = ("timestamp", "time", "ts", "datetime", "date")
VALUE_NAMES = ("value", "val", "y")
LABEL_NAMES = ("label", "is_anomaly", "anomaly")
MISSING = {"", "nan", "null", "none", "na", "n/a"}
DEFAULT_TOLERANCE = 5  # points: an event counts as detected up to k points after its start


class SeriesFormatError(ValueError):
    """A series CSV that cannot be read; the message names the file and line."""


# -- reading ------------------------------------------------------------------------------------
def _parse_value(text: str, where: str) -> float:
    t = text.strip()
    if t.lower() in MISSING:
        return math.nan
    try:
        v = float(t)
    except ValueError:
        raise SeriesFormatError(f"{where}: value {text!r} is not a number") from None
    if math.isinf(v):
        raise SeriesFormatError(f"{where}: value {text!r} is not finite")
    return v


def _parse_label(text: str, where: str) -> int | None:
    t = text.strip().lower()
    if t in MISSING:
        return None
    if t in ("1", "1.0", "true"):
        return 1
    if t in ("0", "0.0", "false"):
        return 0
    raise SeriesFormatError(f"{where}: label {text!r} is not 0 or 1")


def _find(header: list[str], names: Sequence[str]) -> int | None:
    for name in names:
        if name in header:
            return header.index(name)
    return None


def read_series(path: Path | str) -> list[Row]:
    """Rows ``(timestamp, value, label)`` of a ``timestamp,value[,label]`` CSV.

    Header names are matched case-insensitively (``TimeStamp``, ``Value``, ``Label`` ...); without
    a header the columns are taken in that order. A missing value is ``nan``; a missing label (or
    no label column) is ``None``. Bad rows raise :class:`SeriesFormatError` with the line number.
    """
    path = Path(path)
    rows: list[Row] = []
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        cols: tuple[int, int, int | None] | None = None
        for rec in reader:
            if not rec or all(not c.strip() for c in rec):
                continue
            where = f"{path}:{reader.line_num}"
            if cols is None:
                header = [c.strip().lower() for c in rec]
                ti, vi, li = (_find(header, TIMESTAMP_NAMES), _find(header, VALUE_NAMES),
                              _find(header, LABEL_NAMES))
                if ti is not None and vi is not None:
                    cols = (ti, vi, li)
                    continue
                if len(rec) >= 2 and ti is None and vi is None:
                    try:  # no header: timestamp,value[,label]
                        float(rec[1])
                    except ValueError:
                        pass
                    else:
                        cols = (0, 1, 2 if len(rec) >= 3 else None)
                if cols is None:
                    raise SeriesFormatError(
                        f"{where}: expected a header with timestamp and value columns "
                        f"(and optionally label), got {rec!r}")
            ti, vi, li = cols
            if len(rec) <= max(ti, vi) or (li is not None and len(rec) <= li):
                raise SeriesFormatError(f"{where}: expected {max(ti, vi, li or 0) + 1} fields, "
                                        f"got {len(rec)}: {rec!r}")
            rows.append((rec[ti].strip(), _parse_value(rec[vi], where),
                         _parse_label(rec[li], where) if li is not None else None))
    return rows


def write_scores(path: Path | str, rows: Sequence[Row], scores: Sequence[float]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(("timestamp", "value", "anomaly_score"))
        for (ts, v, _label), s in zip(rows, scores):
            w.writerow((ts, "" if math.isnan(v) else repr(v), f"{s:.6f}"))


# -- detectors ----------------------------------------------------------------------------------
@runtime_checkable
class SeriesDetector(Protocol):
    """One metric of one entity. ``score_one`` must not change state; it returns [0, 1]."""

    def score_one(self, x: float) -> float: ...

    def learn_one(self, x: float) -> None: ...


class RobustSeries:
    """``series-robust``: robust EW baseline of ``asinh(x / c)`` plus a decayed CUSUM.

    * Scale: the first ``warmup`` values score 0; then ``c`` is ``c_rel`` times their median
      absolute value (at least ``count_c`` when they are all integers), so ``y = asinh(x / c)``
      is logarithmic for large values (relative changes count) and linear near zero (small
      counts, where Poisson noise rules) and for negatives. Level and scale start at the
      warm-up's median and MAD; a series that is all zeros takes its scale from its first
      non-zero value (which is flagged).
    * Baseline: an exponentially weighted level (``alpha``) and, when the harness gives times and
      the series is sampled every 30 min to 6 h, a time-of-day profile (``gamma`` per visit of a
      slot) -- additive in ``y``, as Holt-Winters. Learning clips the residual at ``huber``
      scales, so one outlier moves the baseline a bounded amount.
    * Point deviation ``r = (y - expected) / sd`` with ``sd^2 = var + floor^2``: the floor (in
      ``y``, so about 10% relative for large values) keeps near-constant series from alerting on
      tiny changes; for integer series ``var`` is at least the Poisson variance (+1) of the
      expected count.
    * Level shifts: ``S+ = max(0, decay * S+ + r - drift)`` and the mirror ``S-``; the shift
      deviation is ``S / cusum_div``: a moderate shift that lasts a few points is flagged while
      noise within ``drift`` never accumulates.
    * Flagged points are not learned (the harness does not call ``learn_one``);
      ``observe_flagged`` keeps the CUSUM running. A short EW mean/variance of every point and an
      EW share of flagged points (memory ``absorb_window``) are kept: when more than
      ``absorb_share`` of the recent points are flagged, the baseline is stale rather than the
      data anomalous, and the recent mean and variance become the baseline (a permanent change,
      or a noisier regime, must stop alerting).
    * ``direction``: 0 two-sided (default), +1 only increases, -1 only decreases.
    """

    def __init__(self, alpha: float = 0.03, warmup: int = 12, c_rel: float = 0.5,
                 floor: float = 0.1, huber: float = 2.5, decay: float = 0.8,
                 drift: float = 1.0, cusum_div: float = 2.0, absorb_window: int = 24,
                 absorb_share: float = 0.3, count_c: float = 3.0,
                 seasonal: bool = True, gamma: float = 0.2, counts: bool = True,
                 direction: int = 0, z_mid: float = 4.0, z_scale: float = 0.6) -> None:
        self.alpha = alpha
        self.warmup = max(int(warmup), 2)
        self.c_rel = c_rel
        self.floor = floor
        self.huber = huber
        self.decay = decay
        self.drift = drift
        self.cusum_div = cusum_div
        self.absorb_window = absorb_window
        self.absorb_share = absorb_share
        self.count_c = count_c
        self.seasonal = seasonal
        self.gamma = gamma
        self.counts = counts
        self.direction = direction
        self.z_mid = z_mid
        self.z_scale = z_scale
        self._buf: list[float] = []
        self.c = 0.0
        self.integer = False
        self._pending = False
        self.level = 0.0
        self.var = 0.0
        self.s_up = 0.0
        self.s_down = 0.0
        self.seen = 0
        # time-of-day profile
        self._last_t: float | None = None
        self._steps: list[float] = []
        self.step = 0.0  # seconds between points, once known (0: no profile)
        self.profile: list[float] = []
        self._slot = -1
        # the stale-baseline rule: recent share of flags, recent mean and variance
        self.flag_share = 0.0
        self._recent_mean = 0.0
        self._recent_var = 0.0

    # -- time ---------------------------------------------------------------------------------
    def set_time(self, t: float | None) -> None:
        """The point's time (epoch seconds), before ``score_one``; enables the daily profile."""
        if not self.seasonal or t is None:
            self._slot = -1
            return
        if not self.step:
            if self._last_t is not None and t > self._last_t:
                self._steps.append(t - self._last_t)
            self._last_t = t
            if len(self._steps) >= 5:
                step = sorted(self._steps)[len(self._steps) // 2]
                self.step = step if 1800 <= step <= 6 * 3600 else -1.0
                if self.step > 0:
                    self.profile = [0.0] * max(int(round(86400 / step)), 1)
        if self.step > 0:
            self._slot = int((t % 86400) // self.step) % len(self.profile)
        else:
            self._slot = -1

    # -- internals ----------------------------------------------------------------------------
    def _y(self, x: float) -> float:
        return math.asinh(max(min(x / self.c, 1e300), -1e300))  # x / c may overflow

    def _expected(self) -> float:
        return self.level + (self.profile[self._slot] if self._slot >= 0 else 0.0)

    def _sd(self, expected: float) -> float:
        v = self.var
        if self.integer:  # at least the Poisson variance (+1) of the expected count, in y units
            lam = max(self.c * math.sinh(min(expected, 300.0)), 0.0)
            v = max(v, (lam + 1.0) / (self.c * self.c + lam * lam) if lam < 1e100 else 0.0)
        v += self.floor * self.floor
        return math.sqrt(v)

    def _resid(self, x: float) -> float:
        e = self._expected()
        r = (self._y(x) - e) / self._sd(e)
        return max(min(r, 1e6), -1e6)

    def _start(self) -> None:
        buf = self._buf
        med_abs = sorted(abs(v) for v in buf)[len(buf) // 2]
        self.integer = self.counts and all(v == int(v) for v in buf)
        c = self.c_rel * (med_abs or max(abs(v) for v in buf))
        if self.integer:
            c = max(c, self.count_c)
        self._pending = c <= 0.0
        # All zeros so far: the first non-zero value is as anomalous as it gets (c tiny) and then
        # sets the scale (see ``_settle``).
        self.c = c if c > 0.0 else 1e-12
        ys = sorted(self._y(v) for v in buf)
        self.level = ys[len(ys) // 2]
        mad = sorted(abs(y - self.level) for y in ys)[len(ys) // 2]
        self.var = (1.4826 * mad) ** 2

    def _settle(self, x: float) -> None:
        """A series that was all zeros has its first non-zero value: it sets the scale."""
        if self._pending and x != 0.0:
            self._pending = False
            self.c = self.c_rel * abs(x)
            self.level, self.var = 0.0, 0.0

    def _cusums(self, r: float) -> tuple[float, float]:
        rc = max(min(r, 4.0 * self.huber), -4.0 * self.huber)
        return (max(0.0, self.decay * self.s_up + rc - self.drift),
                max(0.0, self.decay * self.s_down - rc - self.drift))

    # -- protocol -----------------------------------------------------------------------------
    def deviation(self, x: float) -> float:
        """The standardised deviation (before calibration) of ``x``; 0 during warm-up."""
        if self.seen < self.warmup:
            return 0.0
        r = self._resid(x)
        s_up, s_down = self._cusums(r)
        up = max(r, s_up / self.cusum_div)
        down = max(-r, s_down / self.cusum_div)
        if self.direction > 0:
            return up
        if self.direction < 0:
            return down
        return max(up, down)

    def score_one(self, x: float) -> float:
        if self.seen < self.warmup:
            return 0.0
        return calibrate(self.deviation(x), self.z_mid, self.z_scale)

    def learn_one(self, x: float) -> None:
        self.seen += 1
        if self.seen <= self.warmup:
            self._buf.append(x)
            if self.seen == self.warmup:
                self._start()
                self._buf = []
                self._recent_mean, self._recent_var = self.level, self.var
            return
        self._settle(x)
        e = self._expected()
        sd = self._sd(e)
        r = max(min((self._y(x) - e) / sd, 1e6), -1e6)
        self.s_up, self.s_down = self._cusums(r)
        self._track(x, flagged=False)
        rc = max(min(r, self.huber), -self.huber) * sd
        a = self.alpha
        if self._slot >= 0:
            self.profile[self._slot] += self.gamma * (1.0 - a) * rc
        self.level += a * rc
        self.var = (1.0 - a) * (self.var + a * rc * rc)

    def _track(self, x: float, flagged: bool) -> None:
        """The recent (deseasonalised) mean and variance, and the recent share of flags."""
        w = 1.0 / max(self.absorb_window, 1)
        self.flag_share += w * ((1.0 if flagged else 0.0) - self.flag_share)
        d = self._y(x) - (self.profile[self._slot] if self._slot >= 0 else 0.0)
        b = min(2.0 * w, 1.0)
        diff = d - self._recent_mean
        self._recent_mean += b * diff
        self._recent_var = (1.0 - b) * (self._recent_var + b * diff * diff)

    def observe_flagged(self, x: float) -> None:
        """A flagged point: not learned, but the CUSUM runs on and a stale baseline is replaced."""
        if self.seen < self.warmup:
            return
        if self._pending:
            self._settle(x)
            return
        r = self._resid(x)
        self.s_up, self.s_down = self._cusums(r)
        self._track(x, flagged=True)
        if self.absorb_window and self.flag_share > self.absorb_share:
            self.level = self._recent_mean
            self.var = max(self.var, self._recent_var)
            self.s_up = self.s_down = 0.0
            self.flag_share = 0.0


class _MinMaxHST:
    """River HalfSpaceTrees on ``{"value": x}`` scaled by River's MinMaxScaler (the plain way)."""

    def __init__(self, n_trees: int = 10, height: int = 8, window_size: int = 250,
                 seed: int = 42) -> None:
        from river import anomaly, preprocessing

        self.scaler = preprocessing.MinMaxScaler()
        self.hst = anomaly.HalfSpaceTrees(n_trees=n_trees, height=height,
                                          window_size=window_size, seed=seed)

    def score_one(self, x: float) -> float:
        return self.hst.score_one(self.scaler.transform_one({"value": x}))

    def learn_one(self, x: float) -> None:
        self.scaler.learn_one({"value": x})
        self.hst.learn_one(self.scaler.transform_one({"value": x}))


class _Gaussian:
    """River GaussianScorer: ``2 |CDF(y) - 0.5|`` of a (rolling) Gaussian fit of the value."""

    def __init__(self, window_size: int | None = 100, grace_period: int = 30) -> None:
        from river import anomaly

        self.det = anomaly.GaussianScorer(window_size=window_size, grace_period=grace_period)

    def score_one(self, x: float) -> float:
        try:
            return float(self.det.score_one(None, x))
        except (TypeError, ValueError, ZeroDivisionError):
            # A (rolling) variance of 0, or rounded below 0: River's cdf fails. A constant
            # window: any other value is as anomalous as it gets.
            mu = float(getattr(self.det.gaussian, "mu", x))
            return 0.0 if abs(x - mu) <= 1e-12 * max(1.0, abs(mu)) else 1.0

    def learn_one(self, x: float) -> None:
        self.det.learn_one(None, x)


CALIBRATIONS = ("rank", "ew", "raw", "gauss")


_NORMAL = NormalDist()


class Calibrated:
    """Raw detector scores to [0, 1], from the detector's own history of learned points.

    * ``rank`` (default): the fraction of the last ``window`` learned raw scores below the raw
      score (a running quantile; ties count half), ``0`` until ``min_history`` scores are kept.
    * ``ew``: ``calibrate((raw - ew_mean) / ew_sd)`` as ``models.river_adapters`` does.
    * ``raw``: the detector's own score, clipped to [0, 1].
    * ``gauss``: for GaussianScorer, whose raw score is ``2 |CDF(z) - 0.5|``: back to ``|z|``,
      then the same logistic as ``series-robust`` (``z_mid`` 4, ``z_scale`` 0.6).
    """

    def __init__(self, detector: Any, calibration: str = "rank", window: int = 500,
                 min_history: int = 30, alpha: float = 0.05, z_mid: float = 5.0,
                 z_scale: float = 0.8) -> None:
        if calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {CALIBRATIONS}, not {calibration!r}")
        self.detector = detector
        self.calibration = calibration
        self.window = window
        self.min_history = min_history
        self.alpha = alpha
        self.z_mid = z_mid
        self.z_scale = z_scale
        self._fifo: deque[float] = deque()
        self._sorted: list[float] = []
        self._mean = 0.0
        self._var = 0.0
        self._n = 0
        self._last: tuple[float, float] | None = None  # (x, raw) of the last score_one

    def _raw(self, x: float) -> float:
        if self._last is not None and self._last[0] == x:
            return self._last[1]  # scored just before learning: do not score twice
        raw = float(self.detector.score_one(x))
        raw = raw if math.isfinite(raw) else 0.0
        self._last = (x, raw)
        return raw

    def score_one(self, x: float) -> float:
        raw = self._raw(x)
        if self.calibration == "raw":
            return min(max(raw, 0.0), 1.0)
        if self.calibration == "gauss":
            p = min(max((1.0 + raw) / 2.0, 0.5), 1.0 - 1e-16)
            return calibrate(_NORMAL.inv_cdf(p), self.z_mid, self.z_scale)
        if self._n < self.min_history:
            return 0.0
        if self.calibration == "ew":
            return calibrate((raw - self._mean) / math.sqrt(self._var + 1e-4), self.z_mid,
                             self.z_scale)
        lo = bisect.bisect_left(self._sorted, raw)
        hi = bisect.bisect_right(self._sorted, raw)
        return (lo + 0.5 * (hi - lo)) / len(self._sorted)

    def learn_one(self, x: float) -> None:
        raw = self._raw(x)
        self._n += 1
        if self.calibration == "ew":
            a = self.alpha if self._n > 1 else 1.0
            diff = raw - self._mean
            self._mean += a * diff
            self._var = (1 - a) * (self._var + a * diff * diff)
        elif self.calibration == "rank":
            self._fifo.append(raw)
            bisect.insort(self._sorted, raw)
            if len(self._fifo) > self.window:
                old = self._fifo.popleft()
                del self._sorted[bisect.bisect_left(self._sorted, old)]
        self.detector.learn_one(x)
        self._last = None


def river_hst(calibration: str = "rank", **params: Any) -> Calibrated:
    return Calibrated(_MinMaxHST(**params), calibration)


def river_gaussian(calibration: str = "rank", **params: Any) -> Calibrated:
    cal = Calibrated(_Gaussian(**params), calibration)
    if calibration == "gauss":
        cal.z_mid, cal.z_scale = 4.0, 0.6
    return cal


# -- registry -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeriesSpec:
    """A named detector configuration and its alert threshold.

    The threshold is also the learning guard: a point scoring at least the threshold is not
    learned, unless ``learn_flagged`` (the River baselines: guarded learning deadlocks them, see
    docs/series-mode.md).
    """

    name: str
    factory: Callable[..., SeriesDetector]
    params: dict[str, Any] = field(default_factory=dict)
    threshold: float = 0.8
    description: str = ""
    learn_flagged: bool = False

    def create(self) -> SeriesDetector:
        return self.factory(**self.params)


SERIES_REGISTRY: dict[str, SeriesSpec] = {}


def register(spec: SeriesSpec) -> SeriesSpec:
    SERIES_REGISTRY[spec.name] = spec
    return spec


def get_series_spec(spec: str | SeriesSpec) -> SeriesSpec:
    if isinstance(spec, SeriesSpec):
        return spec
    try:
        return SERIES_REGISTRY[spec]
    except KeyError:
        valid = ", ".join(sorted(SERIES_REGISTRY))
        raise KeyError(f"unknown series spec {spec!r}; valid: {valid}") from None


# Thresholds (and, for the River baselines, calibration, learning mode and detector settings) were
# chosen on the even-indexed half of the Cloud Monitoring dataset by aggregate event-level F1, the
# same procedure for every spec (docs/series-mode.md).
register(SeriesSpec(
    "series-robust", RobustSeries, {}, 0.6,
    "Robust EW level (+ time-of-day profile) and scale of asinh(x/c) with a variance floor, "
    "plus a decayed two-sided CUSUM for level shifts; logistic calibration."))
register(SeriesSpec(
    "river-hst", river_hst,
    {"calibration": "raw", "n_trees": 5, "height": 6, "window_size": 50}, 0.99,
    "River HalfSpaceTrees (5 trees, height 6, window 50) on the MinMaxScaler-scaled value; "
    "its own score; learns every point.", learn_flagged=True))
register(SeriesSpec(
    "river-gaussian", river_gaussian,
    {"calibration": "rank", "window_size": 100, "grace_period": 30}, 0.999,
    "River GaussianScorer over the last 100 values; running-quantile calibration over its "
    "last 500 scores; learns every point.", learn_flagged=True))


def parse_time(ts: str) -> float | None:
    """Epoch seconds of an ISO 8601 timestamp (naive = UTC) or of a number (s, or ms if large).

    >>> parse_time("2018-07-03 14:00:00"), parse_time('2018-07-03T14:00:00Z'), parse_time("x")
    (1530626400.0, 1530626400.0, None)
    """
    t = ts.strip()
    try:
        v = float(t)
        return v / 1000.0 if abs(v) > 1e11 else v
    except ValueError:
        pass
    try:
        d = datetime.fromisoformat(t[:-1] + "+00:00" if t.endswith(("Z", "z")) else t)
    except ValueError:
        return None
    if d.tzinfo is None:
        d = d.replace(tzinfo=timezone.utc)
    return d.timestamp()


def score_series(rows: Sequence[Row] | Iterable[float], spec: str | SeriesSpec,
                 threshold: float | None = None) -> list[float]:
    """Risk scores in [0, 1], one per row (rows, or bare values), through a fresh detector.

    Score before learn; a point scoring at least ``threshold`` (default: the spec's) is not
    learned but passed to the detector's ``observe_flagged`` if it has one. A missing (NaN)
    value scores 0 and is skipped. Detectors with a ``set_time`` hook get each row's time
    (epoch seconds, or None) before it is scored.
    """
    sp = get_series_spec(spec)
    det = sp.create()
    guard = sp.threshold if threshold is None else threshold
    if sp.learn_flagged:
        guard = math.inf
    observe = getattr(det, "observe_flagged", None)
    set_time = getattr(det, "set_time", None)
    timed = set_time is not None
    out: list[float] = []
    for row in rows:
        if isinstance(row, tuple):
            x = row[1]
            if timed:
                t = parse_time(row[0])
                if t is None:
                    timed = False
                set_time(t)
        else:
            x = float(row)
        if not math.isfinite(x):
            out.append(0.0)
            continue
        s = float(det.score_one(x))
        s = 0.0 if math.isnan(s) else min(max(s, 0.0), 1.0)
        out.append(s)
        if s < guard:
            det.learn_one(x)
        elif observe is not None:
            observe(x)
    return out


# -- evaluation ---------------------------------------------------------------------------------
def _runs(flags: "np.ndarray") -> tuple["np.ndarray", "np.ndarray"]:
    """Inclusive starts and ends of the runs of true values of a boolean array."""
    d = np.diff(np.concatenate(([0], flags.astype(np.int8), [0])))
    return np.flatnonzero(d == 1), np.flatnonzero(d == -1) - 1


def counts(labels: Sequence[int | None], scores: Sequence[float], threshold: float,
           tolerance: int = DEFAULT_TOLERANCE) -> dict[str, int]:
    """The counts behind :func:`evaluate` (they add up across series)."""
    lab = np.fromiter((v == 1 for v in labels), dtype=bool, count=len(labels))
    flags = np.asarray(scores, dtype=float) >= threshold
    n = len(lab)
    seg_s, seg_e = _runs(lab)
    # The region an event may be flagged in: the segment, and at least k points from its start.
    reg_e = np.minimum(np.maximum(seg_e, seg_s + tolerance), n - 1)
    fcum = np.concatenate(([0], np.cumsum(flags)))
    detected = int(np.count_nonzero(fcum[reg_e + 1] - fcum[seg_s]))
    delta = np.zeros(n + 1, dtype=np.int64)
    np.add.at(delta, seg_s, 1)
    np.add.at(delta, reg_e + 1, -1)
    covered = np.cumsum(delta[:n]) > 0
    # False alarms: runs of flagged points outside every event's region, one per started
    # ``2 * tolerance`` points (flagging everything must not look like a handful of alarms).
    span = max(2 * tolerance, 1)
    run_s, run_e = _runs(flags & ~covered)
    false_alarms = int(np.sum((run_e - run_s) // span + 1)) if len(run_s) else 0
    return {"points": n, "positives": int(lab.sum()), "flagged": int(flags.sum()),
            "tp": int(np.count_nonzero(flags & lab)), "events": len(seg_s),
            "detected": detected, "false_alarms": false_alarms}


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def _f1(p: float | None, r: float | None) -> float | None:
    if p is None or r is None:
        return None
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def metrics(c: dict[str, int]) -> dict[str, Any]:
    """Point and event precision/recall/F1 from :func:`counts` (or their sum)."""
    pp, pr = _ratio(c["tp"], c["flagged"]), _ratio(c["tp"], c["positives"])
    ep = _ratio(c["detected"], c["detected"] + c["false_alarms"])
    er = _ratio(c["detected"], c["events"])
    if pp is None and c["positives"]:
        pp = 0.0  # nothing flagged: no precision to speak of, but F1 is 0
    if ep is None and c["events"]:
        ep = 0.0
    return {"point": {"precision": pp, "recall": pr, "f1": _f1(pp, pr)},
            "event": {"precision": ep, "recall": er, "f1": _f1(ep, er)},
            "counts": dict(c)}


def evaluate(labels: Sequence[int | None], scores: Sequence[float], threshold: float,
             tolerance: int = DEFAULT_TOLERANCE) -> dict[str, Any]:
    """Point- and event-level precision, recall and F1 of ``scores >= threshold``.

    Point level: flagged points against label-1 points. Event level: an event is a run of
    consecutive label-1 points; its region is the run, extended to at least ``tolerance`` points
    after its start. An event is detected when a point of its region is flagged. A false alarm is
    a run of flagged points outside every region, counted once per started ``2 * tolerance``
    points. Event precision = detected / (detected + false alarms); event recall = detected /
    events.

    >>> y = [0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    >>> m = evaluate(y, [0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 0, 0], 0.5, 2)
    >>> m["point"]["precision"], m["point"]["recall"], m["event"]["recall"], m["event"]["precision"]
    (0.3333333333333333, 0.5, 1.0, 0.5)
    >>> evaluate(y, [1] * 12, 0.5, 2)["counts"]["false_alarms"]  # runs of 2 and 7 points outside
    3
    """
    return metrics(counts(labels, scores, threshold, tolerance))


def add_counts(items: Iterable[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for c in items:
        for k, v in c.items():
            total[k] = total.get(k, 0) + v
    return total


THRESHOLD_GRID = tuple(round(0.05 * i, 2) for i in range(2, 20)) + (
    0.97, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 0.9999, 1.0)


def choose_threshold(series: Sequence[tuple[Sequence[int | None], Sequence[float]]],
                     grid: Sequence[float] = THRESHOLD_GRID,
                     tolerance: int = DEFAULT_TOLERANCE) -> tuple[float, float]:
    """The grid threshold maximising the aggregate event-level F1 over ``(labels, scores)``."""
    best = (grid[0], -1.0)
    for t in grid:
        f1 = metrics(add_counts(counts(y, s, t, tolerance) for y, s in series))["event"]["f1"]
        f1 = -1.0 if f1 is None else f1
        if f1 > best[1] + 1e-12:
            best = (t, f1)
    return best


# -- CLI ----------------------------------------------------------------------------------------
def _inputs(src: Path) -> list[tuple[Path, Path]]:
    """(file, path relative to the input root) for a file or every *.csv under a directory."""
    if src.is_dir():
        return [(p, p.relative_to(src)) for p in sorted(src.rglob("*.csv")) if p.is_file()]
    return [(src, Path(src.name))]


def _fmt(v: float | None) -> str:
    return "  -  " if v is None else f"{v:.3f}"


def _table_line(name: str, threshold: float, m: dict[str, Any]) -> str:
    p, e = m["point"], m["event"]
    return (f"{name:<16} {threshold:>6.3f}  {_fmt(p['precision'])} {_fmt(p['recall'])} "
            f"{_fmt(p['f1'])}  {_fmt(e['precision'])} {_fmt(e['recall'])} {_fmt(e['f1'])}")


TABLE_HEADER = (f"{'spec':<16} {'thresh':>6}  {'pt-P':>5} {'pt-R':>5} {'pt-F1':>5}  "
                f"{'ev-P':>5} {'ev-R':>5} {'ev-F1':>5}")


def _out_path(out: Path, rel: Path, directory: bool, index: int, spec: str) -> Path:
    base = out / rel if directory else out
    return base if index == 0 else base.with_suffix(f".{spec}.csv")


def run_series(args: Any) -> int:
    """``riskstream backtest --series FILE|DIR --out PATH [--model SPEC ...] [--report DIR]``."""
    src = Path(args.series)
    if not src.exists():
        print(f"backtest: no such file or directory: {src}", file=sys.stderr)
        return 2
    directory = src.is_dir()
    inputs = _inputs(src)
    if not inputs:
        print(f"backtest: no *.csv under {src}", file=sys.stderr)
        return 2
    names = list(getattr(args, "model", None) or ["series-robust"])
    try:
        specs = [get_series_spec(n) for n in names]
    except KeyError as exc:
        print(f"backtest: {exc.args[0]}", file=sys.stderr)
        return 2
    tolerance = int(getattr(args, "tolerance", None) or DEFAULT_TOLERANCE)
    try:
        data = [(rel, read_series(path)) for path, rel in inputs]
    except (SeriesFormatError, OSError, UnicodeDecodeError) as exc:
        print(f"backtest: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    labelled = [i for i, (_rel, rows) in enumerate(data) if any(r[2] is not None for r in rows)]
    report: dict[str, Any] = {
        "input": {"path": str(src), "series": len(data), "labelled_series": len(labelled),
                  "rows": sum(len(rows) for _rel, rows in data)},
        "tolerance_points": tolerance, "models": {}}
    lines = []
    for i, spec in enumerate(specs):
        per_series: dict[str, Any] = {}
        scored = []
        for rel, rows in data:
            scores = score_series(rows, spec)
            target = _out_path(out, rel, directory, i, spec.name)
            write_scores(target, rows, scores)
            scored.append(scores)
            entry: dict[str, Any] = {"rows": len(rows), "scores_file": str(target)}
            if any(r[2] is not None for r in rows):
                entry.update(evaluate([r[2] for r in rows], scores, spec.threshold, tolerance))
            per_series[rel.as_posix()] = entry
        model: dict[str, Any] = {"threshold": spec.threshold, "params": spec.params,
                                 "description": spec.description, "series": per_series}
        if labelled:
            pairs = [([r[2] for r in data[j][1]], scored[j]) for j in labelled]
            agg = metrics(add_counts(counts(y, s, spec.threshold, tolerance) for y, s in pairs))
            model["aggregate"] = agg
            domains: dict[str, list[dict[str, int]]] = {}
            for j in labelled:
                dom = data[j][0].parent.as_posix() if directory else "."
                domains.setdefault(dom, []).append(per_series[data[j][0].as_posix()]["counts"])
            model["domains"] = {d: metrics(add_counts(cs)) for d, cs in domains.items()}
            lines.append(_table_line(spec.name, spec.threshold, agg))
            if len(labelled) >= 2:
                model["split"] = split_evaluation(pairs, tolerance)
        report["models"][spec.name] = model
        where = (_out_path(out, data[0][0], False, i, spec.name) if not directory
                 else f"{out}/**/*{'' if i == 0 else '.' + spec.name}.csv")
        print(f"{spec.name}: {len(data)} series, {report['input']['rows']:,} rows -> {where}")
    if lines:
        print(f"\nall labelled series ({len(labelled)}), at each spec's threshold, event "
              f"tolerance {tolerance} points:")
        print(TABLE_HEADER)
        for line in lines:
            print(line)
        splits = [(n, m["split"]) for n, m in report["models"].items() if "split" in m]
        if splits:
            print("\nthreshold chosen on the tuning half (even-indexed series) by event F1:")
            print(f"{'':<9}" + TABLE_HEADER)
            for part in ("tuning", "held_out", "all"):
                for n, sp in splits:
                    print(f"{part:<9}" + _table_line(n, sp["threshold"], sp[part]))
    if getattr(args, "report", None):
        rdir = Path(args.report)
        rdir.mkdir(parents=True, exist_ok=True)
        import orjson

        (rdir / "report.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
        print(f"report: {rdir / 'report.json'}")
    return 0


def split_evaluation(pairs: Sequence[tuple[Sequence[int | None], Sequence[float]]],
                     tolerance: int = DEFAULT_TOLERANCE) -> dict[str, Any]:
    """Choose the threshold on the even-indexed series, report it on the odd ones and on all."""
    tune, held = list(pairs[0::2]), list(pairs[1::2])
    t, _ = choose_threshold(tune, tolerance=tolerance)

    def agg(ps: Sequence[tuple[Sequence[int | None], Sequence[float]]]) -> dict[str, Any]:
        return metrics(add_counts(counts(y, s, t, tolerance) for y, s in ps))

    return {"threshold": t, "tuning": agg(tune), "held_out": agg(held), "all": agg(list(pairs))}
