"""The job ``python -m fxml.run`` runs, as named steps: open the release, build the model, plan
memory, fit (with cross-validation when asked), score validation, log. ``fxml.run.train`` calls
them in order; this module loads MLflow, Polars and the scoring layer, so the entry point imports
it only once the config is checked."""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.markup import escape

from fxml import __version__
from fxml.cli import in_multirun
from fxml.console import (
    console,
    importance_table,
    job_line,
    payout_label,
    print_wide,
    step_progress,
    summary_table,
)
from fxml.crossval import CrossValidation, cross_validate, log_rows_without_target, training_parts
from fxml.data.folds import EraSplitter, era_ranges, resolve_embargo
from fxml.data.loader import NumeraiData
from fxml.data.memory import MemoryPlan, MemoryPolicy
from fxml.data.references import scoring_inputs
from fxml.data.split import MAIN_TARGET, DataSplit, labelled_eras
from fxml.models.base import TabularModel, predict_in_era_blocks
from fxml.models.devices import taken_fallbacks
from fxml.models.ensemble import TARGET_PARAM
from fxml.models.params import MEMBER_TARGET
from fxml.models.postprocess import postprocessed
from fxml.scoring.importance import importance_figure
from fxml.scoring.scorer import NumeraiScorer, Scores
from fxml.secrets import redact
from fxml.submission.registry import load_ensemble_members
from fxml.submission.rounds import round_payout
from fxml.sweeps.trial import trial_reporter
from fxml.tracking.mlflow_run import (
    JOB_TAG,
    OVERRIDES_TAG,
    PROCESS_TAG,
    TRIAL_TAG,
    RunName,
    StepMetrics,
    git_commit,
    log_fitted_params,
    log_frame,
    log_series,
)
from fxml.tracking.plots import cumulative_scores
from fxml.tracking.ui import browse_lines, log_data_input

log = logging.getLogger("fxml.run")
IMPORTANCE_CSV = "importance/permutation.csv"
SCORED_ON_TAG = "scored_on"
MEMBER_TARGETS_TAG = "member_targets"


def shown_run(cfg: DictConfig, name: RunName, run: Any, uri: str, payout: str) -> Shown:
    return Shown(name.of(run.info.run_id), run.info.run_id, uri, cfg.tracking.experiment, payout,
                 str(cfg.data.target), run.info.experiment_id)


def payout_weights(scorer: NumeraiScorer) -> tuple[NumeraiScorer, str]:
    """The scorer with the payout weights it is to score with, and the payout row's label: the
    configured weights, or (``scorer.payout_multipliers=round``) the current round's CORR and MMC
    multipliers from Numerai. Asked here, before the model is built or any training row loaded,
    so the scorer stays offline and a machine without network fails early. The weights are logged
    as params ``payout.*``."""
    source = "configured"
    if scorer.payout_multipliers == "round":
        cache = Path(scorer.payout_round_cache) if scorer.payout_round_cache else None
        found = round_payout(scorer.payout_api, cache)
        scorer = replace(scorer, payout_corr_weight=found.corr, payout_mmc_weight=found.mmc)
        source = f"round {found.round}"
        mlflow.log_param("payout.round", found.round)
    mlflow.log_params({"payout.corr_multiplier": scorer.payout_corr_weight,
                       "payout.mmc_multiplier": scorer.payout_mmc_weight})
    return scorer, payout_label(scorer.payout_corr_weight, scorer.payout_mmc_weight, scorer.payout_clip,
                                source)


def load_validation(data: NumeraiData, neutralizers: list[str]) -> DataSplit:
    with console.status("loading validation"):
        # predicted a block of eras and scored an era at a time, from its store file
        validation = data.load("validation", neutralizers, storage="store")
    log_data_input(data, "validation")
    return validation


def run_tags(cfg: DictConfig) -> dict[str, str]:
    return {"fxml_version": __version__, "git_commit": git_commit(), "model_family": model_family(cfg),
            PROCESS_TAG: f"{socket.gethostname()}:{os.getpid()}", **multirun_job_tags(cfg),
            **cfg.tracking.tags}


