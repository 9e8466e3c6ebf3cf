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


class RobustBaseline(AnomalyDetector):
    """Directional, count-aware per-advertiser baseline over two horizons. State: ~60 floats.

    A River anomaly detector (``river.base.AnomalyDetector``: ``learn_one``/``score_one``), so
    River's tooling (``clone``, ``ThresholdFilter``, pipelines) applies to it as to HST.
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
        self.learn_guard = learn_guard
        self.z_mid = z_mid
        self.z_scale = z_scale
        self.level_var_floor = level_var_floor
        p = dict(DEFAULT_PRIORS)
        p.update(priors or {})
        # Rates: [decayed numerator, decayed denominator, then per short horizon the decayed
        # numerator and denominator]. The long sums start at the cohort prior, worth
        # ``prior_weight`` typical windows of PRIOR_DENOMINATORS volume, and at least
        # PRIOR_EVENTS expected events.
        self._rates = {}
        for name, (_num, den_name) in RATES.items():
            den = max(prior_weight * PRIOR_DENOMINATORS[den_name], PRIOR_EVENTS / p[name])
            self._rates[name] = [p[name] * den, den] + [0.0, 0.0] * len(self.short_decays)
        # Levels: EW mean and variance of log1p(value), with a weight.
        self._levels = {
            name: [math.log1p(p[name]), 0.25, prior_weight * alpha] for name in LEVELS
        }
        # Drift: per CUSUM rate [statistic, events and exposure since it last left zero]; and the
        # typical impressions per window (EW, weight ``alpha``).
        self._cusum = {name: [0.0, 0.0, 0.0] for name in CUSUM_RATIOS}
        # joint drifts: [statistic, then per stream its events and exposure since it left zero]
        for name, streams in JOINT_DRIFTS.items():
            self._cusum[name] = [0.0] * (1 + 2 * len(streams))
        self._volume = 0.0
        self._seen = 0

    @property
    def windows_seen(self) -> int:
        return self._seen

    # -- scoring --------------------------------------------------------------------------
    def _rate_deviation(self, name: str, k: float, den: float,
                        horizons_only: bool = False) -> Contribution | None:
        """The strongest of the window's and the short horizons' deviations for one rate."""
        s = self._rates[name]
        base_rate = s[0] / s[1] if s[1] > 0 else 0.0
        best: Contribution | None = None
        if den > 0 and not horizons_only:
            best = Contribution(name, k / den, base_rate, freeman_tukey(k, base_rate * den))
        for i, d in enumerate(self.short_decays):
            k_s, n_s = d * s[2 + 2 * i] + k, d * s[3 + 2 * i] + den
            if n_s > 0:
                z_s = freeman_tukey(k_s, base_rate * n_s)
                if best is None or z_s > best.deviation:
                    best = Contribution(name, k_s / n_s, base_rate, z_s)
        if name in self._cusum and not horizons_only and self._seen >= DRIFT_WARMUP:
            stat, k_c, n_c = self._cusum_step(name, k, den, base_rate)
            if stat > CUSUM_OFFSET and n_c > 0:
                z_c = math.sqrt(2.0 * (stat - CUSUM_OFFSET))
                if best is None or z_c > best.deviation:
                    best = Contribution(name, k_c / n_c, base_rate, z_c)
        return best

    def _cusum_step(self, name: str, k: float, den: float,
                    base_rate: float) -> tuple[float, float, float]:
        """The drift statistic after this window: log-likelihood ratio of "rate x rho" against
        the baseline, accumulated while positive (a one-sided Poisson CUSUM)."""
        stat, k_c, n_c = self._cusum[name]
        rho = CUSUM_RATIOS[name]
        new = stat + k * math.log(rho) - (rho - 1.0) * base_rate * den
        if new <= 0.0:
            return 0.0, 0.0, 0.0
        if stat <= 0.0:
            k_c, n_c = 0.0, 0.0
        return new, k_c + k, n_c + den

    def _base_rate(self, name: str) -> float:
        s = self._rates[name]
        return s[0] / s[1] if s[1] > 0 else 0.0

    def _joint_step(self, name: str, counts: dict[str, float]) -> list[float]:
        """A joint drift's state after this window: the log-likelihood ratios of its streams
        ("rate x rho" against each baseline) summed and accumulated while positive."""
        old = self._cusum[name]
        new = [old[0]]
        for i, (rate, rho) in enumerate(JOINT_DRIFTS[name].items()):
            num_name, den_name = RATES[rate]
            k, den = max(counts[num_name], 0.0), max(counts[den_name], 0.0)
            new[0] += k * math.log(rho) - (rho - 1.0) * self._base_rate(rate) * den
            if old[0] > 0.0:
                k, den = k + old[1 + 2 * i], den + old[2 + 2 * i]
            new += [k, den]
        if new[0] <= 0.0:
            return [0.0] * len(new)
        return new

    def _joint_deviation(self, name: str, counts: dict[str, float]) -> Contribution | None:
        c = self._joint_step(name, counts)
        streams = list(JOINT_DRIFTS[name].items())
        harm = [j for j, (rate, _rho) in enumerate(streams) if rate not in EVIDENCE_ONLY]
        if c[0] <= JOINT_OFFSET or sum(c[1 + 2 * j] for j in harm) < JOINT_MIN_EVENTS:
            return None
        i = max(harm, key=lambda j: c[1 + 2 * j] * math.log(streams[j][1]))
        rate, k_c, n_c = streams[i][0], c[1 + 2 * i], c[2 + 2 * i]
        if n_c <= 0:
            return None
        return Contribution(rate, k_c / n_c, self._base_rate(rate),
                            math.sqrt(2.0 * (c[0] - JOINT_OFFSET)))

    def deviations(self, x: dict[str, float]) -> list[Contribution]:
        counts = {k: _finite(v) for k, v in derived_counts(x).items()}
        out: list[Contribution] = []
        for name, (num_name, den_name) in RATES.items():
            if name in EVIDENCE_ONLY:
                continue
            c = self._rate_deviation(name, max(counts[num_name], 0.0), max(counts[den_name], 0.0))
            if c is not None:
                out.append(c)
        if self._seen >= DRIFT_WARMUP:
            # a joint drift stands in for its explaining stream's deviation where it is stronger
            for name in JOINT_DRIFTS:
                d = self._joint_deviation(name, counts)
                if d is None:
                    continue
                at = next((i for i, c in enumerate(out) if c.feature == d.feature), None)
                if at is None:
                    out.append(d)
                elif d.deviation > out[at].deviation:
                    out[at] = d
        for name, (direction, evidence_name) in LEVELS.items():
            n = counts.get(evidence_name, _finite(x.get(evidence_name, 0.0)))
            if n <= 0 or name not in x:
                continue
            value = max(_finite(x[name]), 0.0)
            mean, var, _w = self._levels[name]
            z = (math.log1p(value) - mean) / math.sqrt(var + self.level_var_floor)
            z *= direction * math.sqrt(n / (n + 5.0))
            out.append(Contribution(name, value, math.expm1(mean), z))
        return out

    def _combine(self, devs: list[Contribution]) -> float:
        top = sorted((d.deviation for d in devs if d.deviation > 0), reverse=True)[:2]
        if not top:
            return 0.0
        return top[0] + (0.5 * top[1] if len(top) > 1 else 0.0)

    def score_one(self, x: dict[str, float]) -> float:
        return calibrate(self._combine(self.deviations(x)), self.z_mid, self.z_scale)

    def explain(self, x: dict[str, float], top: int = 3) -> list[Contribution]:
        devs = [d for d in self.deviations(x) if d.deviation > 0]
        devs.sort(key=lambda d: d.deviation, reverse=True)
        return devs[:top]

    # -- learning -------------------------------------------------------------------------
    def _accumulate_short(self, counts: dict[str, float]) -> None:
        for name, (num_name, den_name) in RATES.items():
            s = self._rates[name]
            k, n = max(counts[num_name], 0.0), max(counts[den_name], 0.0)
            for i, d in enumerate(self.short_decays):
                s[2 + 2 * i] = d * s[2 + 2 * i] + k
                s[3 + 2 * i] = d * s[3 + 2 * i] + n

    def observe_flagged(self, x: dict[str, float]) -> None:
        """A flagged window: its evidence has been acted on. Keep it out of the baseline and
        restart the short horizons, so the episode stays open only while new windows are
        anomalous again (and resolves once they are not), instead of the decayed evidence of
        one burst keeping it open for a hundred windows."""
        for s in self._rates.values():
            for i in range(2, len(s)):
                s[i] = 0.0
        for c in self._cusum.values():
            c[:] = [0.0] * len(c)

    def learn_one(self, x: dict[str, float]) -> None:
        a = self.alpha
        counts = {k: _finite(v) for k, v in derived_counts(x).items()}
        imps = max(counts["impressions"], 0.0)
        typical = self._volume
        vol_w = 1.0
        if typical > 0 and imps > VOLUME_CAP * typical:
            vol_w = VOLUME_CAP * typical / imps
        # the typical volume follows a burst no faster than the cap lets it count
        self._volume = imps if typical <= 0 else typical + a * (
            min(imps, VOLUME_CAP * typical) - typical)
        drifting: set[str] = set()
        if self._seen >= DRIFT_WARMUP:
            for name, streams in JOINT_DRIFTS.items():
                if not any(counts[RATES[rate][1]] > 0 for rate in streams):
                    continue
                c = self._cusum[name] = self._joint_step(name, counts)
                if c[0] > JOINT_OFFSET + 0.5 * self.learn_guard ** 2:
                    drifting.update(streams)
        for name, (num_name, den_name) in RATES.items():
            den = counts[den_name]
            if den <= 0:
                continue
            k = max(counts[num_name], 0.0)
            s = self._rates[name]
            # The baseline's memory scales with evidence: about COUNT_MEMORY expected events,
            # and never less than 1/alpha windows. A rare count (0.01 complaints a window) is averaged over
            # days, so one complaint cannot quadruple its own baseline; clicks adapt in an hour.
            expected = (s[0] / s[1]) * den if s[1] > 0 else 0.0
            rate_a = min(a, max(expected / COUNT_MEMORY, MIN_ALPHA))
            # A rate whose accumulated evidence is already elevated (below the alert threshold)
            # barely moves it: a ramp or a trickle of reports must not become the
            # baseline it is judged against, while a genuine shift is still absorbed in hours.
            # Such a window enters with weight 0.05, and the past decays correspondingly less.
            dev = self._rate_deviation(name, k, den, horizons_only=True)
            guarded = (dev is not None and dev.deviation > self.learn_guard) or name in drifting
            if name in self._cusum and self._seen >= DRIFT_WARMUP:
                # a drift in progress must not become the baseline either
                c = self._cusum[name]
                c[:] = self._cusum_step(name, k, den, s[0] / s[1] if s[1] > 0 else 0.0)
                guarded = guarded or c[0] > CUSUM_OFFSET + 0.5 * self.learn_guard ** 2
            w = (0.05 if guarded else 1.0) * vol_w
            s[0] = (1.0 - w * rate_a) * s[0] + w * k
            s[1] = (1.0 - w * rate_a) * s[1] + w * den
        self._accumulate_short(counts)
        for name, (direction, evidence_name) in LEVELS.items():
            n = counts.get(evidence_name, _finite(x.get(evidence_name, 0.0)))
            if n <= 0 or name not in x:
                continue
            v = math.log1p(max(_finite(x[name]), 0.0))
            s = self._levels[name]
            mean, var, w = s
            diff = v - mean
            la = a  # the deviation as deviations() computes it
            if LEVEL_GUARD and (direction * diff / math.sqrt(var + self.level_var_floor)
                                * math.sqrt(n / (n + 5.0))) > self.learn_guard:
                la = 0.05 * a
            incr = la * diff
            s[0] = mean + incr
            s[1] = (1.0 - la) * (var + diff * incr)
            s[2] = (1.0 - la) * w + la
        self._seen += 1

    # -- state ----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        # a drift statistic at rest (0, 0, 0) is left out: the common case costs no bytes
        return {"rates": self._rates, "levels": self._levels,
                "cusum": {k: c for k, c in self._cusum.items() if c[0] > 0.0},
                "volume": self._volume, "seen": self._seen}

    def load_state(self, data: dict[str, Any]) -> None:
        """Load a stored state. A v3 or v4 state (no ``deception_rate``, no ``cusum``; no joint
        drift) loads too: what it lacks starts from the cohort prior or at rest, as for a new
        advertiser (its typical volume from the next window)."""
        rates = {k: [float(v) for v in vals] for k, vals in data["rates"].items()}
        self._rates = {k: rates.get(k, v) for k, v in self._rates.items()}
        self._levels = {k: [float(v) for v in vals] for k, vals in data["levels"].items()}
        cusum = data.get("cusum", {})
        self._cusum = {k: [float(v) for v in cusum.get(k, [0.0] * len(zero))]
                       for k, zero in self._cusum.items()}
        self._volume = float(data.get("volume", 0.0))
        self._seen = int(data["seen"])
