"""A model family in one file: the mean training target for each value of one feature.

The worked example of docs/adding-a-model.md; tests/test_model_contract.py checks it as it checks
fxml's own families.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from fxml.data.split import DataSplit
from fxml.errors import require
from fxml.models.base import StepCallback, TabularModel, training_rows
from fxml.models.params import ModelParams

BLOCK_ROWS = 65_536


@dataclass
class FeatureMeanParams(ModelParams):
    """The family's parameters, defaults and checks (the config schema is derived from them)."""

    family: ClassVar[str] = "feature_mean"
    class_path: ClassVar[str] = "feature_mean.FeatureMeanModel"

    feature: str = "feature_0"  # the feature whose values group the rows
    shrinkage: float = 0.0  # rows of prior weight pulling each group's mean to the overall mean

    def __post_init__(self) -> None:
        require(self.shrinkage >= 0, "model.shrinkage", "must be >= 0", self.shrinkage)


class FeatureMeanModel(TabularModel):
    params_class = FeatureMeanParams
    params: FeatureMeanParams
    # holds nothing per row beyond the int8 matrix: the default MemoryProfile() fits

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        self.column = -1
        self.means = np.zeros(5)

    @property
    def uses_validation(self) -> bool:
        return False  # nothing to early-stop: the runner keeps no inner holdout for it

    def fit(self, train: DataSplit, validation: DataSplit | None = None,
            on_step: StepCallback | None = None) -> FeatureMeanModel:
        require(self.params.feature in train.feature_names, "model.feature",
                "must name a training feature", self.params.feature)
        self.column = train.feature_names.index(self.params.feature)
        rows = training_rows(train)  # the rows whose target is known, read a block at a time
        sums, counts = np.zeros(5), np.zeros(5)
        for start in range(0, len(rows), BLOCK_ROWS):
            values = np.asarray(rows.block(start, start + BLOCK_ROWS)[:, self.column], dtype=np.int64)
            target = rows.target[start : start + BLOCK_ROWS]
            sums += np.bincount(values, weights=target, minlength=5)
            counts += np.bincount(values, minlength=5)
        overall, prior = float(rows.target.mean()), self.params.shrinkage
        self.means = (sums + prior * overall) / np.maximum(counts + prior, 1e-12)
        if on_step is not None:
            on_step(1, 1, {})
        return self

    def predict_float32(self, features: np.ndarray) -> np.ndarray:
        return self.means[np.asarray(features[:, self.column], dtype=np.int64)]

    def save_state(self, directory: Path) -> None:
        np.savez(directory / "means.npz", column=self.column, means=self.means)

    def load_state(self, directory: Path) -> None:
        with np.load(directory / "means.npz") as state:
            self.column, self.means = int(state["column"]), state["means"]
