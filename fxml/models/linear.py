"""Ridge regression, the linear baseline, solved from int8 features in row chunks.

Accumulating the Gram matrix chunk by chunk keeps memory at one float64 block however many rows
there are, where scikit-learn would first copy the whole matrix to float64.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from fxml.data.split import DataSplit, TrainingRows, training_rows
from fxml.models.base import StepCallback, TabularModel
from fxml.models.params import RidgeParams

log = logging.getLogger(__name__)
CHUNK_ROWS = 65_536
# float64 bytes of one block: at 2,748 features 65,536 rows would be 1.4 GB
CHUNK_BYTES = 64 * 2**20


class RidgeModel(TabularModel):
    params_class = RidgeParams
    params: RidgeParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.coef: np.ndarray | None = None
        self.intercept = 0.0

    @property
    def uses_validation(self) -> bool:
        """A closed-form solve: no early stopping, so no inner holdout is carved for it."""
        return False

    def fit(self, train: DataSplit, validation: DataSplit | None = None,
            on_step: StepCallback | None = None) -> RidgeModel:
        rows = training_rows(train)
        n, k = len(rows), rows.n_features
        y = rows.target.astype(np.float64)
        fit_intercept = self.params.fit_intercept
        x_mean = self._column_means(rows) if fit_intercept else np.zeros(k)
        y_mean = y.mean() if fit_intercept else 0.0
        gram, moment = np.zeros((k, k)), np.zeros(k)
        step_rows = max(1, min(CHUNK_ROWS, CHUNK_BYTES // (8 * k)))
        chunks = range(0, n, step_rows)
        for step, start in enumerate(chunks, 1):
            block = rows.block(start, start + step_rows).astype(np.float64) - x_mean
            gram += block.T @ block
            moment += block.T @ (y[start : start + step_rows] - y_mean)
            if on_step is not None:
                on_step(step, len(chunks), {})
        gram[np.diag_indices(k)] += self.params.alpha
        self.coef = np.linalg.lstsq(gram, moment, rcond=None)[0]
        self.intercept = float(y_mean - x_mean @ self.coef)
        log.info("model: ridge (alpha=%g) on %d rows x %d features", self.params.alpha, n, k)
        return self

    @staticmethod
    def _column_means(rows: TrainingRows) -> np.ndarray:
        total = np.zeros(rows.n_features)
        for start in range(0, len(rows), CHUNK_ROWS):
            total += rows.block(start, start + CHUNK_ROWS).sum(axis=0, dtype=np.int64)
        return total / len(rows)

    def predict_float32(self, features: np.ndarray) -> np.ndarray:
        assert self.coef is not None, "fit or load the model first"
        return features.astype(np.float64) @ self.coef + self.intercept

    def save_state(self, directory: Path) -> None:
        assert self.coef is not None, "fit the model first"
        np.savez(directory / "ridge.npz", coef=self.coef, intercept=self.intercept)

    def load_state(self, directory: Path) -> None:
        state = np.load(directory / "ridge.npz")
        self.coef, self.intercept = state["coef"], float(state["intercept"])
