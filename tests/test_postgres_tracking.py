"""PostgreSQL as the MLflow backend: concurrent creation, outages, a missing driver."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from fxml.tracking.stores import store_client
from tests.conftest import REPO, SMALL_DATA, Workspace, assert_one_line_error
from tests.helpers import ENDLESS, finish, start, wait_for_training
from tests.postgres_server import PASSWORD, postgres  # noqa: F401


def test_concurrent_runs_create_one_store_and_experiment(postgres, tmp_path: Path) -> None:  # noqa: F811
    """Three runs start together on an empty database and a new experiment: all succeed."""
    uri = postgres.create_database("concurrent")
    workspace = Workspace(tmp_path)
    command = [sys.executable, "-m", "fxml.run", f"tracking.uri={uri}", "tracking.experiment=race",
               "model.n_estimators=3", "tracking.log_model=false", *SMALL_DATA]
    processes = [subprocess.Popen([*command, f"tracking.run_name=racer-{n}"], cwd=tmp_path,
                                  env=workspace.env(), text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for n in range(3)]
    results = [process.communicate(timeout=300) for process in processes]
    for process, (_, stderr) in zip(processes, results, strict=True):
        assert process.returncode == 0, stderr
    client = store_client(uri)
    experiment = client.get_experiment_by_name("race")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(run.info.run_name for run in runs) == ["racer-0", "racer-1", "racer-2"]
    assert {run.info.status for run in runs} == {"FINISHED"}
    # the same release logged as each run's input by all three at once: one dataset, three links
    linked = [{(i.dataset.name, i.tags[0].value) for i in run.inputs.dataset_inputs} for run in runs]
    assert all(names == linked[0] and len(names) == 2 for names in linked), linked


def test_postgresql_without_its_driver_is_one_line(tmp_path: Path) -> None:
    """As if psycopg were not installed: the line names the extra and hides the password."""
    hidden = tmp_path / "hidden"
    (hidden / "psycopg").mkdir(parents=True)
    (hidden / "psycopg" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'psycopg'\", name='psycopg')\n")
    workspace = Workspace(tmp_path)
    result = workspace.run(f"tracking.uri=postgresql://fxml:{PASSWORD}@127.0.0.1:1/mlflow",
                           PYTHONPATH=f"{hidden}:{REPO}")
    assert_one_line_error(result, 'pip install "fxml[postgres]"', "postgresql://fxml:***@127.0.0.1:1/mlflow")
    assert PASSWORD not in result.stdout + result.stderr


def test_a_database_that_is_down_is_one_line(postgres, tmp_path: Path) -> None:  # noqa: F811
    uri = postgres.url("nothing_here").replace(f":{postgres.port}/", ":1/")
    started = time.monotonic()
    result = Workspace(tmp_path).run(f"tracking.uri={uri}", "tracking.retry_seconds=2")
    assert_one_line_error(result, "postgresql://fxml:***@127.0.0.1:1/nothing_here")
    assert PASSWORD not in result.stdout + result.stderr
    assert time.monotonic() - started < 60


# boosting rounds that outlast the 6 s outage (about 3 ms each here)
ROUNDS = 6000


@pytest.mark.slow
def test_a_short_database_restart_mid_run_is_survived(postgres, tmp_path: Path) -> None:  # noqa: F811
    uri = postgres.create_database("restarted")
    workspace = Workspace(tmp_path)
    # valid_corr_every: a GBDT logs per-round metrics only when it reads a validation set
    process = start(workspace, f"model.n_estimators={ROUNDS}", "model.learning_rate=0.001",
                    "model.valid_corr_every=1000", f"tracking.uri={uri}", "tracking.run_name=survivor",
                    "tracking.retry_seconds=60")
    run_id = wait_for_training(uri, "fxml", "survivor", process)
    postgres.restart_after(6)
    assert process.poll() is None, "the run was still training when the database came back"
    result = finish(process, timeout=300)
    assert result.returncode == 0, result.stderr
    run = store_client(uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert "corr_mean" in run.data.metrics, "what came after the restart was logged too"
    steps = store_client(uri).get_metric_history(run_id, "valid_l2")
    assert max(metric.step for metric in steps) == ROUNDS


@pytest.mark.slow
def test_a_database_gone_for_longer_than_the_retries_is_one_line(postgres, tmp_path: Path) -> None:  # noqa: F811
    uri = postgres.create_database("vanished")
    workspace = Workspace(tmp_path)
    process = start(workspace, *ENDLESS["lgbm"], f"tracking.uri={uri}", "tracking.run_name=orphan",
                    "tracking.retry_seconds=3")
    run_id = wait_for_training(uri, "fxml", "orphan", process)
    postgres.stop()
    try:
        result = finish(process, timeout=120)
    finally:
        postgres.start()
    assert_one_line_error(result, "MLflow tracking at postgresql://fxml:***@", "stopped answering", run_id)
    assert PASSWORD not in result.stdout + result.stderr


# --- refused credentials: one line at once, never retried --------------------------------------

WRONG = "wrong-Password-5150"
PATIENT = ("tracking.retry_seconds=120", "sweep.storage_retry_seconds=120")  # a retry would show


def refused(server, database: str) -> str:  # type: ignore[no-untyped-def]
    """A new database, and its URL with a password the server refuses."""
    server.create_database(database)
    return server.url(database).replace(PASSWORD, WRONG)


def assert_refused_at_once(result: subprocess.CompletedProcess, seconds: float, *fragments: str) -> None:
    assert_one_line_error(result, "refused access", "password authentication failed", *fragments)
    assert seconds < 30, f"took {seconds:.0f} s: the refusal was retried"
    for secret in (PASSWORD, WRONG):
        assert secret not in result.stdout + result.stderr


def timed_run(workspace: Workspace, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = workspace.run(*args, *PATIENT)
    return result, time.monotonic() - started


def test_a_refused_password_for_the_tracking_store_fails_at_once(postgres, tmp_path: Path) -> None:  # noqa: F811
    uri = refused(postgres, "refusing_tracking")
    result, seconds = timed_run(Workspace(tmp_path), f"tracking.uri={uri}")
    assert_refused_at_once(result, seconds, "MLflow tracking at postgresql://fxml:***@127.0.0.1:")
    client = store_client(postgres.url("refusing_tracking"))
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


def test_a_refused_password_for_the_optuna_storage_fails_at_once(postgres, tmp_path: Path) -> None:  # noqa: F811
    """In a search (the sweeper opens the study), and in a job whose config names a storage that
    refuses it: the job's MLflow run ends FAILED, not RUNNING."""
    storage = refused(postgres, "refusing_study")
    workspace = Workspace(tmp_path)
    search, seconds = timed_run(workspace, "-m", "hparams_search=lgbm", f"hydra.sweeper.storage={storage}",
                                "hydra.sweeper.n_trials=1", "tracking.experiment=refused-search")
    assert_one_line_error(search, "cannot open Optuna study lgbm-", "postgresql://fxml:***@127.0.0.1:",
                          "password authentication failed")
    assert seconds < 30 and WRONG not in search.stdout + search.stderr

    job, seconds = timed_run(workspace, f"sweep.storage={storage}", "sweep.study_name=lgbm-refused",
                             "sweep.trial_number=0", "tracking.experiment=refused-job",
                             "model.n_estimators=5", "tracking.log_model=false")
    assert_refused_at_once(job, seconds, "the Optuna storage at postgresql://fxml:***@127.0.0.1:",
                           "reach the trial")
    [run] = workspace.runs("refused-job")
    assert run.info.status == "FAILED" and "password authentication failed" in run.data.tags["error"]
    assert WRONG not in run.data.tags["error"] + str(run.data.params)
