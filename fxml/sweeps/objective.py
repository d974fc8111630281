"""What a search optimises: one logged summary metric, or a weighted sum of several."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from fxml.errors import FxmlError

SCORED = ("corr", "mmc", "bmc", "fnc", "feature_exposure", "payout")
STATISTICS = ("mean", "std", "sharpe", "max_drawdown")
KNOWN_METRICS = frozenset(
    [f"{column}_{stat}" for column in SCORED for stat in STATISTICS]
    + ["feature_exposure_max", "n_eras", "train_seconds"]
)


@dataclass(frozen=True)
class Objective:
    """``metric`` alone, or ``weights`` {metric: weight} summed (a payout-style objective)."""

    weights: Mapping[str, float]

    @classmethod
    def from_config(cls, metric: str | None, weights: Mapping[str, float] | None) -> Objective:
        if bool(metric) == bool(weights):
            raise FxmlError("hydra.sweeper.objective: give either metric or weights, not both or neither")
        chosen = {metric: 1.0} if metric else dict(weights or {})
        unknown = sorted(name for name in chosen if name not in KNOWN_METRICS)
        if unknown:
            raise FxmlError(
                f"hydra.sweeper.objective: unknown metric {unknown[0]!r}; logged metrics are "
                f"{', '.join(sorted(KNOWN_METRICS))}"
            )
        return cls(chosen)

    @property
    def label(self) -> str:
        if len(self.weights) == 1 and next(iter(self.weights.values())) == 1.0:
            return next(iter(self.weights))
        return " + ".join(f"{w:g} x {name}" for name, w in self.weights.items())

    def value(self, metrics: Mapping[str, float]) -> float:
        missing = [name for name in self.weights if name not in metrics]
        if missing:
            raise FxmlError(f"the run logged no {missing[0]} (is its reference data missing?)")
        total = sum(w * float(metrics[name]) for name, w in self.weights.items())
        if not math.isfinite(total):
            raise FxmlError(f"objective {self.label} is not finite ({total})")
        return total
