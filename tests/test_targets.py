"""Targets as Numerai's models are built: a model trains on any target of the release (the rows
where that target is NaN left out), every score is on the main target Numerai pays on, and a target
ensemble trains each member on its own target in one run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from numerai_tools.scoring import numerai_corr

from fxml.data.folds import parse_era_ranges
from fxml.data.split import MAIN_TARGET, training_rows
from fxml.errors import FxmlError
from fxml.models.ensemble import EnsembleModel
from tests.conftest import Workspace, assert_one_line_error
from tests.helpers import fxml_command, table_rows, toy_split
from tests.releases import resident_bytes, store_backed

COMPARED = ("target", "target_cyrusd_20", "target_xerxes_20")
ROUNDS = 60  # LightGBM's rounds, for the grid's models and the ensemble's members alike
RIDGE = {"_target_": "fxml.models.linear.RidgeModel"}


# --- in process -----------------------------------------------------------------------------------


def with_aux_target(seed: int = 0, used: int = 1, missing_every: int = 0):  # type: ignore[no-untyped-def]
    """A toy split whose main target follows feature 2 and whose ``target_aux_20`` follows
    feature ``used`` (NaN in every ``missing_every``-th row)."""
    split = toy_split(eras=8, rows=150, features=6, seed=seed, used=2)
    other = toy_split(eras=8, rows=150, features=6, seed=seed, used=used)
    aux = other.target.astype(np.float32) if other.target is not None else None
    assert aux is not None
    other_features = split.features.copy()
    other_features[:, used] = other.features[:, used]
    if missing_every:
        aux = np.where(np.arange(len(aux)) % missing_every == 1, np.nan, aux).astype(np.float32)
    return dataclasses.replace(split, features=other_features, extra={"target_aux_20": aux})


def test_a_split_trains_on_another_target_without_copying_anything() -> None:
    split = with_aux_target()
    trained = split.with_target("target_aux_20")
    assert trained.target is split.extra["target_aux_20"] and trained.target_name == "target_aux_20"
    assert trained.extra == {MAIN_TARGET: split.target} and trained.features is split.features
    back = trained.with_target(MAIN_TARGET)
    assert back.target is split.target and back.extra["target_aux_20"] is split.extra["target_aux_20"]
    with pytest.raises(FxmlError, match=r"^target target_nope_20 is not loaded with the train split "
                                        r"\(loaded: target, target_aux_20\)$"):
        split.with_target("target_nope_20")


def test_training_rows_are_read_from_the_one_matrix(tmp_path: Path) -> None:
    split = with_aux_target(missing_every=7).with_target("target_aux_20")
    assert split.target is not None
    known = np.flatnonzero(~np.isnan(split.target))
    rows = training_rows(split)
    assert rows.features is split.features and rows.whole is None
    np.testing.assert_array_equal(rows.positions, known)
    np.testing.assert_array_equal(rows.target, split.target[known])
    np.testing.assert_array_equal(rows.eras, split.eras[known])
    np.testing.assert_array_equal(rows.extra[MAIN_TARGET], split.extra[MAIN_TARGET][known])
    buffer = np.empty((50, 6), dtype=np.int8)
    np.testing.assert_array_equal(rows.block(10, 60, buffer), split.features[known[10:60]])
    stored = store_backed(split, tmp_path / "train.int8")
    from_store = training_rows(stored)
    np.testing.assert_array_equal(from_store.block(0, len(known)), split.features[known])
    assert resident_bytes(tmp_path / "train.int8") == 0, "rows are read from the file, not mapped"
    # a long-horizon target unresolved in the last eras: one run of rows, a view
    main = split.extra[MAIN_TARGET]
    tail = dataclasses.replace(split, target=np.where(split.eras > 6, np.nan, main))
    viewed = training_rows(tail)
    assert viewed.whole is not None and np.shares_memory(viewed.whole, split.features)
    assert len(viewed) == int((split.eras <= 6).sum())
    with pytest.raises(FxmlError, match="no row of the train split has a value of target_aux_20"):
        training_rows(dataclasses.replace(split, target=np.full(len(split), np.nan, np.float32)))


def test_fitted_weights_are_chosen_for_the_main_target() -> None:
    """Whatever the members and the run learnt, the weights favour what Numerai pays on."""
    train, holdout, test = (with_aux_target(seed) for seed in (0, 1, 2))
    ensemble = EnsembleModel(members={"main": {**RIDGE, "target": MAIN_TARGET},
                                      "aux": {**RIDGE, "target": "target_aux_20"}}, weights="fit")
    # as the runner hands it a run trained on the auxiliary target
    ensemble.fit(train.with_target("target_aux_20"), holdout.with_target("target_aux_20"))
    weights = dict(zip(ensemble.names, ensemble.weights, strict=True))
    assert weights["main"] > 0.9, weights
    assert ensemble.fitted_params()["ensemble.target.aux"] == "target_aux_20"
    # each member learnt its own target
    main, aux = ensemble.models
    for member, column in ((main, 2), (aux, 1)):
        predictions = member.predict(test.features, test.eras)
        assert np.corrcoef(predictions, test.features[:, column])[0, 1] > 0.9


# --- from the command line ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    space = Workspace(tmp_path_factory.mktemp("targets"))
    mlflow.set_tracking_uri(space.uri)
    return space


@pytest.fixture(scope="module")
def grid(ws: Workspace):  # type: ignore[no-untyped-def]
    return ws.run("-m", f"data.target={','.join(COMPARED)}", "scorer.targets=[target_jasper_20]",
                  "tracking.experiment=targets", f"model.n_estimators={ROUNDS}")


def release(ws: Workspace) -> Path:
    return next((ws.root / "data" / "synthetic").glob("*/train.parquet")).parent


def job_runs(ws: Workspace) -> dict[str, mlflow.entities.Run]:
    return {run.data.tags["target"]: run for run in ws.runs("targets")
            if run.data.tags.get("fxml.role") != "sweep" and "target" in run.data.tags}


@pytest.mark.slow
def test_any_target_trains_and_every_score_is_on_the_main_target(ws: Workspace, grid) -> None:
    assert grid.returncode == 0, grid.stderr[-3000:]
    runs = job_runs(ws)
    assert set(runs) == set(COMPARED)
    folder = release(ws)
    names = ["era", "target", "target_cyrusd_20", "target_xerxes_20", "target_jasper_20"]
    validation = pd.read_parquet(folder / "validation.parquet", columns=names)  # indexed by id
    train = pd.read_parquet(folder / "train.parquet", columns=names)
    for trained_on, run in runs.items():
        assert run.info.status == "FINISHED" and run.data.tags["scored_on"] == MAIN_TARGET
        logged = ws.artifact_frame(run, "predictions/validation.parquet").set_index("id")
        rows = validation.loc[logged.index]
        np.testing.assert_array_equal(logged["target"], rows["target"], "the logged target is the main one")
        scored = logged[["era", "prediction"]].join(rows.drop(columns="era"))
        checks = {"corr_mean": MAIN_TARGET, "corr_target_jasper_20_mean": "target_jasper_20"}
        if trained_on != MAIN_TARGET:
            checks[f"corr_{trained_on}_mean"] = trained_on
        assert f"corr_{MAIN_TARGET}_mean" not in run.data.metrics
        for metric, target in checks.items():
            labelled = scored[scored[target].notna()]
            per_era = [numerai_corr(era[["prediction"]], era[target]).iloc[0]
                       for _, era in labelled.groupby("era")]
            assert run.data.metrics[metric] == pytest.approx(np.mean(per_era), abs=1e-6), metric
        # the rows without the training target, and only those, were left out of training
        fit_eras = parse_era_ranges(run.data.tags["fit_eras"])
        in_fit = train["era"].astype(int).isin(fit_eras)
        assert run.data.metrics["rows_without_target_fit"] == train.loc[in_fit, trained_on].isna().sum()
    assert runs["target_cyrusd_20"].data.metrics["rows_without_target_fit"] > 0
    # the comparison table ranks the jobs by their main-target score
    header, table = table_rows(grid.stdout, "Multirun ")
    assert header[1] == "corr_sharpe"
    shown = [float(row[1]) for row in table]
    assert shown == sorted(shown, reverse=True)
    ranked = sorted(runs, key=lambda target: -runs[target].data.metrics["corr_sharpe"])
    assert [row[-1] for row in table] == [f"data.target={target}" for target in ranked]


@pytest.mark.slow
def test_the_report_ranks_the_targets_by_the_main_target_score(ws: Workspace, grid) -> None:
    parent = next(run for run in ws.runs("targets") if run.data.tags.get("fxml.role") == "sweep")
    output = ws.root / "targets.html"
    result = fxml_command(ws, "fxml.report", f"sweep={parent.info.run_id}", f"file={output}",
                          in_process=True)
    assert result.returncode == 0, result.stderr
    page = output.read_text()
    runs = job_runs(ws)
    ranked = sorted(runs, key=lambda t: -runs[t].data.metrics["corr_sharpe"])
    cells = [page.index(f"<td>{runs[t].info.run_name}</td>") for t in ranked]
    assert cells == sorted(cells), "best main-target sharpe first"
    assert "<th>trained on</th>" in page and all(f"<td>{target}</td>" in page for target in COMPARED)


@pytest.mark.slow
def test_a_target_ensemble_trains_each_member_on_its_own_target(ws: Workspace, grid) -> None:
    members = {"ender": "target_ender_20", "cyrusd": "target_cyrusd_20", "xerxes": "target_xerxes_20"}
    result = ws.train("model=target_ensemble", "tracking.experiment=targets",
                      "tracking.run_name=target-ensemble",
                      *(f"model.members.{name}.n_estimators={ROUNDS}" for name in members))
    assert result.returncode == 0, result.stderr
    run = next(r for r in ws.runs("targets") if r.info.run_name == "target-ensemble")
    assert {name: run.data.params[f"ensemble.target.{name}"] for name in members} == members
    fit_eras = parse_era_ranges(run.data.tags["fit_eras"])
    train = pd.read_parquet(release(ws) / "train.parquet", columns=["era", *members.values()])
    in_fit = train["era"].astype(int).isin(fit_eras)
    for name, target in members.items():
        assert int(run.data.params[f"ensemble.rows_without_target.{name}"]) == \
            train.loc[in_fit, target].isna().sum()
    # each member predicts what a single model trained on its target in the grid predicted
    # (target_ender_20 is the main target's values, the grid's data.target=target)
    singles = job_runs(ws)
    logged = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model").unwrap_python_model()
    ensemble = logged.model
    features = ws.validation_frame(ws.artifact_frame(run, "predictions/validation.parquet")["id"])
    matrix = features[logged.feature_names].to_numpy(np.int8)
    for member, target in zip(ensemble.models, ("target", "target_cyrusd_20", "target_xerxes_20"),
                              strict=True):
        single = ws.artifact_frame(singles[target], "predictions/validation.parquet")
        np.testing.assert_array_equal(member.predict(matrix), single["prediction"].to_numpy())

    # registered, the version keeps its members' targets and predicts what the run logged
    promoted = fxml_command(ws, "fxml.promote", f"run_id={run.info.run_id}", "name=targets",
                            in_process=True)
    assert promoted.returncode == 0, promoted.stderr
    version = ws.client().get_model_version_by_alias("targets", "champion")
    assert version.tags["member_targets"] == \
        "ender=target_ender_20, cyrusd=target_cyrusd_20, xerxes=target_xerxes_20"
    frame = ws.artifact_frame(run, "predictions/validation.parquet")
    registered = mlflow.pyfunc.load_model("models:/targets@champion")
    np.testing.assert_array_equal(np.asarray(registered.predict(ws.validation_frame(frame["id"]))),
                                  frame["prediction"].to_numpy())
    manifest = registered.unwrap_python_model().manifest
    assert {name: manifest["ensemble"][name]["target"] for name in members} == members


def test_wrong_targets_are_one_line_errors(ws: Workspace) -> None:
    assert_one_line_error(ws.train("model.target=target_cyrusd_20"),
                          "model.target sets an ensemble member's own target", "data.target")
    assert_one_line_error(ws.train("model=target_ensemble", "model.members.xerxes.target=target_nope_20",
                                   "tracking.experiment=wrong"),
                          "model.members.xerxes.target=target_nope_20 is not a target in features.json")
    assert_one_line_error(ws.train("scorer.targets=[target_nope_20]", "tracking.experiment=wrong"),
                          "scorer.targets=target_nope_20 is not a target in features.json")
    assert all(run.info.status == "FAILED" for run in ws.runs("wrong"))
