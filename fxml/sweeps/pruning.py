"""The running Optuna trial, reached from inside a training job.

A sweeper launches each trial as an ordinary ``fxml.run`` job and passes the study name and the
trial number in ``sweep.*`` and the storage URL in ``$FXML_OPTUNA_STORAGE`` (kept out of the job's
config, which is logged). The job reattaches to that trial through the shared storage, so the
per-round or per-epoch validation score can be reported and the trial pruned, whichever process
or machine (joblib, SLURM, Ray) the job runs on.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import mlflow
import optuna
from hydra.core.hydra_config import HydraConfig

from fxml.errors import FxmlError, RunPruned
from fxml.steps import StepCallback
from fxml.sweeps.retry import with_retries

log = logging.getLogger(__name__)
WORST_CORR = -1.0
STORAGE_ENV = "FXML_OPTUNA_STORAGE"


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
    """A step listener reporting ``sweep.prune_on`` to the job's trial (``sweep.trial_number``).
    The trial learns its MLflow run id at once, so a worker that dies leaves a run that can be
    failed."""
    sweeper = HydraConfig.get().sweeper
    storage_url = sweep.storage or os.environ.get(STORAGE_ENV)
    if not storage_url:
        raise FxmlError(f"sweep.trial_number is set but neither sweep.storage nor ${STORAGE_ENV}")
    seconds = float(sweeper.get("storage_retry_seconds", 120))
    trial = with_retries("reach the trial", lambda: _attach(storage_url, sweep, sweeper), seconds)
    run = mlflow.active_run()
    if run is not None:
        with_retries("record the trial's MLflow run",
                     lambda: trial.set_user_attr("mlflow_run_id", run.info.run_id), seconds)
    metric = sweep.prune_on

    def report(step: int, total: int, metrics: dict[str, float]) -> None:
        if metric not in metrics:
            return
        value = float(metrics[metric])
        # constant predictions have no CORR: count them as the worst possible, so pruners see them
        value = WORST_CORR if math.isnan(value) else value
        with_retries(f"report step {step}", lambda: trial.report(value, step), seconds)
        if with_retries("ask the pruner", trial.should_prune, seconds):
            raise TrialPruned(f"pruned at step {step}: {metric}={value:.5f}")

    log.info("sweep: trial %d of study %s reports %s for pruning", trial.number, sweep.study_name,
             metric)
    return report


def _attach(storage_url: str, sweep: Any, sweeper: Any) -> optuna.Trial:
    engine = {} if storage_url.startswith("sqlite") else {"pool_pre_ping": True}
    storage = optuna.storages.RDBStorage(storage_url, engine_kwargs=engine)
    study = optuna.load_study(study_name=sweep.study_name, storage=storage,
                              pruner=make_pruner(sweeper.pruner, sweeper.direction))
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(sweep.study_name), int(sweep.trial_number))
    return optuna.trial.Trial(study, trial_id)
