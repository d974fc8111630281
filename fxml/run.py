"""``python -m fxml.run``: train one model, score it the Numerai way, log everything to MLflow.

``train`` reads as the job: each step is a function of :mod:`fxml.job`, which (with MLflow, Polars
and the model families) is imported once the config is checked, so ``--help`` and config errors
answer without loading them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from fxml.cli import exits_on_user_error, run_cli
from fxml.config import CONFIG_PATH, validate
from fxml.tracking.costs import StageCosts

if TYPE_CHECKING:
    from fxml.data.loader import NumeraiData


def start(cfg: DictConfig) -> str:
    """The checks that need no data, before a run is opened and before MLflow is loaded; the
    tracking URI."""
    from hydra.core.hydra_config import HydraConfig

    from fxml.cli import in_multirun
    from fxml.console import quiet_dependencies, show_steps_once
    from fxml.models.devices import require_accelerator
    from fxml.tracking.stores import bound_retries, tracking_uri

    quiet_dependencies()
    if in_multirun():
        show_steps_once(HydraConfig.get().job.num)
    uri = tracking_uri(cfg.tracking.uri)
    bound_retries(cfg.tracking.retry_seconds)
    require_accelerator(cfg.trainer.accelerator)  # every family, before any data is loaded
    return uri


def open_release(cfg: DictConfig) -> NumeraiData:
    """The release the config names (downloaded or written first where needed), opened before a
    run is, and before MLflow is loaded: a feature set, target or feature the release does not
    have is one line at once, and no run."""
    from fxml.data.loader import NumeraiData

    data = NumeraiData.from_config(cfg.data, source=instantiate(cfg.data.source, _recursive_=False))
    data.also_load({name: "scorer.targets" for name in cfg.scorer.targets})
    return data


@exits_on_user_error
def train(cfg: DictConfig) -> dict[str, Any]:
    """One job: check, load, fit, predict, score, log. Returns the run's summary metrics and its
    id (what a sweep reads its objective from; ``output=json`` prints it)."""
    validate(cfg)
    uri = start(cfg)
    costs = StageCosts()
    with costs.stage("open_data"):
        data = open_release(cfg)
    from fxml import job
    from fxml.data.memory import return_freed_memory
    from fxml.tracking.mlflow_run import log_config, tracked_run

    name = job.run_name(cfg)
    with tracked_run(uri, cfg.tracking.experiment, name, job.run_tags(cfg),
                     parent_run_id=cfg.sweep.parent_run_id) as run, costs.logged():
        log_config(cfg)
        job.tag_release(data)
        scorer, payout = job.payout_weights(instantiate(cfg.scorer))
        shown = job.shown_run(cfg, name, run, uri, payout)
        model, neutralizers = job.build_model(cfg, data)
        splitter = instantiate(cfg.cv)
        plan = job.plan_memory(instantiate(cfg.memory), data, model, splitter)
        with costs.stage("fit"):
            fitted, cv = job.fit_model(cfg, data, model, neutralizers, splitter, plan, scorer)
        return_freed_memory()  # the training rows and the model's dataset, before validation
        if fitted is None:  # cross-validation only (cv.refit=false)
            assert cv is not None
            job.show_summary(None, cv.summary, shown)
            return job.JobResult(cv.summary, shown)
        with costs.stage("validation"):
            validation = job.load_validation(data, neutralizers)
            scores = job.score_validation(fitted, validation, data, scorer)
        with costs.stage("importance"):
            job.log_importance(fitted, validation, data, scorer, cfg.scorer.importance_repeats)
        if cfg.tracking.log_model:
            with costs.stage("log_model"):
                job.log_model(fitted, data)
    cv_metrics = cv.summary if cv is not None else {}
    job.show_summary(scores, cv_metrics, shown)
    return job.JobResult({**cv_metrics, **scores.summary}, shown)


# Hydra wraps ``train`` under another name, so parallel launchers can pickle ``train`` by reference.
hydra_main = hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")(train)


def main() -> None:
    run_cli(hydra_main, "config")


if __name__ == "__main__":
    # Run the importable fxml.run, not this __main__ copy: parallel launchers pickle the task
    # function by reference, which works only for a function of an importable module.
    from fxml.run import main as importable_main

    importable_main()
