"""LightGBM behind the common contract: float32 row batches of the int8 matrix through a
``lgb.Sequence``, bins from a bounded sample; asked for the GPU, its CUDA learner, else its OpenCL
one, else the CPU with the fallback recorded."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import lightgbm as lgb
import numpy as np

from fxml.data.split import DataSplit, TrainingRows, training_rows
from fxml.errors import FxmlError
from fxml.models.base import StepCallback, predict_chunk_rows
from fxml.models.devices import cpu_fallback
from fxml.models.gbdt import GBDTModel, _ValidCorr
from fxml.models.params import LightGBMParams

log = logging.getLogger("fxml.models.gbdt")
T = TypeVar("T")
BIN_SAMPLE_BYTES = 256 * 2**20
LIGHTGBM_SAMPLE_BYTES_PER_VALUE = 18.6
LIGHTGBM_DEFAULT_SAMPLE_ROWS = 200_000
MIN_BIN_SAMPLE_ROWS = 2_000
# LightGBM's GPU learners in the order tried: CUDA (a build from source with USE_CUDA), then OpenCL
# (what PyPI's Linux wheels carry; it needs the GPU vendor's OpenCL driver)
GPU_DEVICE_TYPES = ("cuda", "gpu")


class _Int8Rows(lgb.Sequence):
    """Hands LightGBM float32 row batches of a split's labelled int8 rows (in memory or in the
    store file), of a bounded size, never the whole matrix as float.

    LightGBM takes single rows for its bin sample first, then every row once, in order, in
    batches. From the store on disk, rows and batches are read from the file
    (``TrainingRows.block``): nothing of it is mapped, so nothing stays in the process (an
    ensemble's members read the split again).
    """

    def __init__(self, rows: TrainingRows) -> None:
        self.rows = rows
        self.batch_size = predict_chunk_rows(rows.n_features)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int | slice | list[int]) -> np.ndarray:
        if isinstance(index, list):  # LightGBM asks for single rows and slices only
            return np.asarray(np.concatenate([self[row][None] for row in index]), dtype=np.float64)
        if not isinstance(index, slice):
            # single rows are LightGBM's bin sample, which it wants as float64
            row = range(len(self.rows))[index]
            return np.asarray(self.rows.block(row, row + 1)[0], dtype=np.float64)
        start, stop, _ = index.indices(len(self.rows))
        return np.asarray(self.rows.block(start, stop), dtype=np.float32)


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
    params: LightGBMParams

    def _params(self, device_type: str) -> dict[str, Any]:
        o = self.params
        params = {
            "objective": "regression",
            "learning_rate": o.learning_rate,
            "max_depth": o.max_depth,
            "num_leaves": o.num_leaves,
            "feature_fraction": o.colsample_bytree,
            "bagging_fraction": o.subsample,
            "bagging_freq": 1 if o.subsample < 1 else 0,
            "min_data_in_leaf": o.min_child_samples,
            "lambda_l2": o.reg_lambda,
            "num_threads": max(o.n_jobs, 0),
            "seed": o.seed,
            "deterministic": True,
            "verbosity": -1,
            "device_type": device_type,
        }
        if device_type == "cpu" and not {"force_col_wise", "force_row_wise"} & set(o.params):
            # LightGBM's own choice is row-wise at Numerai's widths: a second, row-major copy of
            # the binned dataset, and histograms over every feature of each row when
            # colsample_bytree samples a few (at 1/16 of v5.2, all features: 2.4x the CPU time)
            params["force_col_wise"] = True
        return {**params, **o.params}

    def _dataset_params(self, params: dict[str, Any], n_features: int) -> dict[str, Any]:
        sample = bin_sample_rows(n_features)
        if sample is None or "bin_construct_sample_cnt" in params:
            return params
        return {**params, "bin_construct_sample_cnt": sample}

    def fit(self, train: DataSplit, validation: DataSplit | None = None,
            on_step: StepCallback | None = None) -> LightGBMModel:
        device_types = (*GPU_DEVICE_TYPES, "cpu") if self.wants_gpu else ("cpu",)
        rows = training_rows(train)
        attempts = [self._dataset_params(self._params(device_type), rows.n_features)
                    for device_type in device_types]
        total = self.params.n_estimators

        def construct(params: dict[str, Any]) -> lgb.Dataset:
            # a GPU attempt may fail and be retried on CPU, which reads the rows again
            return lgb.Dataset([_Int8Rows(rows)], label=rows.target, params=params,
                               free_raw_data=True).construct()

        train_set, params = self._on_device(construct, attempts)
        valid = self._validation_set(validation)
        valid_sets: list[lgb.Dataset] = []
        callbacks: list[Callable[..., Any]] = []
        feval = None
        corr = _ValidCorr(valid, self.params.valid_corr_every) \
            if valid is not None and self.params.valid_corr_every else None
        if valid is not None:
            valid_sets = [lgb.Dataset([_Int8Rows(training_rows(valid))], label=valid.target,
                                      reference=train_set)]
            if corr is not None:
                feval = lambda preds, _: (corr.name, corr(preds), True)  # noqa: E731
            if self.params.early_stopping_rounds:
                callbacks.append(lgb.early_stopping(self.params.early_stopping_rounds,
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

        # a learner is known to be missing only when training starts (the dataset builds for any)
        self.booster, _ = self._on_device(boost, attempts[attempts.index(params):])
        # the binned datasets are no longer needed: free them before validation is predicted
        self.booster.free_dataset()
        return self

    @staticmethod
    def _on_device(step: Callable[[dict[str, Any]], T],
                   attempts: list[dict[str, Any]]) -> tuple[T, dict[str, Any]]:
        """Run ``step`` with each of ``attempts`` (GPU learners first, the CPU last) until one runs;
        a GPU learner this build or machine lacks is skipped, and the CPU fallback recorded."""
        failures = []
        for params in attempts:
            try:
                result = step(params)
            except lgb.basic.LightGBMError as error:
                reason = str(error).splitlines()[0]
                if params["device_type"] == "cpu":
                    raise FxmlError(f"LightGBM failed: {reason}") from None
                failures.append(f"{params['device_type']}: {reason}")
                continue
            if failures and params["device_type"] == "cpu":
                cpu_fallback("LightGBM", "no GPU learner could run (" + "; ".join(failures) + ")")
            elif failures:
                log.info("model: LightGBM's %s learner runs (%s)", params["device_type"], "; ".join(failures))
            return result, params
        raise AssertionError("the CPU attempt comes last and raises on failure")

    def predict_float32(self, features: np.ndarray) -> np.ndarray:
        return self.booster.predict(features, num_iteration=self.booster.best_iteration or None)

    def save_state(self, directory: Path) -> None:
        self.booster.save_model(directory / "model.txt",
                                num_iteration=self.booster.best_iteration or None)

    def load_state(self, directory: Path) -> None:
        self.booster = lgb.Booster(model_file=str(directory / "model.txt"))
