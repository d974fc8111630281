"""The fold loop of ``cv=walk_forward`` / ``cv=era_kfold``: each fold is a child MLflow run.

Every fold goes through the same model contract and scorer as the main fit: a fresh model fits on
the fold's training eras (its inner holdout as the validation set it may early-stop on), predicts
the fold's test eras, and the scorer scores them. Folds are era ranges of the one loaded training
split, never reloads. The job's run then logs ``cv_*`` summaries over the concatenated
out-of-fold per-era scores, a per-fold table, the out-of-fold predictions and a plot.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from fxml.console import step_progress
from fxml.data.folds import Fold, detached, era_ranges, rows_of_eras, with_inner_holdout
from fxml.data.split import DataSplit, labelled_eras, rows_without_target
from fxml.errors import FxmlError, describe
from fxml.models.base import TabularModel, predict_in_era_blocks
from fxml.scoring import summarize
from fxml.scoring.scorer import Scores
from fxml.sweeps.objective import Objective
from fxml.sweeps.trial import trial_reporter
from fxml.tracking.mlflow_run import (
    StepMetrics,
    end_active_run,
    log_figure,
    log_fitted_params,
    log_frame,
    log_metrics,
    log_params,
    log_series,
    set_tags,
)
from fxml.tracking.plots import cumulative_scores_by_fold
from fxml.tracking.stores import store_client

log = logging.getLogger(__name__)
PREFIX = "cv_"
SERIES = ("corr", "mmc", "bmc", "fnc")
# scores the predictions of a split's rows (the runner's scorer with the release's references)
ScoreSplit = Callable[[np.ndarray, DataSplit], Scores]


@dataclass
class CrossValidation:
    summary: dict[str, float]  # cv_* summaries over the out-of-fold per-era scores
    per_era: pd.DataFrame  # out-of-fold per-era scores, with the fold of each era


def cv_summary(per_era: pd.DataFrame) -> dict[str, float]:
    """Today's summaries (``fxml.scoring.summarize``) of out-of-fold per-era scores, as ``cv_*``."""
    return {f"{PREFIX}{key}": value for key, value in summarize(per_era.drop(columns="fold")).items()}


def training_parts(train: DataSplit, holdout_eras: int, embargo: int) -> tuple[DataSplit, DataSplit | None]:
    """The rows a fit on all training eras learns from, and its inner holdout (None without one).

    The fit rows are a view at the start of the era-sorted split; the holdout (a few eras) is
    copied, so the model may free the training matrix once it has its own dataset."""
    # eras without any target value (unresolved) are neither fitted on nor held out; rows without
    # one inside the fitted range are left out by the model (training_rows), so the range is a view
    fit_eras, holdout = with_inner_holdout(labelled_eras(train), holdout_eras, embargo)
    fit = train.era_range(int(fit_eras[0]), int(fit_eras[-1]))
    return fit, detached(rows_of_eras(train, holdout)) if len(holdout) else None


def fold_tags(fold: Fold) -> dict[str, str]:
    """The fold's layout, readable back from MLflow (era numbers as runs such as ``1-20,29-40``)."""
    return {"fxml.role": "cv_fold", "fxml.fold": str(fold.index),
            "fxml.fold.train_eras": era_ranges(fold.train),
            "fxml.fold.holdout_eras": era_ranges(fold.holdout),
            "fxml.fold.test_eras": era_ranges(fold.test)}


def fold_run_name(job_run_name: str, fold: Fold) -> str:
    """The job run's name and the fold's number from 1: ``lgbm-small-target-3f9a-fold2``."""
    return f"{job_run_name}-fold{fold.index + 1}"


