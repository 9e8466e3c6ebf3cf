"""Registry of model specs: a name maps to a version, a factory and its parameters.

Adding a model is one file with a factory plus one ``register(...)`` line below; the conformance
suite (tests/test_model_conformance.py) then runs against it automatically.

>>> create("robust-baseline").windows_seen
0
>>> get_spec("nope")
Traceback (most recent call last):
...
models.registry.UnknownModel: unknown model spec 'nope'; valid: gaussian-sad, hst, river-ocsvm, robust-baseline
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from models.baseline import RobustBaseline
from models.protocol import RiskModel
from models.river_adapters import half_space_trees, one_class_svm, standard_absolute_deviation


class UnknownModel(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str
    factory: Callable[..., RiskModel]
    params: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    # > 0: new models copy a prototype that learned this many cohort windows (models/cohort.py)
    warm_start: int = 0

    def create(self) -> RiskModel:
        if self.warm_start:
            from models.cohort import warm_model

            return warm_model(self.name, self.version, self.factory, self.params,
                              self.warm_start)
        return self.factory(**self.params)


REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        valid = ", ".join(sorted(REGISTRY))
        raise UnknownModel(f"unknown model spec {name!r}; valid: {valid}") from None


def create(name: str) -> RiskModel:
    return get_spec(name).create()


register(ModelSpec(
    "robust-baseline", "6", RobustBaseline, {},
    "Count-aware directional per-advertiser baseline (Freeman-Tukey on Poisson counts, EW "
    "log-levels). Default: ~1.5 KiB of state, explains its scores."))
# hst and river-ocsvm start warm from the cohort prototype (v2; v1 started from zero).
register(ModelSpec(
    "hst", "2", half_space_trees, {"n_trees": 5, "height": 6, "window_size": 50},
    "River HalfSpaceTrees (5 trees, height 6) on scaled features, calibrated, cohort warm "
    "start. ~12 KiB state.", warm_start=1500))
# gaussian-sad stays cold: warm-started, it measured worse (docs/models.md, "Cold start").
register(ModelSpec(
    "gaussian-sad", "1", standard_absolute_deviation, {},
    "River StandardAbsoluteDeviation per feature, max-combined, calibrated."))
register(ModelSpec(
    "river-ocsvm", "2", one_class_svm, {"nu": 0.1},
    "River OneClassSVM (online SGD) on scaled features, calibrated, cohort warm start. "
    "~1 KiB state.", warm_start=1500))
