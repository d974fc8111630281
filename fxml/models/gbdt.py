"""Gradient-boosted trees: LightGBM and XGBoost behind the common contract.

Neither family sees a full float copy of the features: LightGBM reads float32 row batches through
a ``lgb.Sequence``; XGBoost's ``QuantileDMatrix`` reads an in-memory int8 matrix in place and a
disk-backed one block by block through a ``DataIter`` into external memory. Once a family has
built its own (binned) dataset the runner's int8 train matrix is released, and a validation
dataset is built only when training reads it (early stopping, ``valid_corr_every``).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import lightgbm as lgb
import numpy as np
import xgboost as xgb

from fxml.data.split import DataSplit
from fxml.errors import FxmlError
from fxml.models.base import StepCallback, TabularModel, labelled_rows, predict_chunk_rows
from fxml.models.devices import cpu_fallback, xgboost_device
from fxml.models.params import LightGBMParams, XGBoostParams
from fxml.scoring import score_eras

log = logging.getLogger(__name__)
T = TypeVar("T")
GPU_ACCELERATORS = ("gpu", "cuda")
BIN_SAMPLE_BYTES = 256 * 2**20
LIGHTGBM_SAMPLE_BYTES_PER_VALUE = 18.6
LIGHTGBM_DEFAULT_SAMPLE_ROWS = 200_000
MIN_BIN_SAMPLE_ROWS = 2_000


class GBDTModel(TabularModel):
    # LightGBM keeps 4-bit bins for 5-valued features, XGBoost one byte; histograms on top
    dataset_bytes_per_value = 1.0

    def __init__(self, *args: Any, **options: Any) -> None:
        super().__init__(*args, **options)
        self.booster: Any = None

    @property
    def wants_gpu(self) -> bool:
        return self.options["device"] in GPU_ACCELERATORS

    @property
    def uses_validation(self) -> bool:
        return bool(self.options["early_stopping_rounds"] or self.options["valid_corr_every"])

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
            per_era = score_eras(np.asarray(predictions, dtype=np.float64), self.target, self.eras)
            self.value = float(per_era["corr"].mean())
        return self.value


class _Int8Rows(lgb.Sequence):
    """Hands LightGBM float32 row batches of the int8 matrix (in memory or memory-mapped), of a
    bounded size, never the whole matrix as float."""

    def __init__(self, features: np.ndarray) -> None:
        self.features = features
        self.batch_size = predict_chunk_rows(features.shape[1])

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int | slice) -> np.ndarray:
        # single rows are LightGBM's bin sample, which it wants as float64
        dtype = np.float32 if isinstance(index, slice) else np.float64
        return np.asarray(self.features[index], dtype=dtype)


def bin_sample_rows(n_features: int) -> int | None:
    """Rows LightGBM samples to find bin edges, so the sample stays within BIN_SAMPLE_BYTES.

    LightGBM keeps ~18.6 bytes per sampled value (10 GB at its default 200k rows x 2,748
    features); Numerai's features have five values, which a few thousand rows find. None keeps
    LightGBM's default where that already fits.
    """
    rows = BIN_SAMPLE_BYTES // int(LIGHTGBM_SAMPLE_BYTES_PER_VALUE * max(n_features, 1))
    return None if rows >= LIGHTGBM_DEFAULT_SAMPLE_ROWS else max(rows, MIN_BIN_SAMPLE_ROWS)


class LightGBMModel(GBDTModel):
    params_class = LightGBMParams

    def _params(self, device_type: str) -> dict[str, Any]:
        o = self.options
        params = {
            "objective": "regression",
            "learning_rate": o["learning_rate"],
            "max_depth": o["max_depth"],
            "num_leaves": o["num_leaves"],
            "feature_fraction": o["colsample_bytree"],
            "bagging_fraction": o["subsample"],
            "bagging_freq": 1 if o["subsample"] < 1 else 0,
            "min_data_in_leaf": o["min_child_samples"],
            "lambda_l2": o["reg_lambda"],
            "num_threads": max(o["n_jobs"], 0),
            "seed": o["seed"],
            "deterministic": True,
            "verbosity": -1,
            "device_type": device_type,
        }
        return {**params, **o["params"]}

    def _dataset_params(self, params: dict[str, Any], n_features: int) -> dict[str, Any]:
        sample = bin_sample_rows(n_features)
        if sample is None or "bin_construct_sample_cnt" in params:
            return params
        return {**params, "bin_construct_sample_cnt": sample}

    def fit(self, train: DataSplit, validation: DataSplit | None = None,
            on_step: StepCallback | None = None) -> LightGBMModel:
        params = self._dataset_params(self._params("cuda" if self.wants_gpu else "cpu"),
                                      train.features.shape[1])
        total = self.options["n_estimators"]

        def construct(params: dict[str, Any]) -> lgb.Dataset:
            return lgb.Dataset([_Int8Rows(train.features)], label=train.target, params=params,
                               free_raw_data=True).construct()

        train_set, params = self._on_device(construct, params)
        train.release_features()
        valid = self._validation_set(validation)
        valid_sets, callbacks, feval = [], [], None
        corr = _ValidCorr(valid, self.options["valid_corr_every"]) \
            if valid is not None and self.options["valid_corr_every"] else None
        if valid is not None:
            valid_sets = [lgb.Dataset([_Int8Rows(valid.features)], label=valid.target,
                                      reference=train_set)]
            if corr is not None:
                feval = lambda preds, _: (corr.name, corr(preds), True)  # noqa: E731
            if self.options["early_stopping_rounds"]:
                callbacks.append(lgb.early_stopping(self.options["early_stopping_rounds"],
                                                    first_metric_only=True, verbose=False))
        if on_step is not None:
            def report(env: Any) -> None:
                metrics = {f"valid_{name}": value for _, name, value, _ in env.evaluation_result_list
                           if name != _ValidCorr.name or (corr is not None and corr.fresh)}
                on_step(env.iteration + 1, total, metrics)
            callbacks.append(report)

        def boost(params: dict[str, Any]) -> lgb.Booster:
            log.info("model: LightGBM on %s, %d rounds", params["device_type"], total)
            return lgb.train(params, train_set, num_boost_round=total, valid_sets=valid_sets,
                             valid_names=["valid"] * len(valid_sets), feval=feval, callbacks=callbacks)

        self.booster, _ = self._on_device(boost, params)
        # the binned datasets are no longer needed: free them before validation is predicted
        self.booster.free_dataset()
        return self

    @staticmethod
    def _on_device(step: Callable[[dict[str, Any]], T], params: dict[str, Any]) -> tuple[T, dict[str, Any]]:
        """Run ``step`` with ``params``; a LightGBM build without GPU support falls back to CPU."""
        try:
            return step(params), params
        except lgb.basic.LightGBMError as error:
            if params["device_type"] == "cpu":
                raise FxmlError(f"LightGBM failed: {str(error).splitlines()[0]}") from None
            cpu_fallback("LightGBM", f"no GPU support in this build ({str(error).splitlines()[0]})")
            cpu = {**params, "device_type": "cpu"}
            return step(cpu), cpu

    def predict_float32(self, features: np.ndarray) -> np.ndarray:
        return self.booster.predict(features, num_iteration=self.booster.best_iteration or None)

    def save_state(self, directory: Path) -> None:
        self.booster.save_model(directory / "model.txt",
                                num_iteration=self.booster.best_iteration or None)

    def load_state(self, directory: Path) -> None:
        self.booster = lgb.Booster(model_file=str(directory / "model.txt"))


class _StepReporter(xgb.callback.TrainingCallback):
    def __init__(self, on_step: StepCallback, total: int, corr: _ValidCorr | None) -> None:
        super().__init__()
        self.on_step, self.total, self.corr = on_step, total, corr

    def after_iteration(self, model: Any, epoch: int, evals_log: dict) -> bool:
        metrics = {f"{data}_{name}": values[-1]
                   for data, by_metric in evals_log.items() for name, values in by_metric.items()
                   if name != _ValidCorr.name or (self.corr is not None and self.corr.fresh)}
        self.on_step(epoch + 1, self.total, metrics)
        return False


class _Int8Blocks(xgb.DataIter):
    """Feeds XGBoost a disk-backed split in row blocks, for external-memory training."""

    def __init__(self, split: DataSplit, cache_prefix: str) -> None:
        super().__init__(cache_prefix=cache_prefix)
        self.split, self.rows, self.position = split, predict_chunk_rows(split.features.shape[1]), 0

    def next(self, input_data: Callable[..., None]) -> bool:
        start = self.position
        if start >= len(self.split):
            return False
        stop = start + self.rows
        input_data(data=np.asarray(self.split.features[start:stop]), label=self.split.target[start:stop])
        self.position = stop
        return True

    def reset(self) -> None:
        self.position = 0


def quantile_matrix(split: DataSplit, max_bin: int, ref: xgb.DMatrix | None = None) -> xgb.DMatrix:
    """In memory: a ``QuantileDMatrix`` reading the int8 matrix in place. Disk-backed: an
    ``ExtMemQuantileDMatrix`` fed block by block, its pages cached beside the store."""
    if split.storage != "disk":
        return xgb.QuantileDMatrix(split.features, label=split.target, max_bin=max_bin, ref=ref)
    cache = Path(tempfile.mkdtemp(prefix="fxml-xgb-"))
    blocks = _Int8Blocks(split, str(cache / split.name))
    log.info("model: XGBoost reads the %s split from the int8 store into external memory", split.name)
    matrix = xgb.ExtMemQuantileDMatrix(blocks, max_bin=max_bin, ref=ref)
    weakref.finalize(matrix, shutil.rmtree, cache, ignore_errors=True)
    return matrix


class XGBoostModel(GBDTModel):
    params_class = XGBoostParams

    def _params(self) -> dict[str, Any]:
        o = self.options
        params = {
            "objective": "reg:squarederror",
            "tree_method": "hist",
            "device": xgboost_device(self.wants_gpu),
            "eta": o["learning_rate"],
            "max_depth": max(o["max_depth"], 0),
            "max_leaves": o["num_leaves"],
            "colsample_bytree": o["colsample_bytree"],
            "subsample": o["subsample"],
            # squared error has unit hessians, so this is a minimum row count per leaf
            "min_child_weight": o["min_child_samples"],
            "lambda": o["reg_lambda"],
            "max_bin": o["max_bin"],
            "seed": o["seed"],
            "verbosity": 0,
        }
        if o["n_jobs"] > 0:
            params["nthread"] = o["n_jobs"]
        return {**params, **o["params"]}

    def fit(self, train: DataSplit, validation: DataSplit | None = None,
            on_step: StepCallback | None = None) -> XGBoostModel:
        params = self._params()
        total = self.options["n_estimators"]
        dtrain = quantile_matrix(train, params["max_bin"])
        train.release_features()
        evals, callbacks, metric = [], [], None
        valid = self._validation_set(validation)
        corr = _ValidCorr(valid, self.options["valid_corr_every"]) \
            if valid is not None and self.options["valid_corr_every"] else None
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
                early_stopping_rounds=self.options["early_stopping_rounds"] if evals else None,
                callbacks=callbacks, custom_metric=metric,
            )
        except xgb.core.XGBoostError as error:
            raise FxmlError(f"XGBoost failed: {str(error).splitlines()[0]}") from None
        if evals and self.options["early_stopping_rounds"]:
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