@contextmanager
def fold_run(fold: Fold, job: Any) -> Iterator[Any]:
    """A child run of the job's run (``job``, as MLflow has it now), ended FINISHED, FAILED
    (``error`` tag) or KILLED."""
    run = mlflow.start_run(experiment_id=job.info.experiment_id, nested=True,
                           run_name=fold_run_name(job.info.run_name, fold), tags=fold_tags(fold))
    try:
        yield run
    except BaseException as error:
        set_tags({"error": describe(error)[:5000]})
        end_active_run("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        raise
    end_active_run("FINISHED")


def log_rows_without_target(parts: dict[str, DataSplit | None]) -> None:
    """How many rows of each part of the training rows have no value of the target trained on
    (left out of training): ``rows_without_target_<part>`` on the active run, and one line."""
    counts = {name: rows_without_target(split) for name, split in parts.items() if split is not None}
    log_metrics({f"rows_without_target_{name}": float(n) for name, n in counts.items()})
    if any(counts.values()):
        target = next(split.target_name for split in parts.values() if split is not None)
        shown = ", ".join(f"{n:,} of {name.replace('_', ' ')}" for name, n in counts.items())
        log.info("data: rows without %s left out of training: %s", target, shown)


def fit_fold(model: TabularModel, train: DataSplit, fold: Fold, n_folds: int,
             target: str) -> TabularModel:
    """Fit on the fold's training eras, its inner holdout as the validation it may early-stop on,
    learning ``target``."""
    fit = rows_of_eras(train, fold.train).with_target(target)
    holdout = rows_of_eras(train, fold.holdout).with_target(target) if len(fold.holdout) else None
    log_rows_without_target({"train": fit, "holdout": holdout})
    step_metrics = StepMetrics()
    with step_progress(f"fold {fold.index + 1}/{n_folds}: training", step_metrics) as on_step:
        model.fit(fit, holdout, on_step=on_step)
    step_metrics.flush()
    log_fitted_params(model)
    return model


def score_fold(model: TabularModel, train: DataSplit, fold: Fold,
               score: ScoreSplit) -> tuple[Scores, pd.DataFrame]:
    """Scores of the fold's test eras, and their predictions with ids, targets and references."""
    test = rows_of_eras(train, fold.test)
    predictions = predict_in_era_blocks(model, test)
    scores = score(predictions, test)
    frame = pd.DataFrame({"id": test.ids, "era": test.eras, "fold": fold.index,
                          "prediction": predictions, "target": test.target})
    for name, values in scores.references.items():
        # the meta model covers validation only: its column would be all NaN for train rows
        if not np.isnan(values).all():
            frame[name] = values
    return scores, frame


def log_fold_scores(scores: Scores, fold: Fold) -> None:
    log_params({"fold": fold.index, "embargo": fold.embargo, "n_train_eras": len(fold.train),
                       "n_holdout_eras": len(fold.holdout), "n_test_eras": len(fold.test)})
    log_metrics({k: float(v) for k, v in scores.summary.items() if pd.notna(v)})
    log_series(scores.per_era, SERIES)
    log_frame(scores.per_era, "metrics/per_era.csv")


def fold_row(fold: Fold, run_id: str, scores: Scores) -> dict[str, Any]:
    summary = scores.summary
    return {"fold": fold.index, "train_eras": era_ranges(fold.train),
            "holdout_eras": era_ranges(fold.holdout), "test_eras": era_ranges(fold.test),
            "n_train_eras": len(fold.train), "n_holdout_eras": len(fold.holdout),
            "n_test_eras": len(fold.test),
            **{key: summary.get(key, float("nan")) for key in (
                "corr_mean", "corr_sharpe", "mmc_mean", "bmc_mean", "fnc_mean", "payout_mean")},
            "mlflow_run_id": run_id}


def pruning_signal(running: dict[str, float], objective: str | None) -> float:
    """The running value a pruner compares after each fold: the sweep's objective when it reads
    only cv metrics (``cv_corr_sharpe``), else the running ``cv_corr_mean``."""
    parsed = None
    if objective:
        try:
            parsed = Objective.parse(objective)
        except FxmlError:
            parsed = None
    if parsed is not None and all(name.startswith(PREFIX) for name in parsed.weights):
        try:
            return parsed.value(running)
        except FxmlError:
            return float("nan")
    return float(running.get(f"{PREFIX}corr_mean", float("nan")))


def cross_validate(new_model: Callable[[], TabularModel], train: DataSplit, folds: list[Fold],
                   score: ScoreSplit, sweep: Any, target: str) -> CrossValidation:
    """Run every fold as a child run of the active run: a new model from ``new_model`` fits on the
    fold's training eras (learning ``target``) and ``score`` scores its test eras (on the target
    ``train`` carries, the main one). A sweep's trial (``sweep``, the job's
    ``sweep`` config) hears the running cv metric after each fold, so a bad trial stops after its
    first fold. The cv summaries are logged on the job's run."""
    report = trial_reporter(sweep)
    objective = sweep.objective if report is not None else None
    if report is not None:
        log.info("cv: after each fold (step = fold index) the trial hears the running objective %s "
                 "if it reads only cv_* metrics, else the running cv_corr_mean", objective)
    active = mlflow.active_run()
    assert active is not None, "folds run inside the job's run"
    job = store_client().get_run(active.info.run_id)  # its name as the runner last set it
    started = time.perf_counter()
    per_era: list[pd.DataFrame] = []
    predictions: list[pd.DataFrame] = []
    rows: list[dict[str, Any]] = []
    for fold in folds:
        log.info("cv: fold %d/%d, train eras %s, inner holdout %s, test eras %s", fold.index + 1,
                 len(folds), era_ranges(fold.train), era_ranges(fold.holdout) or "none",
                 era_ranges(fold.test))
        with fold_run(fold, job) as run:
            model = fit_fold(new_model(), train, fold, len(folds), target)
            scores, frame = score_fold(model, train, fold, score)
            log_fold_scores(scores, fold)
        per_era.append(scores.per_era.assign(fold=fold.index))
        predictions.append(frame)
        rows.append(fold_row(fold, run.info.run_id, scores))
        running = cv_summary(pd.concat(per_era))
        if report is not None:
            report(fold.index, len(folds), {sweep.prune_on: pruning_signal(running, objective)})
    result = CrossValidation(running, pd.concat(per_era))
    log_cross_validation(result, pd.DataFrame(rows), pd.concat(predictions, ignore_index=True), folds)
    log_metrics({f"{PREFIX}seconds": time.perf_counter() - started})
    return result


def log_cross_validation(result: CrossValidation, table: pd.DataFrame, predictions: pd.DataFrame,
                         folds: list[Fold]) -> None:
    summary = {key: float(value) for key, value in result.summary.items() if not math.isnan(value)}
    log_metrics(summary)
    missing = [f"{PREFIX}{name}_mean" for name in ("mmc", "payout") if f"{PREFIX}{name}_mean" not in summary]
    if missing:
        # the meta model covers validation only: no MMC (nor payout) for out-of-fold train eras
        set_tags({"cv_not_scored": ", ".join(missing)})
    log_series(result.per_era.rename(columns={c: f"{PREFIX}{c}" for c in SERIES}),
               tuple(f"{PREFIX}{c}" for c in SERIES))
    log_frame(result.per_era, "cv/per_era.csv")
    log_frame(table, "cv/folds.csv")
    log_frame(predictions, "predictions/out_of_fold.parquet")
    starts = [int(fold.test[0]) for fold in folds]
    log_figure(cumulative_scores_by_fold(result.per_era, starts), "plots/cv_cumulative_scores.png")
