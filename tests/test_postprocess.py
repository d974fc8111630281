"""``postprocess=neutralize``: per-era feature neutralisation, scored, logged and carried into the
registered model."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
from numerai_tools.scoring import neutralize as numerai_neutralize

from fxml.data.loader import DataSplit
from fxml.models.base import load_model
from fxml.models.linear import RidgeModel
from fxml.models.postprocess import NeutralizedModel, neutralize_by_era, rank_by_era
from tests.conftest import Workspace, assert_one_line_error
from tests.helpers import fxml_command, served_release


def per_era_exposures(values: np.ndarray, features: np.ndarray, eras: np.ndarray) -> np.ndarray:
    """|Pearson correlation| of values with each feature, per era (eras x features)."""
    rows = []
    for era in np.unique(eras):
        mask = eras == era
        frame = pd.DataFrame(features[mask].astype(float))
        rows.append(frame.corrwith(pd.Series(values[mask])).abs().to_numpy())
    return np.array(rows)


# --- in process -----------------------------------------------------------------------------------


def test_full_neutralisation_leaves_no_linear_exposure_and_matches_numerai_tools() -> None:
    rng = np.random.default_rng(3)
    eras = np.repeat([1, 2, 3], 200)
    features = rng.integers(0, 5, (600, 6), dtype=np.int8)
    predictions = features[:, 0] * 0.5 + features[:, 3] + rng.normal(0, 1, 600)
    out = neutralize_by_era(predictions, features, eras, proportion=1.0)
    assert per_era_exposures(out, features, eras).max() < 1e-10
    for era in (1, 2, 3):
        mask = eras == era
        ranks = pd.DataFrame({"p": rank_by_era(predictions[mask])})
        reference = numerai_neutralize(ranks, pd.DataFrame(features[mask].astype(float)), 1.0)["p"]
        reference = (reference - reference.mean()) / reference.std(ddof=0)
        np.testing.assert_allclose(out[mask], reference.to_numpy(), atol=1e-10)
        assert out[mask].mean() == pytest.approx(0, abs=1e-12)
        assert out[mask].std() == pytest.approx(1)


def test_partial_neutralisation_keeps_part_of_the_signal() -> None:
    rng = np.random.default_rng(4)
    eras = np.repeat([1, 2], 300)
    features = rng.integers(0, 5, (600, 4), dtype=np.int8)
    predictions = features[:, 0] + rng.normal(0, 1, 600)
    none = per_era_exposures(neutralize_by_era(predictions, features, eras, 0.0), features, eras)
    half = per_era_exposures(neutralize_by_era(predictions, features, eras, 0.5), features, eras)
    assert (half[:, 0] < none[:, 0]).all() and (half[:, 0] > 0.1).all()
    ranks = rank_by_era(predictions, eras)
    zero = neutralize_by_era(predictions, features, eras, 0.0)
    np.testing.assert_array_equal(np.argsort(zero[:300], kind="stable"),
                                  np.argsort(ranks[:300], kind="stable"))


def test_wrapper_with_extra_neutraliser_columns_round_trips(tmp_path) -> None:
    rng = np.random.default_rng(5)
    features = rng.integers(0, 5, (400, 6), dtype=np.int8)
    eras = np.repeat([1, 2], 200)
    target = (features[:, 0] + rng.normal(0, 1, 400)).astype(np.float32)
    names = [f"feature_{i}" for i in range(6)]
    train = DataSplit("train", np.arange(400).astype(str), eras, features[:, :4].copy(), target, names[:4])
    wrapped = NeutralizedModel.wrap(RidgeModel(), names[:4], ["feature_3", "feature_4", "feature_5"],
                                    proportion=1.0, feature_set="custom")
    assert wrapped.input_features == names
    wrapped.fit(train)
    out = wrapped.predict(features, eras)
    assert per_era_exposures(out, features[:, 3:], eras).max() < 1e-10
    wrapped.save(tmp_path / "saved")
    np.testing.assert_array_equal(load_model(tmp_path / "saved").predict(features, eras), out)
    with pytest.raises(ValueError, match="expected 6 feature columns"):
        wrapped.predict(features[:, :4], eras)


# --- from the command line ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    space = Workspace(tmp_path_factory.mktemp("neutralised"))
    mlflow.set_tracking_uri(space.uri)
    return space


@pytest.fixture(scope="module")
def neutral_run(ws: Workspace):  # type: ignore[no-untyped-def]
    result = ws.train("postprocess=neutralize", "postprocess.proportion=1",
                      "postprocess.feature_set=charisma", "model.n_estimators=20",
                      "tracking.run_name=neutral")
    assert result.returncode == 0, result.stderr
    return next(r for r in ws.runs() if r.info.run_name == "neutral")


def feature_sets(ws: Workspace) -> dict[str, list[str]]:
    import json

    return json.loads((served_release(ws) / "features.json").read_text())["feature_sets"]


def test_neutralised_run_has_no_exposure_to_the_chosen_set(ws: Workspace, neutral_run) -> None:
    run = neutral_run
    assert run.info.status == "FINISHED"
    assert run.data.params["postprocess.method"] == "neutralize"
    path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                               artifact_path="predictions/validation.parquet")
    logged = pd.read_parquet(path)
    charisma = feature_sets(ws)["charisma"]
    validation = pd.read_parquet(served_release(ws) / "validation.parquet").loc[logged["id"].to_numpy()]
    exposures = per_era_exposures(logged["prediction"].to_numpy(), validation[charisma].to_numpy(),
                                  logged["era"].to_numpy())
    assert exposures.max() < 1e-8
    small = feature_sets(ws)["small"]
    assert per_era_exposures(logged["prediction"].to_numpy(), validation[small].to_numpy(),
                             logged["era"].to_numpy()).max() > 0.05, "only the chosen set is neutral"


def test_logged_model_lists_every_column_and_reproduces_the_predictions(ws: Workspace,
                                                                        neutral_run) -> None:
    model = mlflow.pyfunc.load_model(f"runs:/{neutral_run.info.run_id}/model")
    manifest = model.unwrap_python_model().manifest
    sets = feature_sets(ws)
    assert set(manifest["features"]) == set(sets["small"]) | set(sets["charisma"])
    assert manifest["postprocess"]["method"] == "neutralize"
    assert manifest["postprocess"]["proportion"] == 1.0
    assert manifest["postprocess"]["feature_set"] == "charisma"
    path = mlflow.artifacts.download_artifacts(run_id=neutral_run.info.run_id,
                                               artifact_path="predictions/validation.parquet")
    logged = pd.read_parquet(path)
    frame = pd.read_parquet(served_release(ws) / "validation.parquet").loc[logged["id"].to_numpy()]
    np.testing.assert_array_equal(np.asarray(model.predict(frame)), logged["prediction"].to_numpy())


def test_registered_model_carries_the_post_processing(ws: Workspace, neutral_run) -> None:
    result = fxml_command(ws, "fxml.promote", f"run_id={neutral_run.info.run_id}", "name=neutral")
    assert result.returncode == 0, result.stderr
    version = ws.client().get_model_version_by_alias("neutral", "champion")
    assert version.tags["postprocess"].startswith("neutralize(")
    assert "feature_set=charisma" in version.tags["postprocess"]
    model = mlflow.pyfunc.load_model("models:/neutral@champion")
    live = pd.read_parquet(served_release(ws) / "live.parquet")
    predictions = np.asarray(model.predict(live))
    charisma = live[feature_sets(ws)["charisma"]].to_numpy()
    assert per_era_exposures(predictions, charisma, np.zeros(len(live))).max() < 1e-8
    inner = model.unwrap_python_model().model
    features = live[model.unwrap_python_model().feature_names].to_numpy(np.int8)
    np.testing.assert_array_equal(predictions, inner.predict(features, None))


def test_bad_post_processing_settings_are_one_line(ws: Workspace) -> None:
    result = ws.train("postprocess=neutralize", "postprocess.proportion=1.5", "model=ridge",
                      "tracking.log_model=false")
    assert_one_line_error(result, "postprocess.proportion", "[0, 1]")


def test_unknown_neutraliser_set_names_the_sets() -> None:
    from types import SimpleNamespace

    from fxml.errors import FxmlError
    from fxml.models.postprocess import neutralizer_features

    data = SimpleNamespace(metadata={"feature_sets": {"small": ["feature_a"], "charisma": ["feature_b"]}})
    assert neutralizer_features(data, "charisma", None) == ["feature_b"]
    assert neutralizer_features(data, "small", ["feature_c", "feature_c"]) == ["feature_c"]
    with pytest.raises(FxmlError, match="postprocess.feature_set=nothing .*charisma, small"):
        neutralizer_features(data, "nothing", None)
