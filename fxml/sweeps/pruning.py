"""The running Optuna trial, reached from inside a training job.

A sweeper launches each trial as an ordinary ``fxml.run`` job and passes the study's storage and
the trial id in ``sweep.*``. The job reattaches to that trial through the shared storage, so the
per-round or per-epoch validation score can be reported and the trial pruned, whichever process
or machine (joblib, SLURM, Ray) the job runs on.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import optuna
from hydra.core.hydra_config import HydraConfig

from fxml.errors import FxmlError
from fxml.models.base import StepCallback

log = logging.getLogger(__name__)
WORST_CORR = -1.0


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


def trial_reporter(sweep: Any) -> StepCallback | None:
    """A step listener reporting ``sweep.prune_on`` to the trial; None outside a search."""
    if sweep is None or sweep.trial_id is None:
        return None
    sweeper = HydraConfig.get().sweeper
    study = optuna.load_study(study_name=sweep.study_name, storage=sweep.storage,
                              pruner=make_pruner(sweeper.pruner, sweeper.direction))
    trial = optuna.trial.Trial(study, int(sweep.trial_id))
    metric = sweep.prune_on

    def report(step: int, total: int, metrics: dict[str, float]) -> None:
        if metric not in metrics:
            return
        value = float(metrics[metric])
        # constant predictions have no CORR: count them as the worst possible, so pruners see them
        value = WORST_CORR if math.isnan(value) else value
        trial.report(value, step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step}: {metric}={value:.5f}")

    log.info("sweep: trial %d of study %s reports %s for pruning", trial.number, sweep.study_name,
             metric)
    return report
