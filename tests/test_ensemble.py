"""``model=ensemble``: members trained in one run or loaded from earlier runs, rank-averaged per era,
scored, logged and reloaded like any model."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest

from fxml.data.loader import DataSplit
from fxml.errors import FxmlError
from fxml.models.base import load_model
from fxml.models.ensemble import EnsembleModel, LoadedMember, fit_weights, member_columns
from fxml.models.postprocess import rank_by_era
from tests.conftest import Workspace, assert_one_line_error, assert_reloads_to_logged_predictions
from tests.helpers import fxml_command, served_release

RIDGE = {"_target_": "fxml.models.linear.RidgeModel", "alpha": 1.0}


# --- in process -----------------------------------------------------------------------------------


def _split(rng: np.random.Generator, n_eras: int = 6, rows: int = 80, k: int = 5) -> DataSplit:
    features = rng.integers(0, 5, (n_eras * rows, k), dtype=np.int8)
    target = (features[:, 0] - features[:, 1] + rng.normal(0, 2, len(features))).clip(-2, 2) / 4 + 0.5
    eras = np.repeat(np.arange(1, n_eras + 1), rows)
    return DataSplit("train", np.arange(len(eras)).astype(str), eras, features,
                     target.astype(np.float32), [f"feature_{i}" for i in range(k)])


def test_rank_by_era_matches_pandas_average_ranks() -> None:
    rng = np.random.default_rng(1)
    values = rng.integers(0, 7, 300).astype(float)
    values[[3, 50]] = np.nan
    eras = np.repeat([4, 9, 12], 100)
    expected = pd.Series(values).groupby(eras).rank(method="average")
    expected = (expected - 0.5) / pd.Series(values).notna().groupby(eras).transform("sum")
    np.testing.assert_allclose(rank_by_era(values, eras), expected.to_numpy(), rtol=0, atol=1e-15)
    assert np.isnan(rank_by_era(values, eras)[[3, 50]]).all()


def test_fitted_weights_favour_the_informative_member() -> None:
    rng = np.random.default_rng(0)
    eras = np.repeat(np.arange(1, 21), 200)
    target = rng.choice([0, 0.25, 0.5, 0.75, 1.0], len(eras), p=[0.05, 0.2, 0.5, 0.2, 0.05])
    members = [target + rng.normal(0, 1, len(eras)), rng.normal(0, 1, len(eras)),
               target + rng.normal(0, 3, len(eras))]
    ranks = np.column_stack([rank_by_era(m, eras) for m in members])
    weights = fit_weights(ranks, target, eras)
    assert weights.sum() == pytest.approx(1.0) and (weights >= 0).all()
    assert weights[0] > 0.5 and weights[1] < 0.05


def test_ensemble_state_round_trips(tmp_path) -> None:
    rng = np.random.default_rng(2)
    train, validation = _split(rng), _split(rng)
    ensemble = EnsembleModel(members={"a": RIDGE, "b": {**RIDGE, "alpha": 1000.0}}, weights={"a": 3, "b": 1})
    ensemble.fit(train, validation)
    np.testing.assert_allclose(ensemble.weights, [0.75, 0.25])
    predictions = ensemble.predict(validation.features, validation.eras)
    assert ((predictions > 0) & (predictions < 1)).all()
    ensemble.save(tmp_path / "saved")
    reloaded = load_model(tmp_path / "saved")
    np.testing.assert_array_equal(reloaded.predict(validation.features, validation.eras), predictions)
    one_era = reloaded.predict(validation.features[:80], None)
    np.testing.assert_array_equal(one_era, predictions[:80])


# --- from the command line ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    space = Workspace(tmp_path_factory.mktemp("ensembles"))
    mlflow.set_tracking_uri(space.uri)
    return space


def run_named(ws: Workspace, name: str, *overrides: str):  # type: ignore[no-untyped-def]
    result = ws.train(*overrides, f"tracking.run_name={name}")
    assert result.returncode == 0, result.stderr
    return next(r for r in ws.runs() if r.info.run_name == name)


@pytest.fixture(scope="module")
def trained_ensemble(ws: Workspace):  # type: ignore[no-untyped-def]
    return run_named(ws, "ensemble-fit", "model=ensemble", "model.members.lgbm.n_estimators=20",
                     "model.weights=fit")


def test_ensemble_of_two_configs_is_scored_logged_and_reloads_exactly(ws: Workspace,
                                                                      trained_ensemble) -> None:
    run = trained_ensemble
    assert run.info.status == "FINISHED"
    assert run.data.tags["model_family"] == "EnsembleModel"
    assert np.isfinite(run.data.metrics["corr_mean"]) and np.isfinite(run.data.metrics["mmc_mean"])
    weights = {k: float(v) for k, v in run.data.params.items() if k.startswith("ensemble.weight.")}
    assert set(weights) == {"ensemble.weight.lgbm", "ensemble.weight.ridge"}
    assert sum(weights.values()) == pytest.approx(1.0, abs=1e-5)
    assert run.data.params["model.members.ridge._target_"] == "fxml.models.linear.RidgeModel"

    model = assert_reloads_to_logged_predictions(ws, run)
    assert set(model.unwrap_python_model().manifest["ensemble"]) == {"lgbm", "ridge"}


def test_promoted_ensemble_predicts_live(ws: Workspace, trained_ensemble) -> None:
    result = fxml_command(ws, "fxml.promote", f"run_id={trained_ensemble.info.run_id}", "name=ens")
    assert result.returncode == 0, result.stderr
    model = mlflow.pyfunc.load_model("models:/ens@champion")
    live = pd.read_parquet(served_release(ws) / "live.parquet")
    predictions = np.asarray(model.predict(live))
    assert len(predictions) == len(live) and ((predictions > 0) & (predictions < 1)).all()


def test_ensemble_of_existing_runs_rank_averages_their_predictions(ws: Workspace,
                                                                   trained_ensemble) -> None:
    # an ensemble can be a member too
    first, second = trained_ensemble, run_named(ws, "member-lgbm", "model.n_estimators=15")
    run = run_named(ws, "ensemble-runs", "model=ensemble", "~model.members.lgbm",
                    "~model.members.ridge", f"+model.members.a=runs:/{first.info.run_id}/model",
                    f"+model.members.b=runs:/{second.info.run_id}/model",
                    "model.weights={a: 1, b: 3}")
    assert run.info.status == "FINISHED"
    combined = ws.artifact_frame(run, "predictions/validation.parquet").set_index("id")
    eras = combined["era"].to_numpy()
    expected = np.zeros(len(combined))
    for weight, member in ((0.25, first), (0.75, second)):
        logged = ws.artifact_frame(member, "predictions/validation.parquet")
        member_predictions = logged.set_index("id").loc[combined.index]
        expected += weight * rank_by_era(member_predictions["prediction"].to_numpy(), eras)
    np.testing.assert_allclose(combined["prediction"].to_numpy(), expected, rtol=0, atol=1e-12)
    manifest = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model").unwrap_python_model().manifest
    assert manifest["ensemble"]["a"]["source"] == f"runs:/{first.info.run_id}/model"
    assert manifest["ensemble"]["b"]["weight"] == pytest.approx(0.75)


def test_member_reading_other_features_is_rejected(ws: Workspace, trained_ensemble) -> None:
    uri = f"runs:/{trained_ensemble.info.run_id}/model"
    logged = mlflow.pyfunc.load_model(uri).unwrap_python_model()
    features = logged.feature_names
    member = LoadedMember(logged.model, features, uri)
    with pytest.raises(FxmlError, match=r"model.members.wide .* reads 2 feature\(s\) this run does "
                                        r"not load.*data.feature_set"):
        member_columns("wide", member, features[2:])
    result = ws.train("model=ensemble", "~model.members.lgbm", "+model.members.gone=runs:/0000/model",
                      "tracking.run_name=ensemble-bad")
    assert_one_line_error(result, "model.members.gone", "runs:/0000/model")


def test_memory_plans_count_the_largest_member_dataset() -> None:
    from fxml.models.lightgbm_model import LightGBMModel
    from fxml.models.xgboost_model import XGBoostModel

    gbdts = EnsembleModel(members={
        "lgbm": {"_target_": "fxml.models.lightgbm_model.LightGBMModel"},
        "xgb": {"_target_": "fxml.models.xgboost_model.XGBoostModel"},
        "logged": "runs:/0123/model"})
    profile = gbdts.memory_profile()
    assert profile.dataset_bytes_per_value == XGBoostModel.memory.dataset_bytes_per_value
    # streamed from the store, XGBoost keeps its pages on disk and LightGBM's bins are the most
    assert profile.streamed_bytes_per_value == LightGBMModel.memory.dataset_bytes_per_value
    assert profile.reads_rows_from_store  # both build their dataset from the store a block at a time
    ridge = EnsembleModel(members={"ridge": {"_target_": "fxml.models.linear.RidgeModel"}})
    assert ridge.memory_profile().dataset_bytes_per_value == 0.0
    assert not ridge.memory_profile().reads_rows_from_store
