"""Era-wise cross-validation: splitter properties, runs as users type them, layouts read back from
MLflow, cv metrics recomputed with numerai-tools, a memorising model, a sweep pruned after a fold."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest
from numerai_tools.scoring import correlation_contribution, feature_neutral_corr, numerai_corr

from fxml.crossval import pruning_signal, training_parts
from fxml.data.folds import (
    EraKFold,
    EraSplitter,
    WalkForward,
    era_ranges,
    parse_era_ranges,
    resolve_embargo,
    rows_of_eras,
    with_inner_holdout,
)
from fxml.data.loader import DataSplit
from fxml.errors import FxmlError
from fxml.models.base import StepCallback, TabularModel
from fxml.models.params import RidgeParams
from tests.conftest import Workspace, assert_one_line_error

FAST = ("model.n_estimators=15", "tracking.log_model=false")

# --- the splitter -------------------------------------------------------------------------------

ERA_SETS = {
    "consecutive": np.arange(1, 61),
    "every 4th": np.arange(1, 241, 4),
    "gaps": np.concatenate([np.arange(3, 30), np.arange(35, 50), np.arange(52, 90, 2)]),
}


def distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a[:, None] - b[None, :]).min()) if len(a) and len(b) else np.inf


def check_roles(fold, eras: np.ndarray, embargo: int) -> None:  # type: ignore[no-untyped-def]
    train, holdout, test = (set(fold.train.tolist()), set(fold.holdout.tolist()), set(fold.test.tolist()))
    assert not (train & holdout) and not (train & test) and not (holdout & test), "an era in two roles"
    assert train | holdout | test <= set(eras.tolist())
    assert len(train) and len(test)
    assert distance(fold.train, fold.test) > embargo and distance(fold.holdout, fold.test) > embargo
    assert distance(fold.train, fold.holdout) > embargo
    # the test block is a contiguous run of the loaded eras
    positions = np.searchsorted(eras, fold.test)
    assert np.array_equal(positions, np.arange(positions[0], positions[0] + len(fold.test)))


CASES = list(itertools.product(ERA_SETS, (2, 3, 5), (0, 1, 4, 8), (0, 3)))


@pytest.mark.parametrize(("eras_name", "n_folds", "embargo", "holdout"), CASES)
def test_era_kfold_tests_every_era_once_with_embargo_on_both_sides(eras_name, n_folds, embargo,
                                                                    holdout) -> None:
    eras = ERA_SETS[eras_name]
    folds = EraKFold(folds=n_folds).make_folds(eras, embargo, holdout)
    assert len(folds) == n_folds and [f.index for f in folds] == list(range(n_folds))
    tested = np.concatenate([fold.test for fold in folds])
    assert np.array_equal(np.sort(tested), eras) and len(np.unique(tested)) == len(eras)
    for fold in folds:
        check_roles(fold, eras, embargo)
        # purged on both sides: every era further than the embargo from the test block trains
        # (or is the inner holdout, or was dropped next to it)
        far = eras[(eras < fold.test[0] - embargo) | (eras > fold.test[-1] + embargo)]
        assert set(fold.train) | set(fold.holdout) <= set(far)
        assert len(fold.holdout) == holdout
        if holdout:
            assert np.array_equal(fold.holdout, far[-holdout:]), "the holdout is the end of training"


@pytest.mark.parametrize(("eras_name", "n_folds", "embargo", "holdout"), CASES)
def test_walk_forward_never_trains_on_a_later_era_than_it_tests(eras_name, n_folds, embargo,
                                                                holdout) -> None:
    eras = ERA_SETS[eras_name]
    folds = WalkForward(folds=n_folds, min_train_eras=20).make_folds(eras, embargo, holdout)
    assert len(folds) == n_folds
    tested = np.concatenate([fold.test for fold in folds])
    assert np.all(np.diff(tested) > 0), "test blocks follow each other without overlap"
    assert tested[-1] == eras[-1], "the last training era is tested"
    for fold in folds:
        check_roles(fold, eras, embargo)
        seen = np.concatenate([fold.train, fold.holdout])
        assert seen.max() < fold.test.min() - embargo
        before = eras[eras < fold.test[0] - embargo]
        assert len(fold.train) >= 20, "cv.min_train_eras: eras fitted on"
        assert set(seen) <= set(before)
        if holdout:
            assert np.array_equal(fold.holdout, before[-holdout:]), "the holdout ends the window"
        else:
            assert np.array_equal(fold.train, before), "an expanding window of all earlier eras"


def test_no_cv_has_no_folds_and_the_inner_holdout_ends_training() -> None:
    eras = np.arange(1, 41)
    assert EraSplitter().make_folds(eras, 4, 5) == [] and not EraSplitter().active
    fit, holdout = with_inner_holdout(eras, 5, 4)
    assert holdout.tolist() == [36, 37, 38, 39, 40] and fit.tolist() == list(range(1, 32))
    fit, holdout = with_inner_holdout(eras, 0, 4)
    assert fit.tolist() == eras.tolist() and not len(holdout)


@pytest.mark.parametrize(("splitter", "fragment"), [
    (EraKFold(folds=50), "cannot make 50 folds"),
    (WalkForward(folds=30, min_train_eras=20), "cannot hold 30 test blocks"),
    (EraKFold(folds=2), "no era left to fit on"),
])
def test_impossible_layouts_are_one_clear_error(splitter, fragment) -> None:
    with pytest.raises(FxmlError, match=fragment):
        splitter.make_folds(np.arange(1, 41), 4, 20 if fragment == "no era left to fit on" else 0)


def test_auto_embargo_follows_the_target_horizon() -> None:
    assert resolve_embargo("auto", "target") == 4
    assert resolve_embargo("auto", "target_cyrusd_20") == 4
    assert resolve_embargo("auto", "target_ralph_60") == 16
    assert resolve_embargo(7, "target_ralph_60") == 7
    with pytest.raises(FxmlError, match="set cv.embargo to a number"):
        resolve_embargo("auto", "target_custom")


def test_era_ranges_round_trip() -> None:
    for eras in (*ERA_SETS.values(), np.array([5]), np.array([1, 2, 3, 7, 9, 10])):
        assert np.array_equal(parse_era_ranges(era_ranges(eras)), eras)
    assert era_ranges(np.array([1, 2, 3, 7, 9, 10])) == "1-3,7,9-10"


def tiny_split(n_eras: int = 12, rows: int = 5) -> DataSplit:
    eras = np.repeat(np.arange(1, n_eras + 1), rows)
    return DataSplit("train", np.array([f"id{i}" for i in range(len(eras))]), eras,
                     np.arange(len(eras) * 3, dtype=np.int8).reshape(-1, 3),
                     np.linspace(0, 1, len(eras)).astype(np.float32), ["a", "b", "c"])


def test_training_parts_view_the_fit_rows_and_copy_the_small_holdout() -> None:
    split = tiny_split()
    fit, holdout = training_parts(split, 2, 1)
    assert np.unique(fit.eras).tolist() == list(range(1, 10)) and np.unique(holdout.eras).tolist() == [11, 12]
    assert np.shares_memory(fit.features, split.features), "a view: no copy of the big block"
    assert not np.shares_memory(holdout.features, split.features), "the train matrix can be freed"
    whole, none = training_parts(split, 0, 4)
    assert whole is split and none is None, "no holdout: the model fits on every training era"
    # era_kfold's two runs of eras are a copy, a walk-forward block a view
    two_runs = rows_of_eras(split, np.array([1, 2, 3, 9, 10]))
    assert not np.shares_memory(two_runs.features, split.features)
    assert np.shares_memory(rows_of_eras(split, np.array([4, 5, 6])).features, split.features)


def test_memory_plans_count_the_era_kfold_copy(workspace: Workspace) -> None:
    from types import SimpleNamespace

    from fxml.data.memory import MemoryNeed, MemoryPlan, MemoryProfile
    from fxml.job import plan_memory

    seen = []

    class Recording:
        def plan(self, need: MemoryNeed) -> MemoryPlan:
            seen.append(need)
            return MemoryPlan("memory", 1, "recorded")

    data = SimpleNamespace(memory_need=lambda *_: MemoryNeed(1000, 500, 200, 10, 40))
    model = SimpleNamespace(memory_profile=MemoryProfile)
    with mlflow.start_run(experiment_id=mlflow.set_experiment("plans").experiment_id):
        for splitter in (None, EraSplitter(), WalkForward(), EraKFold(folds=5)):
            plan_memory(Recording(), data, model, splitter)  # type: ignore[arg-type]
    assert [need.model_dataset for need in seen] == [200, 200, 200, 200 + 800]
    # a dataset streamed from disk (XGBoost's external memory) still has the copy beside it
    seen.clear()
    streamed = MemoryNeed(1000, 500, 200, 10, 40, streamed_model_dataset=0)
    data = SimpleNamespace(memory_need=lambda *_: streamed)
    with mlflow.start_run(experiment_id=mlflow.set_experiment("plans").experiment_id):
        plan_memory(Recording(), data, model, EraKFold(folds=5))  # type: ignore[arg-type]
    assert (seen[0].model_dataset, seen[0].streamed_model_dataset) == (1000, 800)


@pytest.mark.parametrize(("objective", "expected"), [
    ("cv_corr_sharpe", 2.0), ("cv_corr_mean + 2*cv_bmc_mean", 0.1 + 2 * 0.03),
    ("corr_sharpe", 0.1), ("cv_mmc_mean", float("nan")), (None, 0.1)])
def test_pruning_signal_is_the_running_cv_objective(objective, expected) -> None:
    running = {"cv_corr_mean": 0.1, "cv_corr_sharpe": 2.0, "cv_bmc_mean": 0.03, "cv_mmc_mean": float("nan")}
    value = pruning_signal(running, objective)
    assert value == pytest.approx(expected, nan_ok=True)


# --- a model that memorises the target of every training row ------------------------------------


def row_key(row: np.ndarray) -> bytes:
    return np.ascontiguousarray(row, dtype=np.int8).tobytes()


class RowMemorizer(TabularModel):
    """Predicts the training target of a row it has seen (a row of int8 features identifies a row
    of the synthetic data), and a hash-based value for any other row: perfect in sample, nothing
    out of sample. It tags the eras it fitted on and the eras of the validation set it was given."""

    params_class = RidgeParams  # composed from model=ridge with another _target_

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.seen: dict[bytes, float] = {}

    def fit(self, train: DataSplit, validation: DataSplit | None = None,
            on_step: StepCallback | None = None) -> RowMemorizer:
        assert train.target is not None
        self.seen = {row_key(row): float(t) for row, t in zip(train.features, train.target, strict=True)}
        mlflow.set_tags({"seen.fit_eras": era_ranges(train.eras),
                         "seen.validation_eras": era_ranges(validation.eras) if validation is not None
                         else ""})
        return self

    def predict_float32(self, features: np.ndarray) -> np.ndarray:
        out = np.empty(len(features))
        for i, row in enumerate(np.asarray(features, dtype=np.int8)):
            key = row_key(row)
            unseen = int.from_bytes(hashlib.blake2b(key, digest_size=4).digest(), "little") / 2**32
            out[i] = self.seen.get(key, unseen)
        return out

    def save_state(self, directory: Path) -> None:
        keys = np.array(list(self.seen), dtype=object)
        np.savez(directory / "memory.npz", keys=keys, values=np.array(list(self.seen.values())))

    def load_state(self, directory: Path) -> None:
        saved = np.load(directory / "memory.npz", allow_pickle=True)
        self.seen = dict(zip(saved["keys"].tolist(), saved["values"].tolist(), strict=True))


def job_run(workspace: Workspace, experiment: str):  # type: ignore[no-untyped-def]
    return next(r for r in workspace.runs(experiment) if r.data.tags.get("fxml.role") != "cv_fold")


def fold_runs(workspace: Workspace, experiment: str, parent_id: str) -> list:
    found = [r for r in workspace.runs(experiment) if r.data.tags.get("mlflow.parentRunId") == parent_id]
    return sorted(found, key=lambda r: int(r.data.tags["fxml.fold"]))


def layout(run) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    return {role: parse_era_ranges(run.data.tags[f"fxml.fold.{role}_eras"])
            for role in ("train", "holdout", "test")}


@pytest.fixture(scope="module")
def memorizer_run(workspace: Workspace):  # type: ignore[no-untyped-def]
    result = workspace.train("cv=era_kfold", "cv.folds=4", "model=ridge",
                           "model._target_=tests.test_cv.RowMemorizer", "trainer.inner_holdout_eras=3",
                           "scorer.fnc=false", "tracking.experiment=memorizer")
    assert result.returncode == 0, result.stderr
    return job_run(workspace, "memorizer")


def test_memorizer_scores_high_in_sample_and_nothing_out_of_fold(workspace: Workspace,
                                                                 memorizer_run) -> None:
    metrics = memorizer_run.data.metrics
    assert abs(metrics["cv_corr_mean"]) < 0.05, "out of fold it has seen none of the rows"
    assert abs(metrics["corr_mean"]) < 0.06, "validation rows are unseen too"
    # in sample: the logged (refit) model predicts the training rows it memorised
    model = mlflow.pyfunc.load_model(f"runs:/{memorizer_run.info.run_id}/model")
    train = pd.read_parquet(next((workspace.root / "data" / "synthetic").glob("*/train.parquet")))
    fitted = parse_era_ranges(memorizer_run.data.tags["seen.fit_eras"])
    train = train[train["era"].astype(int).isin(fitted)]
    features = model.metadata.get_input_schema().input_names()
    train = train.assign(prediction=np.asarray(model.predict(train[features])))
    in_sample = [numerai_corr(rows[["prediction"]], rows["target"]).iloc[0]
                 for _, rows in train.groupby("era")]
    assert np.mean(in_sample) > 0.8


def test_fold_layout_read_back_from_mlflow_has_no_leak(workspace: Workspace, memorizer_run) -> None:
    folds = fold_runs(workspace, "memorizer", memorizer_run.info.run_id)
    assert len(folds) == 4 and all(r.info.status == "FINISHED" for r in folds)
    embargo = int(memorizer_run.data.tags["cv_embargo"])
    assert embargo == 4 and memorizer_run.data.tags["cv"] == "era_kfold"
    tested = []
    for run in folds:
        roles = layout(run)
        for a, b in itertools.combinations(roles.values(), 2):
            assert not set(a) & set(b) and distance(a, b) > embargo
        assert len(roles["holdout"]) == 3
        # what the model really received: fit on the train eras, validated on the inner holdout
        assert np.array_equal(parse_era_ranges(run.data.tags["seen.fit_eras"]), roles["train"])
        assert np.array_equal(parse_era_ranges(run.data.tags["seen.validation_eras"]), roles["holdout"])
        tested.extend(roles["test"].tolist())
        assert "corr_mean" in run.data.metrics
        history = workspace.client().get_metric_history(run.info.run_id, "era_corr")
        assert sorted(m.step for m in history) == roles["test"].tolist(), "per-era scores of the fold"
    assert sorted(tested) == list(range(1, 41)) and len(set(tested)) == 40
    table = workspace.artifact_frame(memorizer_run, "cv/folds.csv")
    assert table["test_eras"].tolist() == [r.data.tags["fxml.fold.test_eras"] for r in folds]
    # the refit fitted on all training eras but its inner holdout and the embargo before it,
    # and its validation set was that holdout, never a validation era
    assert memorizer_run.data.tags["seen.fit_eras"] == "1-33"
    assert memorizer_run.data.tags["seen.validation_eras"] == "38-40"


# --- real models, as a user types the commands --------------------------------------------------


@pytest.fixture(scope="module")
def walk_forward_run(workspace: Workspace):  # type: ignore[no-untyped-def]
    result = workspace.train("cv=walk_forward", "cv.folds=3", "cv.min_train_eras=12", *FAST,
                           "tracking.experiment=walk-forward")
    assert result.returncode == 0, result.stderr
    assert "Cross-validation, out of fold over" in result.stdout and "Validation (holdout)" in result.stdout
    return job_run(workspace, "walk-forward")


def test_walk_forward_logs_cv_metrics_recomputed_with_numerai_tools(workspace: Workspace,
                                                                   walk_forward_run) -> None:
    run = walk_forward_run
    oof = workspace.artifact_frame(run, "predictions/out_of_fold.parquet")
    assert list(oof.columns[:5]) == ["id", "era", "fold", "prediction", "target"]
    assert "meta_model" not in oof, "the meta model covers validation only"
    release = next((workspace.root / "data" / "synthetic").glob("*/train.parquet")).parent
    features = json.loads((release / "features.json").read_text())["feature_sets"]["small"]
    train = pd.read_parquet(release / "train.parquet", columns=features).loc[oof["id"]]
    corrs, bmcs, fncs = [], [], []
    for _, rows in oof.groupby("era"):
        rows = rows.set_index("id")
        corrs.append(numerai_corr(rows[["prediction"]], rows["target"]).iloc[0])
        bmcs.append(correlation_contribution(rows[["prediction"]], rows["benchmark"], rows["target"]).iloc[0])
        fncs.append(feature_neutral_corr(rows[["prediction"]], train.loc[rows.index, features],
                                         rows["target"]).iloc[0])
    metrics = run.data.metrics
    assert metrics["cv_n_eras"] == len(corrs) == oof["era"].nunique()
    assert metrics["cv_corr_mean"] == pytest.approx(np.mean(corrs), abs=1e-6)
    assert metrics["cv_corr_sharpe"] == pytest.approx(np.mean(corrs) / np.std(corrs), abs=1e-5)
    assert metrics["cv_bmc_mean"] == pytest.approx(np.mean(bmcs), abs=1e-6)
    assert metrics["cv_fnc_mean"] == pytest.approx(np.mean(fncs), abs=1e-5)
    assert "cv_mmc_mean" not in metrics and "cv_payout_mean" not in metrics
    assert run.data.tags["cv_not_scored"] == "cv_mmc_mean, cv_payout_mean"
    # the benchmark column is the release's train benchmark, aligned by id
    bench = pd.read_parquet(next((workspace.root / "data" / "synthetic").glob(
        "*/train_benchmark_models.parquet")))
    bench = bench.set_index("id") if "id" in bench else bench
    np.testing.assert_allclose(oof["benchmark"], bench.loc[oof["id"], run.data.tags["bmc_benchmark"]],
                               rtol=1e-6)
    # the refit holdout keeps today's names
    assert {"corr_mean", "mmc_mean", "payout_mean"} <= set(metrics)


def test_walk_forward_folds_and_artifacts(workspace: Workspace, walk_forward_run) -> None:
    folds = fold_runs(workspace, "walk-forward", walk_forward_run.info.run_id)
    assert len(folds) == 3
    for run in folds:
        roles = layout(run)
        assert len(roles["holdout"]) == 0, "LightGBM without early stopping needs no inner holdout"
        assert roles["train"].max() < roles["test"].min() - 4 and len(roles["train"]) >= 12
    # the first test block starts right after 12 fitted eras and the embargo
    assert layout(folds[0])["train"].tolist() == list(range(1, 13))
    assert layout(folds[0])["test"][0] == 17
    paths = {a.path for folder in ("cv", "plots", "predictions")
             for a in workspace.client().list_artifacts(walk_forward_run.info.run_id, folder)}
    assert {"cv/folds.csv", "cv/per_era.csv", "plots/cv_cumulative_scores.png",
            "predictions/out_of_fold.parquet", "predictions/validation.parquet"} <= paths


def test_era_kfold_with_early_stopping_reads_only_the_inner_holdout(workspace: Workspace) -> None:
    result = workspace.train("cv=era_kfold", "cv.folds=3", "cv.refit=false", "model.early_stopping_rounds=5",
                           "model.valid_corr_every=5", "trainer.inner_holdout_eras=4", "scorer.fnc=false",
                           *FAST, "tracking.experiment=kfold")
    assert result.returncode == 0, result.stderr
    run = job_run(workspace, "kfold")
    assert "corr_mean" not in run.data.metrics, "no refit: validation is not scored"
    assert "cv_corr_sharpe" in run.data.metrics
    for fold in fold_runs(workspace, "kfold", run.info.run_id):
        roles = layout(fold)
        assert len(roles["holdout"]) == 4 and distance(roles["holdout"], roles["test"]) > 4
        # the per-round CORR the booster early-stopped on was logged in the fold's own run
        assert workspace.client().get_metric_history(fold.info.run_id, "valid_corr")


def test_cv_composes_with_every_nth_era_and_the_disk_store(workspace: Workspace) -> None:
    result = workspace.train("cv=era_kfold", "cv.folds=3", "cv.refit=false", "data.every_nth_era=2",
                           "memory=disk", "scorer.fnc=false", *FAST, "tracking.experiment=nth")
    assert result.returncode == 0, result.stderr
    run = job_run(workspace, "nth")
    tested = []
    for fold in fold_runs(workspace, "nth", run.info.run_id):
        roles = layout(fold)
        assert all(era % 2 == 1 for era in np.concatenate(list(roles.values())))
        assert distance(roles["train"], roles["test"]) > 4
        tested.extend(roles["test"].tolist())
    assert sorted(tested) == list(range(1, 41, 2))
    assert run.data.metrics["cv_n_eras"] == 20


def test_bad_cv_settings_are_one_line_errors(workspace: Workspace) -> None:
    assert_one_line_error(workspace.train("cv=era_kfold", "cv.folds=1"), "cv.folds must be >= 2")
    assert_one_line_error(workspace.train("cv=era_kfold", "cv.folds=60", *FAST), "cannot make 60 folds")
    assert_one_line_error(workspace.train("cv=walk_forward", "cv.embargo=soon"), "cv.embargo must be auto")


@pytest.mark.slow
def test_sweep_on_cv_sharpe_prunes_a_bad_trial_after_its_first_fold(workspace: Workspace) -> None:
    result = workspace.run(
        "-m", "hparams_search=lgbm", "cv=walk_forward", "cv.folds=3", "cv.min_train_eras=12",
        "cv.refit=false", "hydra.sweeper.objective=cv_corr_sharpe", "hydra.sweeper.study_name=cv-prune",
        "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.name=grid", "hydra.sweeper.params=null",
        "model.min_child_samples=choice(20,100000)", "hydra.sweeper.pruner.name=threshold",
        "hydra.sweeper.pruner.lower=-0.99", "hydra.sweeper.pruner.n_warmup_steps=0",
        "model.valid_corr_every=0", "scorer.fnc=false", *FAST, "tracking.experiment=cv-sweep")
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="cv-prune", storage=f"sqlite:///{workspace.root}/mlruns/optuna.db")
    by_state = {t.state: t for t in study.trials}
    pruned, complete = by_state[optuna.trial.TrialState.PRUNED], by_state[optuna.trial.TrialState.COMPLETE]
    # constant predictions have no CORR: the worst value, reported after fold 0, and the trial stops
    assert pruned.params == {"model.min_child_samples": 100000}
    assert pruned.intermediate_values == {0: -1.0}
    assert sorted(complete.intermediate_values) == [0, 1, 2]
    runs = workspace.runs("cv-sweep")
    jobs = {r.info.run_id: r for r in runs if r.data.tags.get("fxml.role") not in ("cv_fold", "sweep")}
    killed = [r for r in jobs.values() if r.info.status == "KILLED"]
    assert len(killed) == 1 and "pruned at step 0" in killed[0].data.tags["pruned"]
    assert len(fold_runs(workspace, "cv-sweep", killed[0].info.run_id)) == 1, "stopped after one fold"
    finished = next(r for r in jobs.values() if r.info.status == "FINISHED")
    assert complete.value == pytest.approx(finished.data.metrics["cv_corr_sharpe"])
    assert complete.intermediate_values[2] == pytest.approx(complete.value)
    rows = [line for line in result.stdout.splitlines() if line.startswith("│")]  # the trials' table
    assert sum("│ PRUNED " in row for row in rows) == 1 and sum("│ COMPLETE " in row for row in rows) == 1
