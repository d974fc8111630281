"""What a user sees: one comparison table per multirun, readable run names that MLflow shows too,
the importance printout and its CSV, the payout label with the configured weights."""

from __future__ import annotations

import io
import re
import subprocess

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from fxml.console import importance_table, payout_label
from fxml.scoring.importance import COLUMNS
from fxml.sweeps.parent import distinct_overrides
from tests.conftest import Workspace
from tests.helpers import table_rows

NAME = re.compile(r"^ridge-small-target-([0-9a-f]{4})$")


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A store of this module's own: the tables list every child of a parent run."""
    return Workspace(tmp_path_factory.mktemp("user-output"))


def by_name(ws: Workspace, experiment: str) -> dict:
    return {run.info.run_name: run for run in ws.runs(experiment)}


@pytest.fixture(scope="module")
def grid(ws: Workspace) -> subprocess.CompletedProcess:
    # the third job fails before its MLflow run starts (a negative penalty)
    return ws.run("-m", "model=ridge", "model.alpha=1,100,-5", "tracking.experiment=grid",
                  "tracking.log_model=false", "scorer.mpc=false")


@pytest.mark.slow
def test_a_grid_multirun_ends_with_one_table_of_its_jobs(ws: Workspace, grid) -> None:
    assert grid.returncode == 2, grid.stderr[-3000:]  # one job failed, with a user error
    assert grid.stdout.count("┃ job ┃") == 1, "exactly one comparison table"
    assert "Validation (holdout)" not in grid.stdout, "no per-job summary table in a multirun"
    header, rows = table_rows(grid.stdout, "Multirun ")
    assert header[:2] == ["job", "corr_sharpe"], header
    assert header[-3:] == ["status", "run", "overrides"]
    # best first by the objective (on the main target), the job that failed last
    assert sorted(row[0] for row in rows[:2]) == ["0", "1"] and rows[2][0] == "2"
    assert float(rows[0][1]) >= float(rows[1][1])
    runs = by_name(ws, "grid")
    assert sorted(row[-1] for row in rows[:2]) == ["model.alpha=1", "model.alpha=100"]
    for row in rows[:2]:
        run = runs[row[-2]]  # the printed name is the MLflow run's name
        assert NAME.match(row[-2]) and run.info.run_id.startswith(NAME.match(row[-2])[1])
        assert row[-3] == "FINISHED"
        assert float(row[-1].removeprefix("model.alpha=")) == float(run.data.params["model.alpha"])
        for column, cell in zip(header[1:-3], row[1:-3], strict=True):
            assert cell == f"{run.data.metrics[column]:.4f}", column
        assert f"job {row[0]}: {row[-2]}: corr_mean {run.data.metrics['corr_mean']:.4f}" in grid.stdout
    assert rows[2][-3] == "FAILED" and "model.alpha must be >= 0" in rows[2][-2]
    assert rows[2][-1] == "model.alpha=-5" and rows[2][1] == ""


@pytest.mark.slow
def test_jobs_in_joblib_workers_reach_the_table_failed_ones_too(ws: Workspace) -> None:
    result = ws.run("-m", "model=ridge", "data.target=target,target_nope", "hydra/launcher=joblib",
                    "hydra.launcher.n_jobs=2", "tracking.experiment=joblib", "tracking.log_model=false",
                    "scorer.mpc=false")
    assert result.returncode == 2, result.stderr[-3000:]  # a job failed, with a user error
    assert result.stdout.count("┃ job ┃") == 1 and "Validation (holdout)" not in result.stdout
    header, lines = table_rows(result.stdout, "Multirun ")
    rows = [row for row in lines if row[0]]  # a long cell continues on the lines below its row
    runs = by_name(ws, "joblib")
    assert [(row[0], row[-3], row[-1]) for row in rows] == [
        ("0", "FINISHED", "data.target=target"), ("1", "FAILED", "data.target=target_nope")]
    assert rows[0][1] == f"{runs[rows[0][-2]].data.metrics['corr_sharpe']:.4f}"
    # the worker's job failed before its MLflow run started: its row says why, and no run exists
    failed = " ".join(line[-2] for line in lines[lines.index(rows[1]):])
    assert failed.startswith("(no run: data.target=target_nope is not a target"), failed
    assert [name for name in runs if not name.startswith("sweep ")] == [rows[0][-2]]


