"""Promotion from a sweep, and promotion by metric within a sweep, a time window or a tag filter;
empty or unfinished run ids are refused. Real sweeps and runs in a scratch project."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import optuna
import pytest

from tests.conftest import Workspace, assert_one_line_error

pytestmark = pytest.mark.slow
EXPERIMENT = "weekly-sweep"


@dataclass
class SweptProject:
    ws: Workspace
    study: optuna.Study
    parent_id: str
    ridge_id: str
    between: str  # a moment after the sweep, before the ridge run

    def promote(self, *args: str, typed: bool = False):  # type: ignore[no-untyped-def]
        """``python -m fxml.promote args`` as typed, or its config and task in this process (the
        lines it prints are the same: test_promote_submit checks the command itself)."""
        if not typed:
            return self.ws.command("fxml.promote", *args)
        return subprocess.run([sys.executable, "-m", "fxml.promote", *args], cwd=self.ws.root,
                              env=self.ws.env(), capture_output=True, text=True, timeout=300)

    def champion_run(self, name: str) -> str:
        return self.ws.client().get_model_version_by_alias(name, "champion").run_id


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> SweptProject:
    ws = Workspace(tmp_path_factory.mktemp("swept"))
    sweep = ws.run("-m", "hparams_search=lgbm", "hydra.sweeper.n_trials=2", "hydra.sweeper.pruner.name=none",
                   "model.n_estimators=30", "model.valid_corr_every=0", "scorer.fnc=false",
                   f"tracking.experiment={EXPERIMENT}")
    assert sweep.returncode == 0, sweep.stderr
    storage = f"sqlite:///{ws.root}/mlruns/optuna.db"
    [name] = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    [parent] = [r for r in ws.runs(EXPERIMENT) if r.data.tags.get("fxml.role") == "sweep"]
    time.sleep(1.1)
    between = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    time.sleep(1.1)
    ridge = ws.train("model=ridge", "scorer.fnc=false", "tracking.run_name=ridge",
                     f"tracking.experiment={EXPERIMENT}")
    assert ridge.returncode == 0, ridge.stderr
    ridge_id = next(r.info.run_id for r in ws.runs(EXPERIMENT) if r.info.run_name == "ridge")
    return SweptProject(ws, study, parent.info.run_id, ridge_id, between)


def test_promote_a_sweeps_best_trial_by_study_name_or_parent_run(swept: SweptProject) -> None:
    best = swept.study.best_trial
    by_name = swept.promote(f"sweep={swept.study.study_name}", "name=from-sweep", "alias=champion",
                            typed=True)
    assert by_name.returncode == 0, by_name.stderr
    assert swept.champion_run("from-sweep") == best.user_attrs["mlflow_run_id"]
    assert (f"chose run {best.user_attrs['mlflow_run_id']}: best trial {best.number} of sweep "
            f"{swept.study.study_name} by corr_sharpe = {best.value:.6g}") in by_name.stdout

    by_parent = swept.promote(f"sweep={swept.parent_id}", "name=from-parent")
    assert by_parent.returncode == 0, by_parent.stderr
    assert swept.champion_run("from-parent") == best.user_attrs["mlflow_run_id"]
    version = swept.ws.client().get_model_version_by_alias("from-parent", "champion")
    assert version.tags["source_sweep_run_id"] == swept.parent_id


def test_an_empty_or_unfinished_run_is_refused_and_the_champion_stays(swept: SweptProject) -> None:
    first = swept.promote(f"run_id={swept.ridge_id}", "name=guarded")
    assert first.returncode == 0, first.stderr
    empty = swept.promote("run_id=", "name=guarded")
    assert_one_line_error(empty, "run_id= is empty")
    assert_one_line_error(swept.promote("sweep=", "name=guarded"), "sweep= is empty")

    client = swept.ws.client()
    killed = client.create_run(client.get_experiment_by_name(EXPERIMENT).experiment_id, run_name="killed")
    client.set_terminated(killed.info.run_id, status="KILLED")
    refused = swept.promote(f"run_id={killed.info.run_id}", "name=guarded")
    assert_one_line_error(refused, f"run {killed.info.run_id} is KILLED, not FINISHED")
    assert swept.champion_run("guarded") == swept.ridge_id
    assert_one_line_error(swept.promote("sweep=no-such-study", "name=guarded"), "sweep=no-such-study")


def test_promote_by_metric_within_a_sweep_a_time_window_or_a_tag_filter(swept: SweptProject) -> None:
    client = swept.ws.client()
    trial_runs = {t.user_attrs["mlflow_run_id"] for t in swept.study.trials}
    by_mean = max(trial_runs, key=lambda run_id: client.get_run(run_id).data.metrics["corr_mean"])
    within = swept.promote(f"sweep={swept.study.study_name}", "metric=corr_mean", "name=by-mean")
    assert within.returncode == 0, within.stderr
    assert swept.champion_run("by-mean") == by_mean
    assert f"of 2 finished run(s) with a model of sweep {swept.study.study_name}" in within.stdout

    recent = swept.promote(f"experiment={EXPERIMENT}", f"since={swept.between}", "name=recent")
    assert recent.returncode == 0, recent.stderr
    assert swept.champion_run("recent") == swept.ridge_id
    assert "of 1 finished run(s) with a model in experiment" in recent.stdout
    assert "started since" in recent.stdout

    older = swept.promote(f"experiment={EXPERIMENT}", f"until={swept.between}", "metric=corr_mean",
                          "name=older")
    assert older.returncode == 0, older.stderr
    assert swept.champion_run("older") == by_mean

    tagged = swept.promote(f"experiment={EXPERIMENT}", "filter=\"tags.model_family = 'RidgeModel'\"",
                           "name=tagged")
    assert tagged.returncode == 0, tagged.stderr
    assert swept.champion_run("tagged") == swept.ridge_id
    assert "matching tags.model_family = 'RidgeModel'" in tagged.stdout

    assert_one_line_error(swept.promote("since=last tuesday"), "since=last tuesday")
    assert_one_line_error(swept.promote(f"experiment={EXPERIMENT}", "since=1h", "until=2h"),
                          "no finished run with a model")
