"""``python -m fxml.refit``: the final fit of a chosen run, on every labelled era.

Numerai's example scripts choose a configuration on honest scores, then train it once more on
every era with targets (train and the resolved validation eras) before predicting live. This
command does that for the run ``run_id=`` names (or a sweep's best trial, or the best run by a
metric, chosen as ``fxml.promote`` chooses): it reads the run's logged, resolved configuration and
trains it without folds on v5.3's ``full.parquet`` (before v5.3, train's and validation's files
appended in one int8 matrix; rows without a target, the unresolved eras, are left out as in any
fit). The new run is linked to its source (tag ``fxml.source_run_id``),
logs its model and its live predictions, and has no validation score of its own: every labelled
era is in its training. It is named after its source (``lgbm-small-target-3f9a-refit-07c2``);
the source's scores are copied beside it as ``source_<metric>``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig, OmegaConf

from fxml.cli import exits_on_user_error, run_cli
from fxml.config import CONFIG_PATH, validate
from fxml.config.schema import SweepJobConfig
from fxml.console import console, quiet_dependencies
from fxml.errors import FxmlError
from fxml.submission import checked

if TYPE_CHECKING:  # MLflow loads once the config is checked (fast --help)
    from fxml.submission.choice import RunSelection

log = logging.getLogger("fxml.refit")
# the source's summaries shown beside the refit (its own scores: the refit has none)
SOURCE_METRICS = ("corr_mean", "corr_sharpe", "mmc_mean", "bmc_mean", "payout_mean", "cv_corr_mean",
                  "cv_corr_sharpe")


@dataclass(frozen=True)
class Refit:
    run_id: str
    run_name: str
    source_run_id: str
    source_name: str
    fit_eras: str
    reason: str


@exits_on_user_error
def refit_command(cfg: DictConfig) -> Refit:
    quiet_dependencies()
    settings = checked(cfg)
    done = refit_selected(selection_of(settings), settings.tracking_uri)
    console.print(f"refit of run {done.source_name} ({done.source_run_id}, {done.reason}) on eras "
                  f"{done.fit_eras}: run {done.run_name} ({done.run_id})", highlight=False, soft_wrap=True)
    console.print(f"register it: python -m fxml.promote run_id={done.run_id}", highlight=False,
                  soft_wrap=True)
    return done


def selection_of(settings: Any) -> RunSelection:
    from fxml.submission.choice import RunSelection

    return RunSelection(settings.run_id, settings.sweep, settings.experiment, settings.metric,
                        settings.mode, settings.since, settings.until, settings.filter)


def refit_selected(selection: RunSelection, uri_setting: str | None) -> Refit:
    """Choose the run, then train its configuration on every labelled era as a new run."""
    import mlflow

    from fxml.submission.choice import choose_run
    from fxml.tracking.mlflow_run import tracking_uri
    from fxml.tracking.stores import store_client

    uri = tracking_uri(uri_setting)
    mlflow.set_tracking_uri(uri)
    choice = choose_run(store_client(), selection)
    source = choice.run
    run = refit(source_config(source, uri), source)
    return Refit(run.info.run_id, run.info.run_name, source.info.run_id, source.info.run_name,
                 run.data.tags.get("fit_eras", ""), choice.reason)


def source_config(source: Any, uri: str) -> DictConfig:
    """The source run's resolved configuration as it logged it, made a final fit's: no folds, no
    sweep, this tracking store (the logged copy masks passwords)."""
    import mlflow

    try:
        path = mlflow.artifacts.download_artifacts(run_id=source.info.run_id, artifact_path="config.yaml",
                                                   tracking_uri=uri)
    except Exception:  # MLflow raises several types for a missing artifact
        raise FxmlError(f"run {source.info.run_id} logged no config.yaml: it was not trained by "
                        "fxml.run, so there is no configuration to refit") from None
    cfg = OmegaConf.load(path)
    assert isinstance(cfg, DictConfig)
    cfg.cv = {"_target_": "fxml.data.folds.EraSplitter", "embargo": cfg.cv.get("embargo", "auto"),
              "refit": True}
    cfg.sweep = OmegaConf.structured(SweepJobConfig())
    cfg.tracking.uri = uri
    return cfg


def refit(cfg: DictConfig, source: Any) -> Any:
    """Train ``cfg`` on every labelled era of its release's ``full.parquet`` as a new run; log the
    model, the live predictions and the source's scores. Returns the finished run."""
    import mlflow
    import pandas as pd
    from hydra.utils import instantiate

    from fxml import job
    from fxml.models.base import predict_in_era_blocks
    from fxml.run import open_release, start
    from fxml.tracking.costs import StageCosts
    from fxml.tracking.mlflow_run import SOURCE_RUN_TAG, RunName, log_config, log_frame, tracked_run
    from fxml.tracking.stores import store_client

    validate(cfg)
    uri = start(cfg)
    tags = {**job.run_tags(cfg), SOURCE_RUN_TAG: source.info.run_id, "fxml.role": "refit"}
    name = RunName(f"{source.info.run_name}-refit")
    costs = StageCosts()
    with costs.stage("open_data"):
        data = open_release(cfg)
    with tracked_run(uri, cfg.tracking.experiment, name, tags) as run, costs.logged():
        log_config(cfg)
        job.tag_release(data)
        model, neutralizers = job.build_model(cfg, data)
        splitter = instantiate(cfg.cv)
        plan = job.plan_memory(instantiate(cfg.memory), data, model, splitter, training="full")
        with costs.stage("fit"):
            fitted, _ = job.fit_model(cfg, data, model, neutralizers, splitter, plan,
                                      instantiate(cfg.scorer), training="full")
        assert fitted is not None, "a fit without folds always fits"
        mlflow.log_metrics({f"source_{key}": source.data.metrics[key] for key in SOURCE_METRICS
                            if key in source.data.metrics})
        try:
            live = data.load("live", neutralizers)
        except FxmlError as error:  # offline, and the live file not there yet
            log.warning("refit: no live predictions logged (%s)", error)
        else:
            log_frame(pd.DataFrame({"id": live.ids, "prediction": predict_in_era_blocks(fitted, live)}),
                      "predictions/live.parquet")
        if cfg.tracking.log_model:
            job.log_model(fitted, data)
    return store_client(uri).get_run(run.info.run_id)


hydra_main = hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="refit")(refit_command)


def main() -> None:
    run_cli(hydra_main, "refit")


if __name__ == "__main__":
    main()