@pytest.mark.slow
def test_a_search_ends_with_one_table_of_its_trials_and_names_trials_and_folds(ws: Workspace) -> None:
    result = ws.run("-m", "hparams_search=ridge", "hydra.sweeper.n_trials=2",
                    "hydra.sweeper.study_name=ux-table", "hydra.sweeper.sampler.seed=3",
                    "tracking.experiment=search", "tracking.log_model=false", "scorer.mpc=false",
                    "cv=walk_forward", "cv.folds=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("┃ trial ┃") == 1 and "Validation (holdout)" not in result.stdout
    header, rows = table_rows(result.stdout, "Study ux-table: 2 trial(s), maximize corr_sharpe")
    assert header[:2] == ["trial", "corr_sharpe"] and "cv_corr_sharpe" in header
    assert [row[0] for row in rows] == ["0", "1"]
    runs = by_name(ws, "search")
    for row in rows:
        name = row[-2]
        assert re.fullmatch(rf"ridge-small-target-[0-9a-f]{{4}}-trial{row[0]}", name), name
        assert row[-3] == "COMPLETE" and row[-1].startswith("model.alpha=")
        run = runs[name]
        assert row[1] == f"{run.data.metrics['corr_sharpe']:.4f}"
        folds = sorted(r.info.run_name for r in runs.values()
                       if r.data.tags.get("mlflow.parentRunId") == run.info.run_id)
        assert folds == [f"{name}-fold1", f"{name}-fold2"]


def test_a_single_run_prints_its_name_importance_and_payout_weights(ws: Workspace) -> None:
    result = ws.run("model=ridge", "scorer.importance=features", "scorer.payout_mmc_weight=1.5",
                    "scorer.payout_clip=0.04", "tracking.experiment=single", "tracking.log_model=false",
                    "scorer.mpc=false")
    assert result.returncode == 0, result.stderr[-3000:]
    [run] = ws.runs("single")
    name = run.info.run_name
    assert NAME.match(name) and run.info.run_id.startswith(NAME.match(name)[1])
    assert f"MLflow run {name} ({run.info.run_id})" in result.stdout  # (tracking.run_name: test_run)
    assert "│ payout (configured: 0.5*CORR + 1.5*MMC, clip ±0.04) │" in result.stdout

    csv = ws.artifact_frame(run, "importance/permutation.csv")
    assert list(csv.columns) == list(COLUMNS), "no stray index column"
    header, rows = table_rows(result.stdout, "Permutation importance, ")
    assert header == ["#", "feature", "features", "CORR drop"]  # one shuffle: no std
    assert len(rows) == min(10, len(csv))
    assert [row[1] for row in rows] == csv["name"].head(10).tolist()
    assert all(row[1].startswith("feature_") for row in rows)
    drops = [float(row[3]) for row in rows]
    assert drops == sorted(drops, reverse=True) and drops[0] > 0
    assert f"All {len(csv)} rows: " in result.stdout
    assert f"{run.info.run_id}/artifacts/importance/permutation.csv" in result.stdout

    # levels (feature exposure, similarity to the meta model) have no sharpe nor drawdown
    metrics = run.data.metrics
    assert np.isfinite(metrics["feature_exposure_std"]) and np.isfinite(metrics["corr_max_drawdown"])
    assert not {"feature_exposure_sharpe", "feature_exposure_max_drawdown",
                "meta_model_rank_corr_sharpe", "exposure_dissimilarity_max_drawdown"} & set(metrics)


def test_payout_label_and_distinct_overrides() -> None:
    assert payout_label(0.5, 2.0, 0.05) == "payout (configured: 0.5*CORR + 2*MMC, clip ±0.05)"
    assert distinct_overrides(["model=ridge a=1 b=x", "model=ridge a=2 b=x"]) == ["a=1", "a=2"]


def test_the_importance_table_shows_the_top_ten_and_the_spread_of_several_shuffles() -> None:
    drops = np.linspace(0.02, -0.01, 12)
    frame = pd.DataFrame({"name": [f"feature_{i}" for i in range(12)], "kind": "feature", "n_features": 1,
                          "corr_drop": drops, "corr_drop_std": 0.001, "corr_shuffled": 0.03 - drops,
                          "corr_baseline": 0.03})
    console = Console(file=io.StringIO(), width=200)
    console.print(importance_table(frame, repeats=3))
    header, rows = table_rows(console.file.getvalue(), "Permutation importance, top 10 of 12 features")
    assert header == ["#", "feature", "features", "CORR drop", "std (3 shuffles)"]
    assert [row[1] for row in rows] == [f"feature_{i}" for i in range(10)]
    assert rows[0][3:] == ["0.0200", "0.0010"]
