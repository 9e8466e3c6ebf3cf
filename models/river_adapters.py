"""River detectors behind the model protocol.

River detectors return raw scores on their own scales (HalfSpaceTrees: mass-based in [0, 1];
StandardAbsoluteDeviation: unbounded). The adapter calibrates each to a comparable risk score:
it keeps an exponentially weighted mean and variance of the detector's own raw scores and maps
the raw score's deviation through the same logistic as ``robust-baseline`` (score before learn).

State crosses the changelog through ``models.serialization.dumps_river`` (a versioned envelope
and a restricted unpickler that admits only River and builtin classes, with a size bound).
"""

from __future__ import annotations

import math
from typing import Any, Callable

from models.baseline import _finite, calibrate
from models.protocol import Contribution
from models import serialization

# The inputs River detectors see: rates and levels in comparable units (log1p for volumes).
RIVER_FEATURES = (
    "ctr", "fast_click_share", "short_dwell_share", "report_rate", "hide_rate",
    "not_interested_rate", "complaint_rate", "low_rating_share", "impressions_per_user",
    "top_region_share", "mean_dwell_ms", "median_click_delay_ms", "impressions",
)
MIN_CALIBRATION_SAMPLES = 10
SAD_SCORE_CAP = 50.0  # SAD divides by the std: a feature constant so far would score ~1e10
_LOG_FEATURES = {"impressions", "mean_dwell_ms", "median_click_delay_ms", "impressions_per_user"}


def river_input(x: dict[str, float]) -> dict[str, float]:
    out = {}
    for name in RIVER_FEATURES:
        v = max(_finite(x.get(name, 0.0)), 0.0)
        out[name] = math.log1p(v) if name in _LOG_FEATURES else min(v, 1.0)
    return out


class CalibratedRiver:
    """Wraps a River anomaly detector (``learn_one``/``score_one``) with score calibration."""

    def __init__(self, make_detector: Callable[[], Any], alpha: float = 0.05,
                 z_mid: float = 5.0, z_scale: float = 0.8) -> None:
        self._make = make_detector
        self.detector = make_detector()
        self.alpha = alpha
        self.z_mid = z_mid
        self.z_scale = z_scale
        self._raw_mean = 0.0
        self._raw_var = 0.0
        self._calibrated = 0  # raw scores seen by the calibrator
        self._seen = 0

    @property
    def windows_seen(self) -> int:
        return self._seen

    def _raw(self, x: dict[str, float]) -> float:
        return _finite(self.detector.score_one(river_input(x)))

    def _ready(self) -> bool:
        # HalfSpaceTrees scores 0 until its first reference window is full; calibrating on
        # those zeros would give a near-zero variance and flag everything after it.
        return not getattr(self.detector, "_first_window", False)

    def score_one(self, x: dict[str, float]) -> float:
        if self._calibrated < MIN_CALIBRATION_SAMPLES or not self._ready():
            return 0.0
        raw = self._raw(x)
        z = (raw - self._raw_mean) / math.sqrt(self._raw_var + 1e-4)
        return calibrate(z, self.z_mid, self.z_scale)

    def explain(self, x: dict[str, float], top: int = 3) -> list[Contribution]:
        return []

    def learn_one(self, x: dict[str, float]) -> None:
        if self._ready():
            raw = self._raw(x)
            a = self.alpha if self._calibrated > 0 else 1.0
            diff = raw - self._raw_mean
            self._raw_mean += a * diff
            self._raw_var = (1 - a) * (self._raw_var + a * diff * diff)
            self._calibrated += 1
        self.detector.learn_one(river_input(x))
        self._seen += 1

    def start_advertiser(self) -> None:
        """A cohort prototype becomes one advertiser's model: keep what the detector and the
        calibrator learned, but count windows (for the decision's warm-up) from zero."""
        self._seen = 0

    def state(self) -> dict[str, Any]:
        return {
            "detector": serialization.dumps_river(self.detector),
            "raw": [self._raw_mean, self._raw_var],
            "calibrated": self._calibrated,
            "seen": self._seen,
        }

    def load_state(self, data: dict[str, Any]) -> None:
        self.detector = serialization.loads_river(data["detector"])
        self._raw_mean, self._raw_var = (float(v) for v in data["raw"])
        self._calibrated = int(data["calibrated"])
        self._seen = int(data["seen"])


def half_space_trees(n_trees: int = 5, height: int = 6, window_size: int = 50,
                     seed: int = 42) -> CalibratedRiver:
    from river import anomaly

    # Inputs are already scaled to about [0, 1] by river_input (rates) or log1p (volumes);
    # limits tell HST the range of each feature instead of a MinMaxScaler learning it.
    limits = {name: (0.0, 12.0 if name in _LOG_FEATURES else 1.0) for name in RIVER_FEATURES}
    return CalibratedRiver(
        lambda: anomaly.HalfSpaceTrees(n_trees=n_trees, height=height, window_size=window_size,
                                       limits=limits, seed=seed)
    )


class PerFeatureSAD:
    """River's StandardAbsoluteDeviation is univariate (it scores ``y``): one per feature, max."""

    def __init__(self) -> None:
        from river import anomaly

        self.by_feature = {name: anomaly.StandardAbsoluteDeviation() for name in RIVER_FEATURES}

    def score_one(self, x: dict[str, float]) -> float:
        return max(min(self.by_feature[k].score_one(None, v), SAD_SCORE_CAP)
                   for k, v in x.items())

    def learn_one(self, x: dict[str, float]) -> None:
        for k, v in x.items():
            self.by_feature[k].learn_one(None, v)


def standard_absolute_deviation() -> CalibratedRiver:
    return CalibratedRiver(PerFeatureSAD)


def one_class_svm(nu: float = 0.1) -> CalibratedRiver:
    """River's online OneClassSVM (SGD) on the scaled features: a linear boundary around the
    advertiser's normal windows. Small state (one weight per feature)."""
    from river import anomaly

    return CalibratedRiver(lambda: anomaly.OneClassSVM(nu=nu))
