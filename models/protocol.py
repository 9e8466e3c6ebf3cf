"""The model protocol: as small as River's anomaly detectors, plus state save/load.

A model instance belongs to one advertiser. The engine calls, per closed window,
``score_one(x)`` first and then, unless the decision flagged the window, ``learn_one(x)``.

* ``score_one`` returns a *calibrated* risk score in [0, 1]: raw detector scores are not comparable
  across detectors, so calibration belongs to the adapter, and one threshold works for every spec.
* ``explain(x)`` names the features that drove the score: value, the advertiser's baseline and the
  deviation, for the alert's reasons. Models that cannot explain return ``[]``.
* ``state()`` returns JSON-able data; ``load_state(data)`` restores it exactly (same scores).
  No pickle of arbitrary objects crosses the changelog (see ``models/serialization.py``).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, runtime_checkable


class Contribution(NamedTuple):
    feature: str
    value: float
    baseline: float
    deviation: float  # signed, in standard units (z-like), positive = riskier


@runtime_checkable
class RiskModel(Protocol):
    def score_one(self, x: dict[str, float]) -> float: ...

    def learn_one(self, x: dict[str, float]) -> None: ...

    def explain(self, x: dict[str, float], top: int = 3) -> list[Contribution]: ...

    def state(self) -> dict[str, Any]: ...

    def load_state(self, data: dict[str, Any]) -> None: ...

    @property
    def windows_seen(self) -> int: ...


def learn_after_decision(model: Any, x: dict[str, float], flagged: bool) -> None:
    """Score before learn, and never learn the anomalies we flag (River's
    ``protect_anomaly_detector``): a normal window is learned; a flagged one only goes to the
    model's ``observe_flagged`` when it has one (models may still keep the evidence)."""
    if not flagged:
        model.learn_one(x)
        return
    observe = getattr(model, "observe_flagged", None)
    if observe is not None:
        observe(x)
