"""The running Optuna trial, reached from inside a training job.

A sweeper launches each trial as an ordinary ``fxml.run`` job and passes the storage URL, the
study name and the trial number in the job's config (``sweep.*``; a password in the URL is masked
wherever the config is written or logged). The job reattaches to that trial through the shared
storage, so the per-round or per-epoch validation score can be reported and the trial pruned,
whichever process or machine (joblib, SLURM, Ray) the job runs on. The pruner's settings are
stored on the study by the sweeper, since a study loaded from storage does not remember its pruner.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import mlflow
import optuna
from omegaconf import OmegaConf

from fxml.errors import FxmlError, RunPruned, RunStopped
from fxml.steps import StepCallback
from fxml.sweeps.retry import with_retries

log = logging.getLogger(__name__)
WORST_CORR = -1.0
PRUNER_ATTR = "fxml.pruner"  # the study's pruner settings (hydra.sweeper.pruner), for its jobs


class TrialPruned(optuna.TrialPruned, RunPruned):
    """Optuna's pruned-trial signal that the tracking layer also knows (as ``RunPruned``)."""


def make_pruner(cfg: Any, direction: str) -> optuna.pruners.BasePruner:
    """The pruner named by ``hydra.sweeper.pruner``; the sweeper and each trial's job build the
    same one, since a study loaded from storage does not remember its pruner."""
    pruners = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=cfg.n_startup_trials,
                                                      n_warmup_steps=cfg.n_warmup_steps),
        "percentile": lambda: optuna.pruners.PercentilePruner(
            cfg.percentile, n_startup_trials=cfg.n_startup_trials, n_warmup_steps=cfg.n_warmup_steps),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(),
        # stop any trial whose validation CORR falls below a floor
        "threshold": lambda: optuna.pruners.ThresholdPruner(lower=cfg.lower,
                                                            n_warmup_steps=cfg.n_warmup_steps),
        "none": lambda: optuna.pruners.NopPruner(),
    }
    if cfg.name not in pruners:
        raise FxmlError(f"hydra.sweeper.pruner.name must be one of {', '.join(pruners)} (got {cfg.name!r})")
    if cfg.name != "none" and direction != "maximize":
        log.warning("sweep: pruning compares validation CORR, so it is off for a minimised objective")
        return optuna.pruners.NopPruner()
    return pruners[cfg.name]()


def report_to_trial(sweep: Any) -> StepCallback:
    """A step listener reporting ``sweep.prune_on`` to the job's trial (``sweep.trial_number`` of
    study ``sweep.study_name`` in ``sweep.storage``). The trial learns its MLflow run id at once,
    so a worker that dies leaves a run that can be failed."""
    url = sweep.storage
    if not url or not sweep.study_name:
        raise FxmlError("sweep.trial_number is set but sweep.storage or sweep.study_name is not")
    seconds = float(sweep.storage_retry_seconds)
    trial = with_retries(url, "reach the trial", lambda: _attach(url, sweep), seconds)
    run = mlflow.active_run()
    if run is not None:
        with _unless_the_sweep_ended(trial):
            with_retries(url, "record the trial's MLflow run",
                         lambda: trial.set_user_attr("mlflow_run_id", run.info.run_id), seconds)
    metric = sweep.prune_on

    def report(step: int, total: int, metrics: dict[str, float]) -> None:
        if metric not in metrics:
            return
        value = float(metrics[metric])
        # constant predictions have no CORR: count them as the worst possible, so pruners see them
        value = WORST_CORR if math.isnan(value) else value
        with _unless_the_sweep_ended(trial):
            with_retries(url, f"report step {step}", lambda: trial.report(value, step), seconds)
        if with_retries(url, "ask the pruner", trial.should_prune, seconds):
            raise TrialPruned(f"pruned at step {step}: {metric}={value:.5f}")

    log.info("sweep: trial %d of study %s reports %s for pruning", trial.number, sweep.study_name,
             metric)
    return report


@contextmanager
def _unless_the_sweep_ended(trial: optuna.Trial) -> Iterator[None]:
    """A trial already ended means its sweep was stopped (and, on a cluster, its job cancelled):
    the job stops too, its run KILLED, instead of failing on a write to a finished trial."""
    try:
        yield
    except optuna.exceptions.UpdateFinishedTrialError:
        raise RunStopped(f"its sweep ended trial {trial.number}") from None


def _attach(url: str, sweep: Any) -> optuna.Trial:
    engine = {} if url.startswith("sqlite") else {"pool_pre_ping": True}
    storage = optuna.storages.RDBStorage(url, engine_kwargs=engine)
    study = optuna.load_study(study_name=sweep.study_name, storage=storage)
    pruner = study.user_attrs.get(PRUNER_ATTR)
    direction = study.direction.name.lower()
    study.pruner = make_pruner(OmegaConf.create(pruner), direction) if pruner else optuna.pruners.NopPruner()
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(sweep.study_name), int(sweep.trial_number))
    return optuna.trial.Trial(study, trial_id)
