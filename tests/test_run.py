"""End to end: ``python -m fxml.run`` as a user runs it, read back from a real MLflow store."""

from __future__ import annotations

import numpy as np
import pytest
from numerai_tools.scoring import correlation_contribution, numerai_corr

from tests.conftest import Workspace, assert_reloads_to_logged_predictions


@pytest.fixture(scope="module")
def default_run(workspace: Workspace):
    result = workspace.run("tracking.run_name=default-lgbm")
    assert result.returncode == 0, result.stderr
    run = next(r for r in workspace.runs() if r.info.run_name == "default-lgbm")
    return result, run


def test_prints_summary_and_where_it_logged(default_run) -> None:
    result, run = default_run
    assert "CORR" in result.stdout and "MMC" in result.stdout
    assert run.info.run_id in result.stdout
    assert "mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db" in result.stdout


def test_run_logs_params_tags_and_named_metrics(default_run) -> None:
    _, run = default_run
    assert run.info.status == "FINISHED"
    for name in ("corr_mean", "corr_std", "corr_sharpe", "corr_max_drawdown", "mmc_mean",
                 "mmc_sharpe", "bmc_mean", "fnc_mean", "feature_exposure_max"):
        assert np.isfinite(run.data.metrics[name]), name
    assert 0.005 < run.data.metrics["corr_mean"] < 0.1
    assert run.data.params["model.n_estimators"] == "300"
    assert run.data.params["data.feature_set"] == "small"
    assert run.data.params["trainer.accelerator"] == "cpu"
    tags = run.data.tags
    assert tags["data_version"] == "v5.3" and len(tags["data_fingerprint"]) == 16
    assert tags["fxml_version"] and tags["git_commit"] and tags["model_family"] == "LightGBMModel"
    assert not any(k.split("_")[0].upper() == "TC" for k in run.data.metrics)


def test_per_era_series_use_era_numbers_as_steps(workspace: Workspace, default_run) -> None:
    _, run = default_run
    history = workspace.client().get_metric_history(run.info.run_id, "era_corr")
    per_era = workspace.artifact_frame(run, "metrics/per_era.csv").set_index("era")
    assert [m.step for m in history] == per_era.index.tolist()
    assert np.allclose([m.value for m in history], per_era["corr"].to_numpy())
    assert workspace.client().get_metric_history(run.info.run_id, "era_mmc")


def test_logged_metrics_recomputed_from_logged_predictions(workspace: Workspace, default_run) -> None:
    _, run = default_run
    frame = workspace.artifact_frame(run, "predictions/validation.parquet")
    assert list(frame.columns[:4]) == ["id", "era", "prediction", "target"]
    assert "meta_model" in frame
    corrs, mmcs = [], []
    for _, era in frame.dropna(subset=["target"]).groupby("era"):
        era = era.set_index("id").sort_index()
        corrs.append(numerai_corr(era[["prediction"]], era["target"]).iloc[0])
        with_mm = era.dropna(subset=["meta_model"])
        if len(with_mm):
            mmcs.append(correlation_contribution(with_mm[["prediction"]], with_mm["meta_model"],
                                                 with_mm["target"]).iloc[0])
    assert run.data.metrics["corr_mean"] == pytest.approx(np.mean(corrs), abs=1e-6)
    assert run.data.metrics["corr_std"] == pytest.approx(np.std(corrs), abs=1e-6)
    assert run.data.metrics["mmc_mean"] == pytest.approx(np.mean(mmcs), abs=1e-6)


def test_reloaded_model_predicts_what_was_logged(workspace: Workspace, default_run) -> None:
    _, run = default_run
    assert_reloads_to_logged_predictions(workspace, run)


def test_artifacts_include_config_and_plot(workspace: Workspace, default_run) -> None:
    _, run = default_run
    paths = {a.path for folder in ("", "plots", "metrics", "predictions")
             for a in workspace.client().list_artifacts(run.info.run_id, folder or None)}
    assert {"config.yaml", "plots/cumulative_scores.png", "metrics/per_era.csv",
            "predictions/validation.parquet"} <= paths


# the config and task of the command, in-process: the command line itself is the default run's
@pytest.mark.parametrize(
    ("overrides", "family", "param"),
    [
        (("model=xgboost", "data.feature_set=medium", "model.n_estimators=60"), "XGBoostModel",
         ("data.feature_set", "medium")),
        (("model=lgbm", "model.n_estimators=50"), "LightGBMModel", ("model.n_estimators", "50")),
        (("model=ridge",), "RidgeModel", ("model.alpha", "1.0")),
    ],
)
def test_model_families_from_the_command_line(workspace: Workspace, overrides, family, param) -> None:
    name = f"family-{family}-{param[1]}"
    result = workspace.train(*overrides, f"tracking.run_name={name}", "tracking.log_model=false")
    assert result.returncode == 0, result.stderr
    run = next(r for r in workspace.runs() if r.info.run_name == name)
    assert run.data.tags["model_family"] == family
    assert run.data.params[param[0]] == param[1]
    assert run.data.metrics["corr_mean"] > 0
    assert result.value["corr_mean"] == pytest.approx(run.data.metrics["corr_mean"])


def test_help_and_cfg_show_groups_and_resolved_config(workspace: Workspace) -> None:
    helped = workspace.run("--help", small=False)
    assert helped.returncode == 0
    for group in ("data:", "model:", "trainer:", "memory:", "scorer:"):
        assert group in helped.stdout
    assert "model: ensemble, lgbm, mlp, resnet, ridge, tabnet, target_ensemble, xgboost" in helped.stdout
    assert "hparams_search: lgbm, mlp, ridge, xgboost" in helped.stdout
    shown = workspace.run("--cfg", "job", "model=xgboost", small=False)
    assert shown.returncode == 0
    assert "_target_: fxml.models.xgboost_model.XGBoostModel" in shown.stdout
    assert "accelerator: cpu" in shown.stdout