def model_family(cfg: DictConfig) -> str:
    return str(cfg.model._target_).rsplit(".", 1)[-1]


def tag_release(data: NumeraiData) -> None:
    mlflow.set_tags({"data_version": data.version, "data_fingerprint": data.fingerprint(),
                     "feature_set": data.feature_set, "target": data.target, SCORED_ON_TAG: MAIN_TARGET})


def build_model(cfg: DictConfig, data: NumeraiData) -> tuple[TabularModel, list[str]]:
    """A new, unfitted model as configured (post-processing wraps it), and the neutraliser columns
    its ``predict`` reads beyond the run's features."""
    spec = OmegaConf.to_container(cfg.model, resolve=True)
    assert isinstance(spec, dict)
    spec.pop(MEMBER_TARGET, None)  # an ensemble member's key: validate refused it here
    model = instantiate(spec, _convert_="all")
    load_ensemble_members(model)  # members named by MLflow URI: loaded here, not in models
    data.also_load(model.targets_read())
    return postprocessed(model, cfg.get("postprocess"), data)


def fit_model(cfg: DictConfig, data: NumeraiData, model: TabularModel, neutralizers: list[str],
              splitter: EraSplitter, plan: MemoryPlan, scorer: NumeraiScorer,
              training: str = "train") -> tuple[TabularModel | None, CrossValidation | None]:
    """Load the training eras (of ``training``: ``full`` for a final fit on every labelled era),
    run the folds when cv asks for them, then fit on every training era but the inner holdout that
    early stopping, pruning signals and fitted weights read. The model is None when cv does not
    refit."""
    # eras apart by the longest horizon of the targets the model learns
    embargo = max(resolve_embargo(splitter.embargo, target)
                  for target in [data.target, *model.targets_read()])
    mlflow.set_tags({"cv": splitter.method, "cv_embargo": embargo})
    holdout_eras = cfg.trainer.inner_holdout_eras if model.uses_validation else 0
    storage = plan.train_storage(model.memory_profile())
    with console.status("loading data"):
        # out-of-fold predictions of a neutralised model need its neutralisers in train too, and
        # are logged by id; nothing else reads train's ids
        train_split = data.load(training, neutralizers if splitter.active else None, storage=storage,
                                every_nth_train_era=plan.every, with_ids=splitter.active)
    mlflow.set_tag("train_storage", train_split.storage)
    log_data_input(data, training)
    cv = None
    if splitter.active:
        folds = splitter.make_folds(train_split.eras, embargo, holdout_eras)
        # folds train on the run's target and are scored on the main target
        cv = cross_validate(lambda: build_model(cfg, data)[0], train_split, folds,
                            lambda predictions, split: scorer.score(
                                predictions, scoring_inputs(data, split, scorer)), cfg.sweep,
                            data.target)
        if not splitter.refit:
            return None, cv
    fit_split, inner_holdout = training_parts(train_split.with_target(data.target), holdout_eras, embargo)
    mlflow.set_tags({"fit_eras": era_ranges(labelled_eras(fit_split)),
                     "inner_holdout_eras": era_ranges(inner_holdout.eras) if inner_holdout else ""})
    log_rows_without_target({"fit": fit_split, "inner_holdout": inner_holdout})
    started = time.perf_counter()
    step_metrics = StepMetrics()
    # with folds, the trial hears the running cv metric after each fold instead
    reporter = None if splitter.active else trial_reporter(cfg.sweep)
    with step_progress(f"training {model_family(cfg)}", step_metrics, *filter(None, [reporter])) as on_step:
        model.fit(fit_split, inner_holdout, on_step=on_step)
    step_metrics.flush()
    log_fitted_params(model)
    log_member_targets(model)
    mlflow.set_tags(taken_fallbacks())
    mlflow.log_metric("train_seconds", time.perf_counter() - started)
    return model, cv


