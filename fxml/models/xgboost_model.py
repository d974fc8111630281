"""XGBoost behind the common contract: a ``QuantileDMatrix`` reading the int8 rows in place or
block by block from the int8 store, or external memory when the memory plan is on disk."""

from __future__ import annotations

import logging
import shutil
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from fxml.data.memory import MemoryProfile, StoreRows
from fxml.data.split import DataSplit, TrainingRows, training_rows
from fxml.errors import FxmlError
from fxml.models.base import StepCallback, predict_chunk_rows
from fxml.models.devices import xgboost_device
from fxml.models.gbdt import GBDTModel, _ValidCorr
from fxml.models.params import XGBoostParams

log = logging.getLogger("fxml.models.gbdt")
# int8 bytes of a block fed to an in-memory QuantileDMatrix: its buffer is held beside the matrix
# being built, at most of a run's memory (external memory keeps prediction-sized blocks, since
# each block becomes one of its pages)
IN_MEMORY_BLOCK_BYTES = 4 * 2**20


class _StepReporter(xgb.callback.TrainingCallback):
    def __init__(self, on_step: StepCallback, total: int, corr: _ValidCorr | None) -> None:
        super().__init__()
        self.on_step, self.total, self.corr = on_step, total, corr

    def after_iteration(self, model: Any, epoch: int, evals_log: dict[str, Any]) -> bool:
        metrics = {f"{data}_{name}": values[-1]
                   for data, by_metric in evals_log.items() for name, values in by_metric.items()
                   if name != _ValidCorr.name or (self.corr is not None and self.corr.fresh)}
        self.on_step(epoch + 1, self.total, metrics)
        return False


class _Int8Blocks(xgb.DataIter):
    """Feeds XGBoost a split's labelled rows in blocks, each read from the store file (nothing of
    it stays mapped in the process; XGBoost reads every block in several passes) or gathered from
    the in-memory matrix where some rows are left out."""

    def __init__(self, rows: TrainingRows, cache_prefix: str | None = None,
                 block_rows: int | None = None) -> None:
        super().__init__(cache_prefix=cache_prefix)
        self.rows, self.position = rows, 0
        self.block_rows = block_rows or predict_chunk_rows(rows.n_features)
        # one buffer for every block read or gathered: XGBoost is done with a block when it asks
        # for the next one
        copied = StoreRows.of(rows.features) is not None or rows.whole is None
        self.buffer = np.empty((min(self.block_rows, len(rows)), rows.n_features), dtype=np.int8) \
            if copied else None
        self.block: np.ndarray | None = None

    def next(self, input_data: Callable[..., None]) -> bool:
        start = self.position
        if start >= len(self.rows):
            self.block = None
            return False
        stop = start + self.block_rows
        # ``input_data`` only points XGBoost at the rows: it reads them after this returns, so
        # the block is kept until XGBoost asks for the next one
        self.block = self.rows.block(start, stop, self.buffer)
        input_data(data=self.block, label=self.rows.target[start:stop])
        self.position = stop
        return True

    def reset(self) -> None:
        self.block = None
        self.position = 0


