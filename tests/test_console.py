"""The console as users and scripts meet it: --help without the job's libraries, "did you mean",
config checked before a run is opened, one memory line, ``output=json`` for chaining commands
(a grid's: tests/test_sweeps.py), and what each run cost."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fxml.cli import USER_ERROR
from tests.conftest import Workspace, assert_one_line_error
from tests.helpers import fxml_command


def json_line(stdout: str) -> dict:
    """The one JSON object a command prints with output=json: its only line on stdout."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert len(lines) == 1, stdout
    return json.loads(lines[0])


def heavy_modules_loaded(workspace: Workspace, module: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m <module> <args>``, then which of the job's heavy libraries it had imported."""
    probe = (f"import runpy, sys; sys.argv = [{module!r}, *{list(args)!r}]\n"
             f"try:\n    runpy.run_module({module!r}, run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "heavy = ('mlflow', 'polars', 'lightgbm', 'torch')\n"
             "print('loaded:', sorted(m for m in heavy if m in sys.modules))")
    return subprocess.run([sys.executable, "-c", probe], cwd=workspace.root, env=workspace.env(),
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("module", ["fxml.run", "fxml.promote", "fxml.submit", "fxml.refit",
                                    "fxml.live_scores", "fxml.export_model", "fxml.report"])
def test_help_answers_without_loading_mlflow(workspace: Workspace, module: str) -> None:
    result = heavy_modules_loaded(workspace, module, "--help")
    assert result.returncode == 0, result.stderr
    assert "loaded: []" in result.stdout, result.stdout[-500:]
    if module == "fxml.run":
        assert "model: ensemble, lgbm, mlp, resnet, ridge, tabnet, target_ensemble, xgboost" in result.stdout
        assert "cv: era_kfold, none, walk_forward" in result.stdout
        assert "feature_set: small" in result.stdout  # the resolved config follows the groups


@pytest.mark.parametrize(("override", "line"), [
    ("model.learning_rate=-1", "fxml: error: model.learning_rate must be > 0 (got -1.0)"),
    ("model.n_estimator=5", "fxml: config error: Key 'n_estimator' not in 'LightGBMParams'"),
])
def test_a_config_error_answers_without_loading_mlflow(workspace: Workspace, override: str,
                                                      line: str) -> None:
    result = heavy_modules_loaded(workspace, "fxml.run", override)
    assert result.stderr.startswith(line), result.stderr
    assert "loaded: []" in result.stdout, result.stdout[-500:]


def test_help_shows_the_config_with_the_overrides_given(workspace: Workspace) -> None:
    result = workspace.train("--help", "model=ridge", small=False)
    assert result.returncode == 0, result.stderr
    assert "_target_: fxml.models.linear.RidgeModel" in result.stdout
    assert "Usage: python -m fxml.run" in result.stdout


@pytest.mark.parametrize(("override", "suggestion"), [
    ("model.n_estimator=5", "did you mean model.n_estimators?"),
    ("data.feature_st=small", "did you mean data.feature_set?"),
    ("mdel=ridge", "did you mean model?"),
    ("model=lgbmm", "did you mean model=lgbm?"),
])
def test_a_misspelt_key_or_option_gets_did_you_mean(workspace: Workspace, override: str,
                                                    suggestion: str) -> None:
    result = workspace.train(override)
    assert_one_line_error(result, suggestion)
    assert result.returncode == USER_ERROR


def test_a_bad_data_value_fails_before_a_run_is_opened(workspace: Workspace) -> None:
    before = {run.info.run_id for run in workspace.runs()}
    result = workspace.train("data.feature_set=huge", "tracking.run_name=huge")
    assert_one_line_error(result, "data.feature_set=huge is not in features.json")
    assert {run.info.run_id for run in workspace.runs()} == before, "no run, not even a FAILED one"


def test_output_json_is_the_last_line_and_chains_into_promote(workspace: Workspace) -> None:
    trained = workspace.train("model=ridge", "output=json", "tracking.run_name=json-run", "scorer.mpc=false")
    assert trained.returncode == 0, trained.stderr
    result = json_line(trained.stdout)
    run = workspace.client().get_run(result["run_id"])
    assert run.info.run_name == result["run_name"] == "json-run"
    assert result["metrics"]["corr_sharpe"] == pytest.approx(run.data.metrics["corr_sharpe"])
    assert "Validation (holdout)" in trained.stderr, "the tables go to stderr"
    promoted = fxml_command(workspace, "fxml.promote", f"run_id={result['run_id']}", "name=json-model",
                            "output=json", in_process=True)
    assert promoted.returncode == 0, promoted.stderr
    promotion = json_line(promoted.stdout)
    assert promotion["run_id"] == result["run_id"]
    assert promotion["uri"] == "models:/json-model@champion"
    version = workspace.client().get_model_version_by_alias("json-model", "champion")
    assert str(version.version) == promotion["version"] and version.run_id == result["run_id"]


def test_output_json_reports_an_error_as_json_too(workspace: Workspace) -> None:
    result = workspace.train("model=ridge", "output=json", "data.feature_set=huge")
    assert result.returncode == USER_ERROR
    assert json_line(result.stdout) == {
        "error": "error: data.feature_set=huge is not in features.json (available: agility, all, "
                 "charisma, constitution, dexterity, intelligence, medium, quantum, serenity, small, "
                 "strength, wisdom)", "exit_code": USER_ERROR}


def test_a_run_prints_one_memory_line_and_logs_what_it_cost(workspace: Workspace) -> None:
    result = workspace.train("model=ridge", "tracking.run_name=costs", "scorer.mpc=false")
    assert result.returncode == 0, result.stderr
    memory_lines = [line for line in result.logs.splitlines() if line.startswith("memory:")]
    assert memory_lines == ["memory: training rows in memory, every training era (memory=in_memory)"]
    run = next(run for run in workspace.runs() if run.info.run_name == "costs")
    metrics = run.data.metrics
    for stage in ("open_data", "fit", "validation", "importance", "log_model"):
        assert metrics[f"{stage}_seconds"] > 0, stage
        assert metrics[f"{stage}_cpu_seconds"] >= 0, stage
    assert metrics["fit_seconds"] >= metrics["train_seconds"]  # the fit stage includes loading
    assert 0.05 < metrics["peak_rss_gib"] < 24
    assert "peak_gpu_memory_gib" not in metrics  # no CUDA used on this machine