def log_member_targets(model: TabularModel) -> None:
    """An ensemble's members' training targets, as one tag a registered version keeps."""
    targets = {key.removeprefix(TARGET_PARAM): value for key, value in model.fitted_params().items()
               if key.startswith(TARGET_PARAM)}
    if targets:
        mlflow.set_tag(MEMBER_TARGETS_TAG, ", ".join(f"{name}={target}" for name, target in targets.items()))


def score_validation(model: TabularModel, validation: DataSplit, data: NumeraiData,
                     scorer: NumeraiScorer) -> Scores:
    """Predict validation a block of eras at a time from its int8 store file, score it an era at
    a time, and log the scores and the predictions."""
    mlflow.log_metrics({f"missing_features_filled_{split}": n for split, n in data.filled.items() if n})
    with console.status("scoring validation"):
        predictions = predict_in_era_blocks(model, validation)
        scores = scorer.score(predictions, scoring_inputs(data, validation, scorer))
    log_scores(scores, validation, predictions)
    return scores


def log_importance(model: TabularModel, validation: DataSplit, data: NumeraiData,
                   scorer: NumeraiScorer, repeats: int) -> None:
    """Permutation importance, when the scorer asks for it."""
    with console.status("permutation importance"):
        importance = scorer.importance_of(model, validation, data.metadata["feature_sets"])
    if importance is None:
        return
    log_frame(importance, IMPORTANCE_CSV)
    mlflow.log_figure(importance_figure(importance), "importance/permutation.png")
    show_importance(importance, repeats, mlflow.get_artifact_uri(IMPORTANCE_CSV))


def log_model(model: TabularModel, data: NumeraiData) -> None:
    # MLflow's pyfunc machinery is imported here, not with the run: ~2 MiB that training, the
    # peak of a GBDT's run, would otherwise hold
    from fxml.tracking.pyfunc import log_pyfunc_model

    with console.status("logging the model"):
        log_pyfunc_model(model, data.feature_names, {
            "data_version": data.version, "target": data.target, "feature_set": data.feature_set})


def plan_memory(policy: MemoryPolicy, data: NumeraiData, model: TabularModel,
                splitter: EraSplitter | None = None, training: str = "train") -> MemoryPlan:
    """The memory policy's choice for this run, logged as tags and one console line."""
    need = data.memory_need(model.memory_profile(), training)
    if splitter is not None and splitter.copied_share:
        # era_kfold copies a fold's training eras (in memory, whatever the storage)
        need = need.with_beside_dataset(int(need.train_features * splitter.copied_share))
    plan = policy.plan(need)
    mlflow.set_tags({"memory_plan": f"{plan.storage}, every {plan.every} training era(s)",
                     "memory_reason": plan.reason})
    log.info("memory: %s", plan.describe())
    return plan


def log_scores(scores: Scores, validation: DataSplit, predictions) -> None:  # type: ignore[no-untyped-def]
    mlflow.log_metrics({k: float(v) for k, v in scores.summary.items() if pd.notna(v)})
    if scores.benchmark_column:
        mlflow.set_tag("bmc_benchmark", scores.benchmark_column)
    log_series(scores.per_era, ("corr", "mmc", "bmc", "fnc", "mpc"))
    log_frame(scores.per_era, "metrics/per_era.csv")
    mlflow.log_figure(cumulative_scores(scores.per_era), "plots/cumulative_scores.png")
    frame = pd.DataFrame({"id": validation.ids, "era": validation.eras,
                          "prediction": predictions, "target": validation.target})
    if "meta_model" in scores.references:
        frame["meta_model"] = scores.references["meta_model"]
    log_frame(frame, "predictions/validation.parquet")


@dataclass(frozen=True)
class Shown:
    """What the summary names: the run (as MLflow shows it), where it is, the payout row's label."""

    run_name: str
    run_id: str
    uri: str
    experiment: str
    payout: str
    trained_on: str
    experiment_id: str