def quantile_matrix(split: DataSplit, max_bin: int, ref: xgb.DMatrix | None = None) -> xgb.DMatrix:
    """A ``QuantileDMatrix`` of the split's labelled rows: reading an in-memory int8 matrix in
    place, or fed block by block (from the int8 store, or where rows without a target are left
    out); an ``ExtMemQuantileDMatrix`` (pages in a temporary folder) when the memory plan puts the
    model's dataset on disk too."""
    rows = training_rows(split)
    if split.storage == "memory" and rows.whole is not None:
        return xgb.QuantileDMatrix(rows.whole, label=rows.target, max_bin=max_bin, ref=ref)
    if split.storage != "disk":
        block_rows = max(1, IN_MEMORY_BLOCK_BYTES // max(rows.n_features, 1))
        return xgb.QuantileDMatrix(_Int8Blocks(rows, block_rows=block_rows), max_bin=max_bin, ref=ref)
    cache = Path(tempfile.mkdtemp(prefix="fxml-xgb-"))
    blocks = _Int8Blocks(rows, str(cache / split.name))
    log.info("model: XGBoost reads the %s split from the int8 store into external memory", split.name)
    matrix = xgb.ExtMemQuantileDMatrix(blocks, max_bin=max_bin, ref=ref)
    weakref.finalize(matrix, shutil.rmtree, cache, ignore_errors=True)
    return matrix


class XGBoostModel(GBDTModel):
    params_class = XGBoostParams
    params: XGBoostParams
    # a QuantileDMatrix in memory keeps ~2.15 bytes per value (its gradient index and a
    # column-major copy for hist) and peaks at ~2.35 while it is built (max_bin=8; ~3.3 at 64);
    # under a disk plan, ExtMemQuantileDMatrix keeps its pages on disk
    memory = MemoryProfile(dataset_bytes_per_value=2.4, streamed_dataset_bytes_per_value=0.0,
                           reads_rows_from_store=True)

    def _params(self) -> dict[str, Any]:
        o = self.params
        params = {
            "objective": "reg:squarederror",
            "tree_method": "hist",
            "device": xgboost_device(self.wants_gpu),
            "eta": o.learning_rate,
            "max_depth": max(o.max_depth, 0),
            "max_leaves": o.num_leaves,
            "colsample_bytree": o.colsample_bytree,
            "subsample": o.subsample,
            # squared error has unit hessians, so this is a minimum row count per leaf
            "min_child_weight": o.min_child_samples,
            "lambda": o.reg_lambda,
            "max_bin": o.max_bin,
            "seed": o.seed,
            "verbosity": 0,
        }
        if o.n_jobs > 0:
            params["nthread"] = o.n_jobs
        return {**params, **o.params}

    def fit(self, train: DataSplit, validation: DataSplit | None = None,
            on_step: StepCallback | None = None) -> XGBoostModel:
        params = self._params()
        total = self.params.n_estimators
        dtrain = quantile_matrix(train, params["max_bin"])
        evals, callbacks, metric = [], [], None
        valid = self._validation_set(validation)
        corr = _ValidCorr(valid, self.params.valid_corr_every) \
            if valid is not None and self.params.valid_corr_every else None
        if valid is not None:
            evals = [(quantile_matrix(valid, params["max_bin"], ref=dtrain), "valid")]
        if corr is not None:
            metric = lambda preds, _: (corr.name, corr(preds))  # noqa: E731
            # early stopping follows the last metric: keep it on the squared error
            params = {**params, "eval_metric": "rmse"}
        if on_step is not None:
            callbacks.append(_StepReporter(on_step, total, corr))
        log.info("model: XGBoost on %s, %d rounds", params["device"], total)
        try:
            self.booster = xgb.train(
                params, dtrain, num_boost_round=total, evals=evals, verbose_eval=False,
                early_stopping_rounds=self.params.early_stopping_rounds if evals else None,
                callbacks=callbacks, custom_metric=metric,
            )
        except xgb.core.XGBoostError as error:
            raise FxmlError(f"XGBoost failed: {str(error).splitlines()[0]}") from None
        if evals and self.params.early_stopping_rounds:
            self.booster = self.booster[: self.booster.best_iteration + 1]
        # a fresh booster from the model's bytes holds no DMatrix: the quantised training data
        # is freed before validation is predicted
        self.booster = xgb.Booster(model_file=self.booster.save_raw())
        return self

    def predict_float32(self, features: np.ndarray) -> np.ndarray:
        return self.booster.inplace_predict(features)

    def save_state(self, directory: Path) -> None:
        self.booster.save_model(directory / "model.ubj")

    def load_state(self, directory: Path) -> None:
        self.booster = xgb.Booster()
        self.booster.load_model(directory / "model.ubj")
