"""Gradient-boosted trees: what LightGBM and XGBoost share behind the common contract.

Each family lives in its own module (``fxml.models.lightgbm_model``, ``fxml.models.xgboost_model``)
so that a logged LightGBM model needs no XGBoost where it is loaded, and the other way round.
Neither family sees a full float copy of the features: LightGBM reads float32 row batches through
a ``lgb.Sequence``; XGBoost's ``QuantileDMatrix`` reads an in-memory int8 matrix in place and a
disk-backed one block by block through a ``DataIter`` into external memory. Once a family has
built its own (binned) dataset the runner's int8 train matrix is released, and a validation
dataset is built only when training reads it (early stopping, ``valid_corr_every``).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

import numpy as np

from fxml.data.memory import MemoryProfile
from fxml.data.split import DataSplit
from fxml.models.base import TabularModel, labelled_rows
from fxml.models.params import GBDTParams
from fxml.scoring import corr_by_era

GPU_ACCELERATORS = ("gpu", "cuda")
# where each family's class lives; ``fxml.models.gbdt.<Class>`` still names it (logged manifests
# and configs written before the split)
FAMILY_MODULES = {"LightGBMModel": "fxml.models.lightgbm_model",
                  "XGBoostModel": "fxml.models.xgboost_model"}


class GBDTModel(TabularModel):
    params: GBDTParams
    # LightGBM's bins of 5-valued features: measured 1.0 byte per value at full size (2.75M x 2,748);
    # both families build their dataset reading the int8 rows a block at a time
    memory = MemoryProfile(dataset_bytes_per_value=1.0, reads_rows_from_store=True)

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.booster: Any = None

    @property
    def wants_gpu(self) -> bool:
        return self.params.device in GPU_ACCELERATORS

    @property
    def uses_validation(self) -> bool:
        return bool(self.params.early_stopping_rounds or self.params.valid_corr_every)

    def _validation_set(self, validation: DataSplit | None) -> DataSplit | None:
        if not self.uses_validation or validation is None or validation.target is None:
            return None
        labelled = labelled_rows(validation)
        return labelled if len(labelled) else None


class _ValidCorr:
    """Mean per-era CORR of the booster's running validation scores, every ``every`` rounds.

    The boosters hand their incrementally kept validation predictions to a custom metric each
    round; scoring only every few rounds keeps that cheap on a large validation set. Between
    scorings it repeats the last value, which ``fresh`` tells apart.
    """

    name = "corr"

    def __init__(self, validation: DataSplit, every: int) -> None:
        self.target, self.eras, self.every = validation.target, validation.eras, every
        self.rounds, self.value, self.fresh = 0, float("nan"), False

    def __call__(self, predictions: np.ndarray) -> float:
        self.rounds += 1
        self.fresh = self.rounds % self.every == 0
        if self.fresh:
            per_era = corr_by_era(np.asarray(predictions, dtype=np.float64), self.target, self.eras)
            self.value = float(per_era.mean())
        return self.value


def __getattr__(name: str) -> Any:
    if name in FAMILY_MODULES:
        return getattr(import_module(FAMILY_MODULES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
