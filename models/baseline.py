"""``robust-baseline``: a per-advertiser, count-aware, directional baseline (the default model).

Why not only z-scores on rates: reports, complaints and even clicks are sparse counts. Five reports
on 40 impressions is a 12% report rate, and its z-score against a 0.02% baseline is enormous even
when such a window is unremarkable luck. So every rate is kept as its numerator and denominator
(exponentially weighted sums) and a window is judged by the Freeman-Tukey deviate of a Poisson
count: ``sqrt(k) + sqrt(k + 1) - sqrt(4 * lam + 1)`` with ``lam`` the count the advertiser's
baseline rate predicts for this window's denominator. Small windows therefore need many more
events to look anomalous than large ones, which is what an analyst would also conclude.

Two horizons: each window is judged on its own, and a decayed sum of the last ~10 windows'
counts (decay ``short_decay``) is judged the same way against the same baseline. The second
catches what no single window can show: a scam ad at 60 impressions a minute draws one report
every few minutes, and complaints about a cloaked landing page trickle in over an hour. A flagged
window restarts the short sums (``observe_flagged``) and never enters the long baseline.

Levels (dwell, click delay, impressions per user, rating) use an EW mean/variance on
``log1p(value)`` with a variance floor, shrunk by the amount of evidence in the window.

Only the risky direction counts (``FEATURES[...].risk_direction``): a drop in reports or a rise in
dwell time is good news, not an alert. Cold start: every baseline begins at the global prior with
a pseudo-weight, so a new advertiser is judged against the cohort from its first window and its own
history takes over as it accumulates (EW weight ``alpha``).

Calibration: the top two deviations combine into ``z = z1 + 0.5 * z2``, and the risk score is the
logistic ``1 / (1 + exp(-(z - z_mid) / z_scale))``. With the defaults z = 4 maps to 0.5 and
z = 4.8 to the default alert threshold 0.8.

>>> m = RobustBaseline()
>>> normal = {"impressions": 400.0, "clicks": 6.0, "ctr": 0.015, "reports": 0.0}
>>> round(m.score_one(normal), 3) < 0.1
True
>>> spam = {"impressions": 400.0, "clicks": 80.0, "ctr": 0.2, "reports": 0.0}
>>> m.score_one(spam) > 0.99
True
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

from river.base import AnomalyDetector

from models.protocol import Contribution

# rate feature -> (numerator feature, denominator feature or None = value itself per window)
RATES: dict[str, tuple[str, str]] = {
    "ctr": ("clicks", "impressions"),
    "fast_click_share": ("fast_clicks", "clicks"),
    "short_dwell_share": ("short_dwells", "clicks"),
    "report_rate": ("reports", "impressions"),
    "hide_rate": ("hides", "impressions"),
    "not_interested_rate": ("not_interested", "impressions"),
    "scam_report_rate": ("scam_reports", "impressions"),
    "complaints_per_impression": ("complaints_refunds", "impressions"),
    # Pooled harm: reports, complaints, refunds and low ratings rise together when a landing
    # page cheats (cloaking); each alone is too sparse to see within the hour, their sum is not.
    "harm_rate": ("harm", "impressions"),
    "low_rating_share": ("low_ratings", "satisfaction_responses"),
    "deception_rate": ("deception", "impressions"),
    # v6: evidence only (EVIDENCE_ONLY), for the cloaking drift below
    "cvr": ("conversions", "clicks"),
}
# Rates that are no deviation of their own, only evidence in a joint drift: a cloaked page
# converts 2-4x better, which is no harm by itself (a good landing page does too), but next to
# deception signals and low ratings it says the page is what changed.
EVIDENCE_ONLY: frozenset[str] = frozenset({"cvr"})
# level feature -> (risk direction, evidence feature whose size shrinks the deviation)
LEVELS: dict[str, tuple[int, str]] = {
    "mean_dwell_ms": (-1, "clicks"),
    "median_click_delay_ms": (-1, "clicks"),
    "impressions_per_user": (+1, "impressions"),
    "mean_rating": (-1, "satisfaction_responses"),
}
# Drift: a one-sided Poisson CUSUM per rate, tuned to a rise of ``rho`` x the baseline. It sums
# evidence from where a drift began, with no decay, so a slow ramp (CTR creeping up over half an
# hour) or a trickle of deception signals (a cloaked page's reports, then complaints an hour
# later) adds up even when no window or decayed horizon shows much. Its statistic S is a
# log-likelihood ratio; ``sqrt(2 * (S - CUSUM_OFFSET))`` makes it a deviation like the others,
# the offset paying for the CUSUM being a maximum over start points. The drift is measured only
# once the advertiser has DRIFT_WARMUP learned windows: before that its baseline is still leaving
# the cohort prior, and that convergence is not a drift. (Tuned on 12 simulated seeds for
# precision first: docs/detection.md.)
CUSUM_RATIOS: dict[str, float] = {"ctr": 3.0, "deception_rate": 10.0}
CUSUM_OFFSET = 3.0
DRIFT_WARMUP = 60
# v5: a drift over several streams, with its own offset. A scam ad draws hides (x4-10) and
# reports (x20-50), each a fraction of an event a minute at 40-60 impressions a minute; the
# log-likelihood ratios of independent Poisson counts add, so together they are evidence sooner
# than either alone. Drift name (its key in the state) -> {rate: rho}. It is scored only once its
# streams hold JOINT_MIN_EVENTS events, and is explained by the stream that brought most of its
# evidence. (Offset chosen on development seeds 5001-5012: docs/detection.md.)
#
# v6: a second one for cloaked landing pages: deception signals (x10), low ratings (x8) and
# conversions (x2.5, evidence only: it adds to the statistic but never counts toward
# JOINT_MIN_EVENTS nor explains the alert). Offset 2 -> 2.5 with two drifts (docs/detection.md).
JOINT_DRIFTS: dict[str, dict[str, float]] = {
    "hide_report": {"hide_rate": 4.0, "report_rate": 10.0},
    "cloak": {"deception_rate": 10.0, "low_rating_share": 8.0, "cvr": 2.5},
}
JOINT_OFFSET = 2.5
JOINT_MIN_EVENTS = 2.0
# A window serving more than VOLUME_CAP x the advertiser's typical impressions learns with
# proportionally less weight: rates are sums of counts, so otherwise one bot burst at 10x volume
# (CTR x0.3) rewrites an hour of CTR history in minutes, and normal CTR afterwards reads as a drift.
VOLUME_CAP = 2.0
# v6: a level whose window already deviates by more than ``learn_guard`` (in the risky direction)
# learns with weight 0.05, as a guarded rate does. Without it a bot burst at 40 impressions a
# minute (4 impressions per user for 20 minutes, where 1.0 was the rule) taught its own level
# and inflated its variance within a few sub-threshold windows, and was missed.
LEVEL_GUARD = True
# An option, off in v6 (session 5's experiment, NOT adopted: docs/detection.md): the drifts named
# here judge their events against the baseline they had when they began (frozen while the drift
# is up), not against a baseline that goes on learning: below the learning guard a slow ramp
# still teaches the baseline its own rise, and the drift then measures the ramp against itself.
# On the validation seeds the frozen CTR drift gained one ramp for two false episodes.
FROZEN_DRIFT: frozenset[str] = frozenset()  # drift names (CUSUM_RATIOS, JOINT_DRIFTS keys)
# Global priors: the cohort baseline a new advertiser starts from (rates per denominator unit).
DEFAULT_PRIORS: dict[str, float] = {
    "ctr": 0.02,
    "fast_click_share": 0.05,
    "short_dwell_share": 0.10,
    "report_rate": 4e-4,
    "hide_rate": 2e-3,
    "not_interested_rate": 2e-3,
    "scam_report_rate": 2e-4,
    "complaints_per_impression": 3e-5,
    "harm_rate": 5e-4,
    "low_rating_share": 0.15,
    "deception_rate": 6e-5,
    "cvr": 0.05,
    "mean_dwell_ms": 20000.0,
    "median_click_delay_ms": 3000.0,
    "impressions_per_user": 1.1,
    "mean_rating": 4.0,
}
# The cohort prior is worth at least this many expected events: a rare count (complaints at
# 3e-5 per impression) is otherwise estimated from its own first events, so the first complaints
# of an incident would triple the baseline they are judged against.
PRIOR_EVENTS = 3.0
COUNT_MEMORY = 20.0  # expected events a rate baseline remembers
MIN_ALPHA = 1e-4

# RATES flattened for the per-window loops: (rate, numerator, denominator)
RATE_FIELDS: tuple[tuple[str, str, str], ...] = tuple((r, n, d) for r, (n, d) in RATES.items())

# Typical denominators of one window, used to size the prior's pseudo-evidence.
PRIOR_DENOMINATORS: dict[str, float] = {
    "impressions": 100.0,
    "clicks": 2.0,
    "satisfaction_responses": 1.0,
}


def derived_counts(x: dict[str, float]) -> dict[str, float]:
    """Numerators and denominators the rates need, recovered from the window features."""
    clicks = x.get("clicks", 0.0)
    imps = x.get("impressions", 0.0)
    ratings = x.get("satisfaction_responses", 0.0)
    return {
        "impressions": imps,
        "clicks": clicks,
        "fast_clicks": x.get("fast_click_share", 0.0) * clicks,
        "short_dwells": x.get("short_dwell_share", 0.0) * clicks,
        "reports": x.get("reports", 0.0),
        "hides": x.get("hide_rate", 0.0) * imps,
        "not_interested": x.get("not_interested_rate", 0.0) * imps,
        "scam_reports": x.get("scam_reports", 0.0),
        "complaints_refunds": x.get("complaints", 0.0) + x.get("refund_requests", 0.0),
        "harm": (x.get("reports", 0.0) + x.get("complaints", 0.0) + x.get("refund_requests", 0.0)
                 + x.get("low_rating_share", 0.0) * ratings),
        "low_ratings": x.get("low_rating_share", 0.0) * ratings,
        "satisfaction_responses": ratings,
        "deception": x.get("deception_signals", 0.0),
        "conversions": x.get("conversions", 0.0),
    }


def freeman_tukey(k: float, lam: float) -> float:
    """Variance-stabilised deviate of a Poisson count ``k`` against expectation ``lam``.

    >>> round(freeman_tukey(0, 0.01), 2), round(freeman_tukey(40, 4.0), 1)
    (-0.02, 8.6)
    """
    return math.sqrt(k) + math.sqrt(k + 1.0) - math.sqrt(4.0 * lam + 1.0)


def calibrate(z: float, z_mid: float, z_scale: float) -> float:
    """Deviation (standard units) to a risk score in [0, 1]: the logistic around ``z_mid``.

    >>> calibrate(4.0, 4.0, 0.6), calibrate(-1e6, 4.0, 0.6), calibrate(1e6, 4.0, 0.6)
    (0.5, 0.0, 1.0)
    """
    t = (z - z_mid) / z_scale
    if t > 50:
        return 1.0
    if t < -50:
        return 0.0
    return 1.0 / (1.0 + math.exp(-t))


def _finite(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return 0.0
    if math.isnan(f):
        return 0.0
    if math.isinf(f):
        return 1e12 if f > 0 else 0.0
    return min(max(f, -1e12), 1e12)


def _count(v: Any) -> float:
    """``max(_finite(v), 0.0)`` in one call: a count or a level, finite and not negative.

    >>> _count(float("nan")), _count(-3.0), _count(float("inf")), _count(2.5)
    (0.0, 0.0, 1000000000000.0, 2.5)
    """
    try:
        f = float(v)
    except (TypeError, ValueError):
        return 0.0
    if f != f or f < 0.0:  # NaN or negative (-0.0 stays -0.0, as max(-0.0, 0.0) keeps it)
        return 0.0
    return f if f <= 1e12 else 1e12


def window_counts(x: dict[str, float]) -> dict[str, float]:
    """``derived_counts``, each finite and clamped at zero: done once per window, since scoring,
    the drift statistics and learning all read the same clamped counts.

    >>> window_counts({"impressions": 50.0, "clicks": -1.0, "reports": float("nan")})["harm"]
    0.0
    """
    return {k: _count(v) for k, v in derived_counts(x).items()}


@lru_cache(maxsize=32, typed=True)
def _prior_sums(alpha: float, prior_weight: float, priors: tuple[tuple[str, float], ...],
                horizons: int) -> tuple[tuple[tuple[str, tuple[float, ...]], ...], ...]:
    """A new advertiser's rate and level sums, per model configuration: computed once, copied
    into every new model (a worker with many advertisers creates thousands a minute)."""
    p = dict(DEFAULT_PRIORS)
    p.update(priors)
    # Rates: (decayed numerator, decayed denominator, then per short horizon the decayed
    # numerator and denominator). The long sums start at the cohort prior, worth
    # ``prior_weight`` typical windows of PRIOR_DENOMINATORS volume, and at least
    # PRIOR_EVENTS expected events.
    rates = []
    for name, (_num, den_name) in RATES.items():
        den = max(prior_weight * PRIOR_DENOMINATORS[den_name], PRIOR_EVENTS / p[name])
        rates.append((name, (p[name] * den, den) + (0.0, 0.0) * horizons))
    # Levels: EW mean and variance of log1p(value), with a weight.
    levels = tuple((name, (math.log1p(p[name]), 0.25, prior_weight * alpha)) for name in LEVELS)
    return tuple(rates), levels


class RobustBaseline(AnomalyDetector):
    """Directional, count-aware per-advertiser baseline over two horizons. State: ~60 floats.

    A River anomaly detector (``river.base.AnomalyDetector``: ``learn_one``/``score_one``), so
    River's tooling (``clone``, ``ThresholdFilter``, pipelines) applies to it as to HST.

    Per window the engine calls ``score_one(x)``, maybe ``explain(x)``, then ``learn_one(x)`` or
    ``observe_flagged(x)`` with the same ``x``. Learning needs the same per-rate deviations and
    drift steps that scoring computed, so scoring keeps them (``_scored``) for that ``x`` and the
    current state; every change of state drops them (``_evaluate``).
    """

    def __init__(
        self,
        alpha: float = 0.02,
        prior_weight: float = 8.0,
        priors: dict[str, float] | None = None,
        short_decays: tuple[float, ...] = (0.9, 0.97),
        learn_guard: float = 2.0,
        z_mid: float = 4.0,
        z_scale: float = 0.6,
        level_var_floor: float = 0.04,
    ) -> None:
        self.alpha = alpha
        self.prior_weight = prior_weight
        self.priors = priors
        self.short_decays = tuple(short_decays)
        # per short horizon: its decay and the positions of its numerator and denominator
        self._horizons = tuple((d, 2 + 2 * i, 3 + 2 * i) for i, d in enumerate(self.short_decays))
        self.learn_guard = learn_guard
        self.z_mid = z_mid
        self.z_scale = z_scale
        self.level_var_floor = level_var_floor
        rates, levels = _prior_sums(alpha, prior_weight, tuple(sorted((priors or {}).items())),
                                    len(self.short_decays))
        self._rates = {name: list(sums) for name, sums in rates}
        self._levels = {name: list(sums) for name, sums in levels}
        # Drift: per CUSUM rate [statistic, events and exposure since it last left zero]; and the
        # typical impressions per window (EW, weight ``alpha``).
        self._cusum = {name: [0.0, 0.0, 0.0] for name in CUSUM_RATIOS}
        # joint drifts: [statistic, then per stream its events and exposure since it left zero]
        for name, streams in JOINT_DRIFTS.items():
            self._cusum[name] = [0.0] * (1 + 2 * len(streams))
        # drift name -> the baseline rate(s) of its streams when it began (FROZEN_DRIFT; only
        # while the drift is up)
        self._frozen: dict[str, list[float]] = {}
        self._volume = 0.0
        self._seen = 0
        # (x, a copy of x, _evaluate(x)) of the last scored window; None after any state change
        self._scored: tuple[dict[str, float], dict[str, float], tuple] | None = None

    @property
    def windows_seen(self) -> int:
        return self._seen

    # -- one window against the current state -----------------------------------------------
    def _evaluate(self, x: dict[str, float]) -> tuple:
        """Everything scoring, explaining and learning need of window ``x`` against the current
        state, as plain tuples (``Contribution`` objects are built only for what ``explain`` or
        ``deviations`` return). Kept for the ``x`` last scored, so that ``learn_one`` and
        ``explain`` of the same window do not compute it again: the copy of ``x`` catches a
        window changed in place, and every method that changes the state (``learn_one``,
        ``observe_flagged``, ``load_state``) or hands it out (``state``) drops it.

        Returns ``(z, rows, counts, guards, joints, levels)``:

        * ``z``: the combined deviation (top two positive, ``z1 + 0.5 * z2``).
        * ``rows``: per deviating feature ``(feature, a, b, baseline, deviation)``, in the order
          ``deviations`` lists them; the value is ``a / b`` for a rate (``b`` a denominator) and
          ``a`` for a level (``b`` None, ``baseline`` the log-mean, ``expm1`` of it reported).
        * ``counts``: ``window_counts(x)``.
        * ``guards``: per rate in RATES order ``(horizon deviation or None, CUSUM step or
          None)``: the strongest short-horizon deviation (the learning guard) and, once warm,
          the rate's drift state after this window.
        * ``joints``: joint drift name -> its state after this window (once warm).
        * ``levels``: ``(level, log1p(value), deviation)`` for every level this window has
          evidence for.
        """
        sc = self._scored
        if sc is not None and sc[0] is x and sc[1] == x:
            return sc[2]
        sqrt = math.sqrt
        counts = window_counts(x)
        rates, cusum = self._rates, self._cusum
        horizons = self._horizons
        warm = self._seen >= DRIFT_WARMUP
        rows: list[tuple] = []
        guards: list[tuple[float | None, tuple[float, float, float] | None]] = []
        for name, num_name, den_name in RATE_FIELDS:
            s = rates[name]
            k, den = counts[num_name], counts[den_name]
            base_rate = s[0] / s[1] if s[1] > 0 else 0.0
            # The strongest of the window's, the short horizons' and the drift's deviations
            # (z, from counts bk / bn); on a tie the first stays, as in the order below.
            # (the Freeman-Tukey deviates are freeman_tukey(k, lam) written out: up to 33 a
            # window, and a call costs about half as much again as the arithmetic)
            z = None
            if den > 0:
                lam = base_rate * den
                z, bk, bn = sqrt(k) + sqrt(k + 1.0) - sqrt(4.0 * lam + 1.0), k, den
            horizon = None  # the strongest short horizon alone: learn_one's guard
            for d, i_k, i_n in horizons:
                n_s = d * s[i_n] + den
                if n_s > 0:
                    k_s = d * s[i_k] + k
                    lam = base_rate * n_s
                    z_s = sqrt(k_s) + sqrt(k_s + 1.0) - sqrt(4.0 * lam + 1.0)
                    if horizon is None or z_s > horizon:
                        horizon = z_s
                    if z is None or z_s > z:
                        z, bk, bn = z_s, k_s, n_s
            step = None
            if warm and name in cusum:
                step = self._cusum_step(name, k, den, base_rate)
                stat, k_c, n_c = step
                if stat > CUSUM_OFFSET and n_c > 0:
                    z_c = sqrt(2.0 * (stat - CUSUM_OFFSET))
                    if z is None or z_c > z:
                        z, bk, bn = z_c, k_c, n_c
            if z is not None and name not in EVIDENCE_ONLY:
                rows.append((name, bk, bn, base_rate, z))
            guards.append((horizon, step))
        joints: dict[str, list[float]] = {}
        if warm:
            # a joint drift stands in for its explaining stream's deviation where it is stronger
            for name in JOINT_DRIFTS:
                c = joints[name] = self._joint_step(name, counts)
                d = self._joint_row(name, c)
                if d is None:
                    continue
                at = next((i for i, r in enumerate(rows) if r[0] == d[0]), None)
                if at is None:
                    rows.append(d)
                elif d[4] > rows[at][4]:
                    rows[at] = d
        levels: list[tuple[str, float]] = []
        floor = self.level_var_floor
        level_state = self._levels
        for name, (direction, evidence_name) in LEVELS.items():
            n = counts[evidence_name]
            if n <= 0 or name not in x:
                continue
            value = _count(x[name])
            v = math.log1p(value)
            mean, var, _w = level_state[name]
            z = (v - mean) / sqrt(var + floor)
            z *= direction * sqrt(n / (n + 5.0))
            rows.append((name, value, None, mean, z))
            levels.append((name, v, z))
        # the top two positive deviations, as sorted(..., reverse=True)[:2] would give them
        top1 = top2 = 0.0
        for r in rows:
            z = r[4]
            if z > 0:
                if z > top1:
                    top1, top2 = z, top1
                elif z > top2:
                    top2 = z
        out = (top1 + 0.5 * top2, rows, counts, guards, joints, levels)
        self._scored = (x, dict(x), out)
        return out

    def _cusum_step(self, name: str, k: float, den: float,
                    base_rate: float) -> tuple[float, float, float]:
        """The drift statistic after this window: log-likelihood ratio of "rate x rho" against
        the baseline, accumulated while positive (a one-sided Poisson CUSUM). With FROZEN_DRIFT
        the baseline is the one of the drift's start (``learn_one`` keeps it)."""
        stat, k_c, n_c = self._cusum[name]
        if stat > 0.0 and name in FROZEN_DRIFT:
            base_rate = self._frozen.get(name, (base_rate,))[0]
        rho = CUSUM_RATIOS[name]
        new = stat + k * math.log(rho) - (rho - 1.0) * base_rate * den
        if new <= 0.0:
            return 0.0, 0.0, 0.0
        if stat <= 0.0:
            k_c, n_c = 0.0, 0.0
        return new, k_c + k, n_c + den

    def _freeze(self, name: str, stat: float) -> None:
        """Before a rate's drift takes its new statistic ``stat``: keep the baseline of the
        drift's start while it is up (FROZEN_DRIFT), forget it once it is at rest."""
        if stat <= 0.0 or name not in FROZEN_DRIFT:
            self._frozen.pop(name, None)
        elif self._cusum[name][0] <= 0.0 or name not in self._frozen:
            self._frozen[name] = [self._base_rate(name)]  # learn_one has not moved it yet

    def _base_rate(self, name: str) -> float:
        s = self._rates[name]
        return s[0] / s[1] if s[1] > 0 else 0.0

    def _joint_step(self, name: str, counts: dict[str, float]) -> list[float]:
        """A joint drift's state after this window: the log-likelihood ratios of its streams
        ("rate x rho" against each baseline) summed and accumulated while positive. With
        FROZEN_DRIFT the baselines of the drift's start follow the statistic and events (one
        per stream; none while it is at rest)."""
        old = self._cusum[name]
        new = [old[0]]
        keep = name in FROZEN_DRIFT
        frozen = self._frozen.get(name) if keep and old[0] > 0.0 else None
        bases = []
        for i, (rate, rho) in enumerate(JOINT_DRIFTS[name].items()):
            num_name, den_name = RATES[rate]
            k, den = counts[num_name], counts[den_name]
            base = frozen[i] if frozen is not None else self._base_rate(rate)
            if keep:
                bases.append(base)
            new[0] += k * math.log(rho) - (rho - 1.0) * base * den
            if old[0] > 0.0:
                k, den = k + old[1 + 2 * i], den + old[2 + 2 * i]
            new += [k, den]
        if new[0] <= 0.0:
            return [0.0] * len(new)
        return new + bases

    def _joint_row(self, name: str, c: list[float]) -> tuple | None:
        """A joint drift's deviation row (as ``_evaluate``'s), explained by the stream that
        brought most of its evidence; None while it is below its offset or its events."""
        streams = list(JOINT_DRIFTS[name].items())
        harm = [j for j, (rate, _rho) in enumerate(streams) if rate not in EVIDENCE_ONLY]
        if c[0] <= JOINT_OFFSET or sum(c[1 + 2 * j] for j in harm) < JOINT_MIN_EVENTS:
            return None
        i = max(harm, key=lambda j: c[1 + 2 * j] * math.log(streams[j][1]))
        rate, k_c, n_c = streams[i][0], c[1 + 2 * i], c[2 + 2 * i]
        if n_c <= 0:
            return None
        base = c[1 + 2 * len(streams) + i] if len(c) > 1 + 2 * len(streams) else (
            self._base_rate(rate))
        return (rate, k_c, n_c, base, math.sqrt(2.0 * (c[0] - JOINT_OFFSET)))

    # -- scoring --------------------------------------------------------------------------
    @staticmethod
    def _contribution(row: tuple) -> Contribution:
        feature, a, b, baseline, deviation = row
        if b is None:  # a level: its value, and the baseline back from log1p
            return Contribution(feature, a, math.expm1(baseline), deviation)
        return Contribution(feature, a / b, baseline, deviation)

    def deviations(self, x: dict[str, float]) -> list[Contribution]:
        return [self._contribution(r) for r in self._evaluate(x)[1]]

    def score_one(self, x: dict[str, float]) -> float:
        return calibrate(self._evaluate(x)[0], self.z_mid, self.z_scale)

    def explain(self, x: dict[str, float], top: int = 3) -> list[Contribution]:
        rows = [r for r in self._evaluate(x)[1] if r[4] > 0]
        rows.sort(key=lambda r: r[4], reverse=True)
        return [self._contribution(r) for r in rows[:top]]

    # -- learning -------------------------------------------------------------------------
    def observe_flagged(self, x: dict[str, float]) -> None:
        """A flagged window: its evidence has been acted on. Keep it out of the baseline and
        restart the short horizons, so the episode stays open only while new windows are
        anomalous again (and resolves once they are not), instead of the decayed evidence of
        one burst keeping it open for a hundred windows."""
        self._scored = None
        for s in self._rates.values():
            for i in range(2, len(s)):
                s[i] = 0.0
        for c in self._cusum.values():
            c[:] = [0.0] * len(c)
        self._frozen.clear()

    def learn_one(self, x: dict[str, float]) -> None:
        a = self.alpha
        _z, _rows, counts, guards, joints, levels = self._evaluate(x)
        self._scored = None
        imps = counts["impressions"]
        typical = self._volume
        vol_w = 1.0
        if typical > 0 and imps > VOLUME_CAP * typical:
            vol_w = VOLUME_CAP * typical / imps
        # the typical volume follows a burst no faster than the cap lets it count
        self._volume = imps if typical <= 0 else typical + a * (
            min(imps, VOLUME_CAP * typical) - typical)
        guard = self.learn_guard
        drift_guard = 0.5 * guard ** 2
        drifting: set[str] = set()
        for name, streams in JOINT_DRIFTS.items():
            if name not in joints or not any(counts[RATES[rate][1]] > 0 for rate in streams):
                continue
            c = self._cusum[name] = joints[name]
            if FROZEN_DRIFT or self._frozen:
                m = 1 + 2 * len(streams)
                self._cusum[name] = c[:m]
                if len(c) > m:  # the drift is up: its start's baselines follow its events
                    self._frozen[name] = c[m:]
                else:
                    self._frozen.pop(name, None)
            if c[0] > JOINT_OFFSET + drift_guard:
                drifting.update(streams)
        rates, cusum, horizons = self._rates, self._cusum, self._horizons
        for (name, num_name, den_name), (horizon, step) in zip(RATE_FIELDS, guards):
            s = rates[name]
            k, den = counts[num_name], counts[den_name]
            # every window enters the short horizons, also one without a denominator (their
            # deviation for this window was taken by _evaluate, before this update)
            for d, i_k, i_n in horizons:
                s[i_k] = d * s[i_k] + k
                s[i_n] = d * s[i_n] + den
            if den <= 0:
                continue
            # The baseline's memory scales with evidence: about COUNT_MEMORY expected events,
            # and never less than 1/alpha windows. A rare count (0.01 complaints a window) is
            # averaged over days, so one complaint cannot quadruple its own baseline; clicks
            # adapt in an hour.
            expected = (s[0] / s[1]) * den if s[1] > 0 else 0.0
            rate_a = min(a, max(expected / COUNT_MEMORY, MIN_ALPHA))
            # A rate whose accumulated evidence is already elevated (below the alert threshold)
            # barely moves it: a ramp or a trickle of reports must not become the
            # baseline it is judged against, while a genuine shift is still absorbed in hours.
            # Such a window enters with weight 0.05, and the past decays correspondingly less.
            guarded = (horizon is not None and horizon > guard) or name in drifting
            if step is not None:
                # a drift in progress must not become the baseline either
                if FROZEN_DRIFT or self._frozen:
                    self._freeze(name, step[0])
                cusum[name][:] = step
                guarded = guarded or step[0] > CUSUM_OFFSET + drift_guard
            w = (0.05 if guarded else 1.0) * vol_w
            s[0] = (1.0 - w * rate_a) * s[0] + w * k
            s[1] = (1.0 - w * rate_a) * s[1] + w * den
        level_state = self._levels
        for name, v, z in levels:
            s = level_state[name]
            mean, var, w = s
            diff = v - mean
            la = 0.05 * a if LEVEL_GUARD and z > guard else a
            incr = la * diff
            keep = 1.0 - la
            s[0] = mean + incr
            s[1] = keep * (var + diff * incr)
            s[2] = keep * w + la
        self._seen += 1

    # -- state ----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        # The returned lists are the model's own (no copy: the engine serialises them at once),
        # so a caller could change them: drop what was computed from them.
        self._scored = None
        # a drift statistic at rest (0, 0, 0) is left out: the common case costs no bytes
        out = {"rates": self._rates, "levels": self._levels,
               "cusum": {k: c for k, c in self._cusum.items() if c[0] > 0.0},
               "volume": self._volume, "seen": self._seen}
        if self._frozen:  # only while a drift is up with FROZEN_DRIFT
            out["frozen"] = self._frozen
        return out

    def load_state(self, data: dict[str, Any]) -> None:
        """Load a stored state. A v3 or v4 state (no ``deception_rate``, no ``cusum``; no joint
        drift) loads too: what it lacks starts from the cohort prior or at rest, as for a new
        advertiser (its typical volume from the next window)."""
        self._scored = None
        rates = {k: [float(v) for v in vals] for k, vals in data["rates"].items()}
        self._rates = {k: rates.get(k, v) for k, v in self._rates.items()}
        self._levels = {k: [float(v) for v in vals] for k, vals in data["levels"].items()}
        cusum = data.get("cusum", {})
        self._cusum = {k: [float(v) for v in cusum.get(k, [0.0] * len(zero))]
                       for k, zero in self._cusum.items()}
        # a drift that is up without its start's baselines (a state of v6 or before) is judged
        # against the current baseline from here on (_cusum_step, _joint_step)
        self._frozen = {k: [float(v) for v in vals] for k, vals in data.get("frozen", {}).items()
                        if k in self._cusum}
        self._volume = float(data.get("volume", 0.0))
        self._seen = int(data["seen"])