class JobResult(dict[str, Any]):
    """A job's summary metrics and ``mlflow_run_id``: what a sweep reads its objective from, and
    (``as_json``) what ``output=json`` prints."""

    def __init__(self, metrics: dict[str, float], shown: Shown) -> None:
        super().__init__({**metrics, "mlflow_run_id": shown.run_id})
        self.shown = shown

    def as_json(self) -> dict[str, Any]:
        return {"run_id": self.shown.run_id, "run_name": self.shown.run_name,
                "experiment": self.shown.experiment, "tracking_uri": redact(self.shown.uri),
                "metrics": {key: value for key, value in self.items() if key != "mlflow_run_id"}}


def run_name(cfg: DictConfig) -> RunName:
    """``tracking.run_name``, else the model, feature set and target (``lgbm-small-target``) and
    the run id's start; a search's trial adds ``-trial<n>``."""
    trial = cfg.sweep.get("trial_number") if cfg.get("sweep") else None
    suffix = f"-trial{trial}" if trial is not None else ""
    if cfg.tracking.run_name:
        return RunName(str(cfg.tracking.run_name), short_id=False, suffix=suffix)
    feature_set = "custom" if cfg.data.get("features") else str(cfg.data.get("feature_set") or "custom")
    return RunName(f"{model_choice(cfg)}-{feature_set}-{cfg.data.target}", suffix=suffix)


def model_choice(cfg: DictConfig) -> str:
    """The ``model=`` the user chose (``lgbm``), or the model class's name outside Hydra."""
    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get("model")
        if choice:
            return str(choice)
    return cfg.model._target_.rsplit(".", 1)[-1].removesuffix("Model").lower()


def multirun_job_tags(cfg: DictConfig) -> dict[str, str]:
    """A multirun job's number, overrides and search trial, for the comparison table at the
    multirun's end. A search's job is numbered by its trial, which is unique across the study's
    workers (each worker's launcher counts its own jobs from 0)."""
    tags = {}
    if in_multirun():
        hydra_config = HydraConfig.get()
        tags = {JOB_TAG: str(hydra_config.job.num), OVERRIDES_TAG: " ".join(hydra_config.overrides.task)}
    if cfg.get("sweep") and cfg.sweep.get("trial_number") is not None:
        tags[TRIAL_TAG] = tags[JOB_TAG] = str(cfg.sweep.trial_number)
    return tags


def show_importance(importance: pd.DataFrame, repeats: int, artifact: str) -> None:
    if in_multirun():
        console.print(f"permutation importance: {redact(artifact)}", soft_wrap=True)
        return
    print_wide(importance_table(importance, repeats))
    console.print(f"All {len(importance)} rows: {redact(artifact)}", soft_wrap=True)


def show_summary(scores: Scores | None, cv_metrics: dict[str, float], shown: Shown) -> None:
    """The run's tables; in a multirun one line per job, and one table at the multirun's end."""
    uri = redact(shown.uri)
    # no MMC (nor payout) out of fold where the meta model has no training rows
    plain = {key.removeprefix("cv_"): value for key, value in cv_metrics.items() if pd.notna(value)}
    if in_multirun():
        metrics = {**cv_metrics, **(scores.summary if scores is not None else {})}
        console.print(f"job {HydraConfig.get().job.num}: {job_line(shown.run_name, metrics)}",
                      soft_wrap=True)
        return
    if plain:
        print_wide(summary_table(plain, f"Cross-validation, out of fold over {int(plain['n_eras'])} "
                                           f"training eras, scored on {MAIN_TARGET}", shown.payout,
                                 shown.trained_on))
    if scores is not None:
        eras = int(scores.summary.get("n_eras", len(scores.per_era)))
        print_wide(summary_table(scores.summary, f"Validation (holdout) over {eras} eras, scored on "
                                                 f"{MAIN_TARGET}", shown.payout, shown.trained_on))
    # whole lines, never folded: a user copies names, paths and commands from them
    console.print(f"MLflow run [bold]{escape(shown.run_name)}[/bold] ({shown.run_id}) in experiment "
                  f"'{shown.experiment}' at {uri}", soft_wrap=True)
    for line in browse_lines(shown.uri, shown.experiment_id):
        console.print(escape(line), soft_wrap=True)


