"""The running Optuna trial, reached from inside a training job.

A sweeper launches each trial as an ordinary ``fxml.run`` job and passes the study's storage and
the trial id in ``sweep.*``. The job reattaches to that trial through the shared storage, so the
per-round or per-epoch validation score can be reported and the trial pruned, whichever process
or machine (joblib, SLURM, Ray) the job runs on.
"""

from __future__ import annotations

import logging
from typing import Any

import optuna

from fxml.models.base import StepCallback

log = logging.getLogger(__name__)


def trial_reporter(sweep: Any) -> StepCallback | None:
    """A step listener reporting ``sweep.prune_on`` to the trial; None outside a search."""
    if sweep is None or sweep.trial_id is None:
        return None
    study = optuna.load_study(study_name=sweep.study_name, storage=sweep.storage)
    trial = optuna.trial.Trial(study, int(sweep.trial_id))
    metric = sweep.prune_on

    def report(step: int, total: int, metrics: dict[str, float]) -> None:
        if metric not in metrics:
            return
        trial.report(float(metrics[metric]), step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step}: {metric}={metrics[metric]:.5f}")

    log.info("sweep: trial %d of study %s reports %s for pruning", trial.number, sweep.study_name,
             metric)
    return report
