"""Gradient-boosted trees: LightGBM and XGBoost behind the common contract.

Neither family sees a full float copy of the features: LightGBM reads row batches through a
``lgb.Sequence``; XGBoost's ``QuantileDMatrix`` reads the int8 array in place.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import xgboost as xgb

from fxml.data.loader import DataSplit
from fxml.errors import FxmlError
from fxml.models.base import StepCallback, TabularModel, labelled_rows
from fxml.models.devices import cpu_fallback, xgboost_device
from fxml.scoring import score_eras

log = logging.getLogger(__name__)
GPU_ACCELERATORS = ("gpu", "cuda")


class GBDTModel(TabularModel):
    def __init__(
        self,
        n_estimators: int = 300,
        learning_rate: float = 0.05,
        max_depth: int = 5,
        num_leaves: int = 31,
        colsample_bytree: float = 0.5,
        subsample: float = 1.0,
        min_child_samples: int = 20,
        reg_lambda: float = 0.0,
        early_stopping_rounds: int | None = None,
        valid_corr_every: int = 0,
        params: dict[str, Any] | None = None,
        device: str = "cpu",
        n_jobs: int = -1,
        seed: int = 42,
        **extra: Any,
    ) -> None:
        super().__init__(
            n_estimators=n_estimators, learning_rate=learning_rate, max_depth=max_depth,
            num_leaves=num_leaves, colsample_bytree=colsample_bytree, subsample=subsample,
            min_child_samples=min_child_samples, reg_lambda=reg_lambda,
            early_stopping_rounds=early_stopping_rounds, valid_corr_every=valid_corr_every,
            params=dict(params or {}),
            device=device, n_jobs=n_jobs, seed=seed, **extra,
        )
        self.booster: Any = None

    @property
    def wants_gpu(self) -> bool:
        return self.options["device"] in GPU_ACCELERATORS

    def _validation_set(self, validation: DataSplit | None) -> DataSplit | None:
        if validation is None or validation.target is None:
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
    """Hands LightGBM row batches of the int8 matrix as float64 (what it samples bins from),
    never the whole matrix as float."""

    batch_size = 65_536

    def __init__(self, features: np.ndarray) -> None:
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int | slice) -> np.ndarray:
        return np.asarray(self.features[index], dtype=np.float64)


class LightGBMModel(GBDTModel):
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

    def fit(self, train: DataSplit, validation: DataSplit | None = None,
            on_step: StepCallback | None = None) -> LightGBMModel:
        device_type = "cuda" if self.wants_gpu else "cpu"
        try:
            self.booster = self._train(train, validation, on_step, device_type)
        except lgb.basic.LightGBMError as error:
            if device_type == "cpu":
                raise FxmlError(f"LightGBM failed: {str(error).splitlines()[0]}") from None
            cpu_fallback("LightGBM", f"no GPU support in this build ({str(error).splitlines()[0]})")
            self.booster = self._train(train, validation, on_step, "cpu")
        return self

    def _train(self, train: DataSplit, validation: DataSplit | None,
               on_step: StepCallback | None, device_type: str) -> lgb.Booster:
        params = self._params(device_type)
        total = self.options["n_estimators"]
        train_set = lgb.Dataset([_Int8Rows(train.features)], label=train.target, params=params,
                                free_raw_data=True)
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
        log.info("model: LightGBM on %s, %d rounds", device_type, total)
        return lgb.train(params, train_set, num_boost_round=total, valid_sets=valid_sets,
                         valid_names=["valid"] * len(valid_sets), feval=feval, callbacks=callbacks)

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


class XGBoostModel(GBDTModel):
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
            "max_bin": o.get("max_bin", 64),
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
        dtrain = xgb.QuantileDMatrix(train.features, label=train.target, max_bin=params["max_bin"])
        evals, callbacks, metric = [], [], None
        valid = self._validation_set(validation)
        corr = _ValidCorr(valid, self.options["valid_corr_every"]) \
            if valid is not None and self.options["valid_corr_every"] else None
        if valid is not None:
            evals = [(xgb.QuantileDMatrix(valid.features, label=valid.target, ref=dtrain,
                                          max_bin=params["max_bin"]), "valid")]
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
        return self

    def predict_float32(self, features: np.ndarray) -> np.ndarray:
        return self.booster.inplace_predict(features)

    def save_state(self, directory: Path) -> None:
        self.booster.save_model(directory / "model.ubj")

    def load_state(self, directory: Path) -> None:
        self.booster = xgb.Booster()
        self.booster.load_model(directory / "model.ubj")
