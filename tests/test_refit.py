"""The final fit (``python -m fxml.refit``, ``fxml.promote refit=true``): a chosen run's configuration
trained on every labelled era of ``full.parquet``, logged as a new run linked to its source,
registered and submitted like any model."""

from __future__ import annotations

import re

import mlflow
import numpy as np
import pandas as pd
import pytest

from fxml.data.folds import era_ranges
from fxml.data.layout import era_numbers
from tests.conftest import Workspace
from tests.helpers import fxml_command, served_release

FAKE_API = "api._target_=tests.fakes.FakeNumerAPI"


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    space = Workspace(tmp_path_factory.mktemp("refit"))
    mlflow.set_tracking_uri(space.uri)
    return space


@pytest.fixture(scope="module")
def source(ws: Workspace):  # type: ignore[no-untyped-def]
    result = ws.train("model.n_estimators=30", "tracking.run_name=chosen")
    assert result.returncode == 0, result.stderr
    return next(run for run in ws.runs() if run.info.run_name == "chosen")


@pytest.fixture(scope="module")
def refitted(ws: Workspace, source):  # type: ignore[no-untyped-def]
    result = fxml_command(ws, "fxml.refit", f"run_id={source.info.run_id}", in_process=True)
    assert result.returncode == 0, result.stderr
    return result, next(run for run in ws.runs() if run.data.tags.get("fxml.role") == "refit")


def test_a_refit_trains_on_every_labelled_era_of_full(ws: Workspace, source, refitted) -> None:
    result, run = refitted
    full = pd.read_parquet(served_release(ws) / "full.parquet", columns=["era", "target"])
    labelled = era_numbers(full.loc[full["target"].notna(), "era"].to_numpy())
    validation = pd.read_parquet(served_release(ws) / "validation.parquet", columns=["era"])
    assert era_numbers(validation["era"].to_numpy()).max() > labelled.max(), "unresolved eras exist"
    assert run.info.status == "FINISHED"
    assert run.data.tags["fit_eras"] == era_ranges(labelled) == "1-50"  # train 1-40, resolved 41-50
    assert run.data.tags["fxml.source_run_id"] == source.info.run_id
    assert run.data.tags["data_version"] == "v5.3"
    assert run.data.params["model.n_estimators"] == "30", "the source's exact configuration"
    assert re.fullmatch(r"chosen-refit-[0-9a-f]{4}", run.info.run_name)
    # no validation score of its own; the source's beside it
    assert "corr_mean" not in run.data.metrics
    assert run.data.metrics["source_corr_sharpe"] == source.data.metrics["corr_sharpe"]
    assert result.stdout.splitlines()[-2:] == [
        f"refit of run chosen ({source.info.run_id}, named by run_id) on eras 1-50: run "
        f"{run.info.run_name} ({run.info.run_id})",
        f"register it: python -m fxml.promote run_id={run.info.run_id}"]


def test_the_refit_model_reloads_to_its_live_predictions(ws: Workspace, refitted) -> None:
    _, run = refitted
    logged = ws.artifact_frame(run, "predictions/live.parquet")
    live = pd.read_parquet(served_release(ws) / "live.parquet").loc[logged["id"].to_numpy()]
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    np.testing.assert_array_equal(np.asarray(model.predict(live)), logged["prediction"].to_numpy())


def test_promote_refit_registers_the_refit_and_it_submits(ws: Workspace, source) -> None:
    promoted = fxml_command(ws, "fxml.promote", f"run_id={source.info.run_id}", "refit=true",
                            "name=final", in_process=True)
    assert promoted.returncode == 0, promoted.stderr
    version = ws.client().get_model_version_by_alias("final", "champion")
    refit_run = ws.client().get_run(version.run_id)
    assert refit_run.data.tags["fxml.source_run_id"] == source.info.run_id
    assert version.tags["refit_of"] == source.info.run_id
    submitted = fxml_command(ws, "fxml.submit", "model_uri=models:/final@champion", "numerai_model=fxml_test",
                             FAKE_API, "dry_run=true", served=served_release(ws), round_number=1001)
    assert submitted.returncode == 0, submitted.stderr
    written = pd.read_csv(ws.root / "submissions" / "fxml_test_round1001.csv")
    assert written["prediction"].between(0, 1).all() and written["id"].is_unique


def test_before_v53_train_and_validation_are_appended_as_full_parquet_holds_them(ws: Workspace) -> None:
    """A v5.2 release has no full.parquet: its train and validation files are read into one matrix,
    the same rows in the same order, so the same configuration refits to the same model."""
    refits = {}
    for version in ("v5.2", "v5.3"):
        name = f"ridge-{version}"
        result = ws.train(f"data.version={version}", "model=ridge", f"tracking.run_name={name}")
        assert result.returncode == 0, result.stderr
        chosen = next(run for run in ws.runs() if run.info.run_name == name)
        refitted = fxml_command(ws, "fxml.refit", f"run_id={chosen.info.run_id}", in_process=True)
        assert refitted.returncode == 0, refitted.stderr
        refits[version] = next(run for run in ws.runs()
                               if run.data.tags.get("fxml.source_run_id") == chosen.info.run_id)
    assert refits["v5.2"].data.tags["fit_eras"] == refits["v5.3"].data.tags["fit_eras"] == "1-50"
    live = {version: ws.artifact_frame(run, "predictions/live.parquet") for version, run in refits.items()}
    pd.testing.assert_frame_equal(live["v5.2"], live["v5.3"])
