"""What a search optimises: one logged summary metric, or a weighted sum of several."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from fxml.errors import FxmlError
from fxml.scoring.summary import statistics_of

SCORED = ("corr", "mmc", "bmc", "fnc", "feature_exposure", "payout", "mpc", "tb200_corr",
          "meta_model_rank_corr", "exposure_dissimilarity")
KNOWN_METRICS = frozenset(
    [f"{column}_{stat}" for column in SCORED for stat in statistics_of(column)]
    + ["feature_exposure_max", "n_eras", "train_seconds", "payout_apy", "payout_calmar"]
    # cross-validation (cv=walk_forward|era_kfold): the same summaries over out-of-fold eras
    + [f"cv_{column}_{stat}" for column in SCORED for stat in statistics_of(column)] + ["cv_n_eras"]
)


_TERM = re.compile(r"\s*([+-])?\s*(?:(\d+(?:\.\d*)?(?:e[+-]?\d+)?|\.\d+)\s*\*\s*)?([a-z_]+)\s*")


@dataclass(frozen=True)
class Objective:
    """A logged summary metric (``corr_sharpe``) or a weighted sum of several
    (``0.5*corr_mean + 2*mmc_mean``, Numerai's payout weighting)."""

    weights: Mapping[str, float]

    @classmethod
    def parse(cls, text: str) -> Objective:
        weights: dict[str, float] = {}
        position = 0
        while position < len(text):
            match = _TERM.match(text, position)
            if match is None or match.end() == position or (weights and match.group(1) is None):
                raise FxmlError(f"hydra.sweeper.objective: cannot read {text!r}; write a metric such as "
                                "corr_sharpe or a sum such as 0.5*corr_mean + 2*mmc_mean")
            sign = -1.0 if match.group(1) == "-" else 1.0
            name = match.group(3)
            weights[name] = weights.get(name, 0.0) + sign * float(match.group(2) or 1.0)
            position = match.end()
        if not weights:
            raise FxmlError("hydra.sweeper.objective is empty")
        unknown = sorted(name for name in weights if name not in KNOWN_METRICS)
        if unknown:
            raise FxmlError(
                f"hydra.sweeper.objective: unknown metric {unknown[0]!r}; logged metrics are "
                f"{', '.join(sorted(KNOWN_METRICS))}"
            )
        return cls(weights)

    @property
    def label(self) -> str:
        if len(self.weights) == 1 and next(iter(self.weights.values())) == 1.0:
            return next(iter(self.weights))
        return " + ".join(f"{w:g}*{name}" for name, w in self.weights.items()).replace("+ -", "- ")

    def value(self, metrics: Mapping[str, float]) -> float:
        missing = [name for name in self.weights if name not in metrics]
        if missing:
            raise FxmlError(f"the run logged no {missing[0]} (is its reference data missing?)")
        total = sum(w * float(metrics[name]) for name, w in self.weights.items())
        if not math.isfinite(total):
            raise FxmlError(f"objective {self.label} is not finite ({total})")
        return total
