"""The ``scorer=numerai`` group: gathers the reference columns a split needs and scores per era."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fxml.data.loader import DataSplit, NumeraiData
from fxml.errors import FxmlError
from fxml.models.base import TabularModel
from fxml.scoring import score_eras, summarize
from fxml.scoring.importance import feature_groups, permutation_importance

log = logging.getLogger(__name__)


@dataclass
class Scores:
    per_era: pd.DataFrame
    summary: dict[str, float]
    references: dict[str, np.ndarray] = field(default_factory=dict)
    benchmark_column: str | None = None


def payout_score(per_era: pd.DataFrame, corr_weight: float, mmc_weight: float, clip: float) -> pd.Series:
    """Numerai's per-round payout factor before stake: clip(c_corr CORR + c_mmc MMC)."""
    return (corr_weight * per_era["corr"] + mmc_weight * per_era["mmc"]).clip(-clip, clip)


class NumeraiScorer:
    def __init__(
        self,
        meta_model: bool = True,
        benchmark: bool = True,
        benchmark_column: str | None = None,
        fnc: bool = True,
        feature_exposure: bool = True,
        payout_corr_weight: float = 0.5,
        payout_mmc_weight: float = 2.0,
        payout_clip: float = 0.05,
        importance: str = "none",
        importance_repeats: int = 1,
        importance_seed: int = 0,
    ) -> None:
        self.use_meta_model, self.use_benchmark = meta_model, benchmark
        self.benchmark_column = benchmark_column
        self.use_features = fnc or feature_exposure
        self.keep = {"fnc": fnc, "feature_exposure": feature_exposure}
        self.payout = (payout_corr_weight, payout_mmc_weight, payout_clip)
        self.importance_of = importance
        self.importance_repeats, self.importance_seed = importance_repeats, importance_seed

    def importance(self, model: TabularModel, split: DataSplit, data: NumeraiData) -> pd.DataFrame | None:
        """Permutation importance of features or feature groups; None when not asked for."""
        if self.importance_of == "none":
            return None
        groups = None
        if self.importance_of == "groups":
            groups = feature_groups(data.metadata["feature_sets"], split.feature_names)
        return permutation_importance(model, split, groups, self.importance_repeats, self.importance_seed)

    def score(self, predictions: np.ndarray, split: DataSplit, data: NumeraiData) -> Scores:
        if split.target is None:
            raise FxmlError(f"the {split.name} split has no targets to score against")
        if np.isnan(predictions).any():
            raise FxmlError(f"the model predicted NaN for {np.isnan(predictions).sum()} row(s)")
        references: dict[str, np.ndarray] = {}
        benchmark_name = None
        if self.use_meta_model:
            references["meta_model"] = self._optional(lambda: data.meta_model(split), "MMC")
        if self.use_benchmark:
            found = self._optional(lambda: data.benchmark(split, self.benchmark_column), "BMC")
            if found is not None:
                benchmark_name, references["benchmark"] = found
        references = {k: v for k, v in references.items() if v is not None}
        per_era = score_eras(
            predictions, split.target, split.eras,
            meta_model=references.get("meta_model"),
            benchmark=references.get("benchmark"),
            features=split.features if self.use_features else None,
        )
        per_era = per_era.drop(columns=[c for c, keep in self.keep.items() if not keep and c in per_era])
        if "mmc" in per_era:
            per_era["payout"] = payout_score(per_era, *self.payout)
        return Scores(per_era, summarize(per_era), references, benchmark_name)

    @staticmethod
    def _optional(load, metric: str):  # type: ignore[no-untyped-def]
        try:
            return load()
        except FxmlError as error:
            log.warning("scoring: no %s (%s)", metric, error)
            return None
