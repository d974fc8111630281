"""Sweeps as operators run them: several workers, resumes, changed commands, signals, dead
workers, failing trials, bad storages and a real PostgreSQL that restarts mid-sweep."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from mlflow.entities import ViewType

from fxml.tracking.stores import store_client
from tests.conftest import SMALL_DATA, Workspace, assert_one_line_error
from tests.helpers import assert_parent_names_the_best, files_containing, process_of
from tests.postgres_server import PASSWORD, postgres  # noqa: F401
from tests.test_lifecycle import kill_group, start_mlflow_server

FAST = ("model.n_estimators=30", "model.valid_corr_every=5", "tracking.log_model=false",
        "trainer.inner_holdout_eras=4", "scorer.fnc=false")
# trials of some seconds, so a signal surely lands while one trains
SLOW_TRIALS = ("model.n_estimators=3000", "model.valid_corr_every=100", "tracking.log_model=false",
               "scorer.fnc=false")
COMPLETE, FAIL = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL
# trials of a second or two, enough to kill one's worker while it trains (its run's fxml.process)
KILLABLE_TRIALS = ("model.n_estimators=1200", *SLOW_TRIALS[1:])


def search_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "fxml.run", "-m", "hparams_search=lgbm", "hydra.sweeper.pruner.name=none",
            *args, *SMALL_DATA]


def start(workspace: Workspace, command: list[str], **env: str) -> subprocess.Popen:
    # a terminal's default signal handling, even when the tests run from a background shell
    return subprocess.Popen(command, cwd=workspace.root, env=workspace.env(**env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def run(workspace: Workspace, command: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=workspace.root, env=workspace.env(**env), capture_output=True,
                          text=True, timeout=600)


def local_storage(workspace: Workspace, name: str) -> tuple[str, str]:
    """A SQLite study database in the project, as the command names it and as the test reads it."""
    return f"sqlite:///mlruns/{name}.db", f"sqlite:///{workspace.root}/mlruns/{name}.db"


def studies(storage: str) -> dict[str, optuna.Study]:
    return {name: optuna.load_study(study_name=name, storage=storage)
            for name in optuna.get_all_study_names(storage)}


def only_study(storage: str) -> optuna.Study:
    found = studies(storage)
    assert len(found) == 1, sorted(found)
    return next(iter(found.values()))


def parents(workspace: Workspace, experiment: str) -> list:
    return [r for r in workspace.runs(experiment) if r.data.tags.get("fxml.role") == "sweep"]


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        if process.poll() is not None:
            raise AssertionError(f"the command ended early: {process.communicate()}")
        time.sleep(0.3)
    raise AssertionError("timed out waiting")


def training(workspace: Workspace, experiment: str, run_name: str) -> Callable[[], bool]:
    return lambda: any(r.info.run_name.endswith(f"-{run_name}") and r.info.status == "RUNNING"
                       for r in workspace.runs(experiment))


@pytest.mark.slow
def test_three_workers_and_a_resume_never_repeat_parameters(workspace: Workspace) -> None:
    # a fixed sampler seed, as the presets once had: every process used to replay one sequence
    given, storage = local_storage(workspace, "distinct")
    command = search_command(f"hydra.sweeper.storage={given}", "hydra.sweeper.sampler.seed=42",
                             "hydra.sweeper.sampler.n_startup_trials=3", "tracking.experiment=distinct",
                             *FAST)
    workers = [start(workspace, [*command, "hydra.sweeper.n_trials=6", f"hydra.sweep.dir=multirun/d{i}"])
               for i in range(3)]
    outputs = [w.communicate(timeout=600) for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0], outputs
    assert all(re.search(r"trial \d+ corr_sharpe", out) for out, _ in outputs), "each worker ran trials"
    resumed = run(workspace, [*command, "hydra.sweeper.n_trials=8", "hydra.sweep.dir=multirun/d3"])
    assert resumed.returncode == 0, resumed.stderr

    found = only_study(storage)
    assert found.study_name.startswith("lgbm-")
    trials = found.trials
    assert len(trials) == 8 and all(t.state == COMPLETE for t in trials)
    configurations = {tuple(sorted(t.params.items())) for t in trials}
    assert len(configurations) == 8, "every trial evaluated parameters no other trial had"
    [parent] = parents(workspace, "distinct")
    assert parent.info.status == "FINISHED"
    assert_parent_names_the_best(parent, found)
    # workers started together each opened a parent; the losers' are deleted, and none RUNNING
    client = workspace.client()
    every = client.search_runs([client.get_experiment_by_name("distinct").experiment_id],
                               run_view_type=ViewType.ALL)
    assert [r.info.run_id for r in every if r.info.status == "RUNNING"] == []
    assert f"Promote it: python -m fxml.promote sweep={found.study_name}" in resumed.stdout


@pytest.mark.slow
def test_a_changed_command_gets_its_own_study_and_a_named_one_is_checked(workspace: Workspace) -> None:
    given, storage = local_storage(workspace, "identity")
    command = search_command(f"hydra.sweeper.storage={given}", "tracking.experiment=identity", *FAST)
    assert run(workspace, [*command, "hydra.sweeper.n_trials=1"]).returncode == 0
    # the same experiment on another machine: its data in another folder, other cores
    elsewhere = workspace.root / "data-elsewhere"
    elsewhere.symlink_to(workspace.root / "data")
    again = run(workspace, [*command, "hydra.sweeper.n_trials=2", "trainer.n_jobs=2"],
                FXML_DATA_DIR=str(elsewhere))
    assert again.returncode == 0, again.stderr
    first = only_study(storage)
    assert len(first.trials) == 2, "the same command resumed its study"
    assert "data.directory" not in first.user_attrs["fxml.settings"]
    assert "resuming study" in again.stdout

    changed = run(workspace, [*command, "hydra.sweeper.n_trials=1", "data.every_nth_era=2"])
    assert changed.returncode == 0, changed.stderr
    found = studies(storage)
    assert len(found) == 2 and len(found[first.study_name].trials) == 2
    [other] = [s for name, s in found.items() if name != first.study_name]
    assert len(other.trials) == 1
    assert other.user_attrs["fxml.settings"]["data.every_nth_era"] == "2"

    refused = run(workspace, [*command, "hydra.sweeper.n_trials=3",
                              f"hydra.sweeper.study_name={first.study_name}",
                              "hydra.sweeper.objective='0.5*corr_mean + 2*mmc_mean'"])
    assert_one_line_error(refused, f"study {first.study_name} belongs to another experiment",
                          "sweeper.objective is 0.5*corr_mean + 2*mmc_mean here but corr_sharpe in the study")
    assert len(studies(storage)[first.study_name].trials) == 2
    # each study has its own parent run, and each parent's best is its own study's
    by_study = {p.data.tags["fxml.study"]: p for p in parents(workspace, "identity")}
    assert set(by_study) == set(found)
    for name, parent in by_study.items():
        assert_parent_names_the_best(parent, studies(storage)[name])


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code", "how"), [
    (signal.SIGTERM, 143, "terminated"),  # SIGHUP: tests/test_lifecycle.py, the same handler
])
def test_a_stop_signal_ends_trial_child_and_parent_killed(workspace: Workspace, signum, code, how) -> None:
    # SIGINT: tests/test_sweeps.py::test_interrupted_sweep_resumes_with_the_same_command
    line = f"fxml: interrupted by {signum.name}"
    experiment = f"signal-{signum.name}"
    given, storage = local_storage(workspace, experiment)
    sweep = start(workspace, search_command(f"hydra.sweeper.storage={given}", "hydra.sweeper.n_trials=3",
                                            f"tracking.experiment={experiment}", *SLOW_TRIALS))
    wait_for(training(workspace, experiment, "trial0"), sweep)
    time.sleep(0.5)
    sweep.send_signal(signum)
    _, stderr = sweep.communicate(timeout=120)
    assert sweep.returncode == code, stderr
    assert stderr.strip().splitlines()[-1].startswith(line), stderr
    assert "Traceback" not in stderr
    [trial] = only_study(storage).trials
    assert trial.state == FAIL and trial.user_attrs["error"] == how
    [parent] = parents(workspace, experiment)
    assert parent.info.status == "KILLED" and parent.data.tags["stopped"] == how
    [child] = [r for r in workspace.runs(experiment) if r.info.run_name.endswith("-trial0")]
    assert child.info.status == "KILLED"
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id


@pytest.mark.slow
def test_a_dead_workers_trial_fails_in_optuna_and_in_mlflow(workspace: Workspace) -> None:
    given, storage = local_storage(workspace, "dead")
    command = search_command(f"hydra.sweeper.storage={given}", "hydra.sweeper.n_trials=2",
                             "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=3",
                             "tracking.experiment=dead", *SLOW_TRIALS)
    worker = start(workspace, command)
    wait_for(lambda: training(workspace, "dead", "trial0")() and any(
        "mlflow_run_id" in t.user_attrs for t in only_study(storage).trials), worker)
    worker.kill()  # SIGKILL: nothing of the worker's own cleanup runs
    worker.communicate(timeout=60)
    [orphan] = [r for r in workspace.runs("dead") if r.info.run_name.endswith("-trial0")]
    assert orphan.info.status == "RUNNING"
    time.sleep(3.5)  # past the grace period

    survivor = run(workspace, command)
    assert survivor.returncode == 0, survivor.stderr
    trials = only_study(storage).trials
    assert [t.state for t in trials] == [FAIL, COMPLETE]
    dead = workspace.client().get_run(orphan.info.run_id)
    assert dead.info.status == "FAILED" and "no Optuna heartbeat" in dead.data.tags["error"]
    [parent] = parents(workspace, "dead")
    assert parent.info.status == "FINISHED" and parent.data.tags["best_trial"] == "1"


@pytest.mark.slow
def test_a_killed_joblib_worker_fails_its_trial_and_the_sweep_goes_on(workspace: Workspace) -> None:
    """SIGKILL (an OOM kill) of the joblib worker training a trial: that trial FAILs in Optuna
    and its run in MLflow, with the reason; the sweep goes on to n_trials and exits 0."""
    given, storage = local_storage(workspace, "joblib-kill")
    sweep = start(workspace, search_command(
        f"hydra.sweeper.storage={given}", "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2",
        "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.sampler.name=random",
        "hydra.sweeper.params=null", "model.learning_rate=interval(0.01,0.1)",
        "tracking.experiment=joblib-kill", *KILLABLE_TRIALS))
    training_runs = lambda: [r for r in workspace.runs("joblib-kill")  # noqa: E731
                             if r.info.status == "RUNNING" and "fxml.process" in r.data.tags]
    wait_for(lambda: bool(training_runs()), sweep)
    victim = training_runs()[0]
    os.kill(process_of(victim), signal.SIGKILL)
    _, stderr = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, stderr

    trials = {t.number: t for t in only_study(storage).trials}
    killed = trials[int(victim.data.tags["fxml.trial"])]
    assert killed.state == FAIL
    assert killed.user_attrs["error"].startswith("its job was lost: TerminatedWorkerError")
    runs = {r.info.run_id: r for r in workspace.runs("joblib-kill")}
    assert runs[victim.info.run_id].info.status == "FAILED"
    assert runs[victim.info.run_id].data.tags["error"] == killed.user_attrs["error"]
    assert not [r.info.run_name for r in runs.values() if r.info.status == "RUNNING"]
    # the batch after the lost one ran: the study reached n_trials with a completed trial
    assert sorted(trials) == [0, 1, 2] and trials[2].state == COMPLETE
    [parent] = parents(workspace, "joblib-kill")
    assert parent.info.status == "FINISHED"
    assert_parent_names_the_best(parent, only_study(storage))


def test_a_sweep_without_a_successful_trial_fails_with_one_line(workspace: Workspace) -> None:
    given, storage = local_storage(workspace, "all-fail")
    result = run(workspace, search_command(
        f"hydra.sweeper.storage={given}", "hydra.sweeper.n_trials=4", "hydra.sweeper.max_failures=2",
        "hydra.sweeper.params=null", "model.min_child_samples=choice(20,40,60,80)",
        "model.colsample_bytree=5.0", "tracking.experiment=all-fail", *FAST))
    assert_one_line_error(result, "no trial of study lgbm-", "succeeded (2 failed, 0 pruned)",
                          "model.colsample_bytree must be in (0, 1]")
    # max_failures stopped the search after the second failure, short of n_trials
    assert [(t.number, t.state) for t in only_study(storage).trials] == [(0, FAIL), (1, FAIL)]
    [parent] = parents(workspace, "all-fail")
    assert parent.info.status == "FAILED" and "no trial of study" in parent.data.tags["error"]


@pytest.mark.parametrize(("storage", "says"), [
    ("sqlite:////no/such/folder/optuna.db", "unable to open database file"),
    ("optuna.db", "Could not parse SQLAlchemy URL"),
    ("postgresql://someone:hunter2-secret@127.0.0.1:1/optuna", "Connection refused"),
])
def test_a_bad_storage_is_one_line(workspace: Workspace, storage: str, says: str) -> None:
    result = run(workspace, search_command(f"hydra.sweeper.storage={storage}", *FAST))
    assert_one_line_error(result, "cannot open Optuna study lgbm-", says)
    assert "hunter2-secret" not in result.stdout + result.stderr


# --- PostgreSQL -------------------------------------------------------------------------------


def written_text(root: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in root.rglob("*")
                     if p.is_file() and p.suffix in (".yaml", ".log", ".txt", ".json"))


@pytest.mark.slow
def test_workers_share_a_postgres_study(workspace: Workspace, postgres) -> None:  # noqa: F811
    """The scale-out recipe: workers of one study on PostgreSQL, tracking to one MLflow server."""
    storage = postgres.create_database("shared_workers")
    # one worker has the password in the URL, the other reads it from its environment
    from_env = storage.replace(PASSWORD, "${oc.env:FXML_TEST_PG_PASSWORD}")
    command = search_command("hydra.sweeper.n_trials=4", "hydra.sweeper.sampler.name=random",
                             "tracking.experiment=pg-shared", *FAST)
    server, uri = start_mlflow_server(workspace.root / "server")
    try:
        workers = [start(workspace, [*command, f"hydra.sweeper.storage='{url}'",
                                     f"hydra.sweep.dir=multirun/pg{i}"],
                         FXML_TEST_PG_PASSWORD=PASSWORD, MLFLOW_TRACKING_URI=uri)
                   for i, url in enumerate((storage, from_env))]
        outputs = [w.communicate(timeout=600) for w in workers]
        client = store_client(uri)
        runs = client.search_runs([client.get_experiment_by_name("pg-shared").experiment_id])
    finally:
        kill_group(server)
    assert [w.returncode for w in workers] == [0, 0], outputs
    found = only_study(storage)
    trials = found.trials
    assert len(trials) == 4 and all(t.state == COMPLETE for t in trials)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4
    [parent] = [r for r in runs if r.data.tags.get("fxml.role") == "sweep"]
    assert parent.info.status == "FINISHED"
    assert_parent_names_the_best(parent, found)
    jobs = [r for r in runs if r.data.tags.get("fxml.role") != "sweep"]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in jobs)
    # a job's number is its trial's, unique across the workers
    assert sorted(r.data.tags["fxml.job"] for r in jobs) == ["0", "1", "2", "3"]
    assert all(r.data.tags["fxml.job"] == r.data.tags["fxml.trial"] for r in jobs)
    assert PASSWORD not in "".join(out + err for out, err in outputs)
    assert PASSWORD not in (workspace.root / "multirun/pg0/multirun.yaml").read_text()
    # its jobs were handed the reference, resolved where they ran
    handed = [path.read_text() for path in (workspace.root / "multirun/pg1").glob("*/.hydra/overrides.yaml")]
    assert handed and all("sweep.storage='postgresql://fxml:${oc.env:FXML_TEST_PG_PASSWORD}@" in text
                          for text in handed)
    assert files_containing(workspace.root, PASSWORD) == []
    for run_ in runs:
        assert PASSWORD not in str(run_.data.params) + str(run_.data.tags)


@pytest.mark.slow
def test_a_postgres_restart_mid_sweep_loses_nothing(workspace: Workspace, postgres) -> None:  # noqa: F811
    postgres.create_database("restarted")
    # the password from libpq's environment, not the URL
    storage = postgres.url("restarted", with_password=False)
    command = search_command(f"hydra.sweeper.storage={storage}", "hydra.sweeper.n_trials=2",
                             "tracking.experiment=pg-restart", "model.n_estimators=2000",
                             "model.valid_corr_every=20", "tracking.log_model=false", "scorer.fnc=false")
    sweep = start(workspace, command, PGPASSWORD=PASSWORD)
    # the restart lands while trial 0 trains and reports to its trial
    wait_for(lambda: training(workspace, "pg-restart", "trial0")() and any(
        "mlflow_run_id" in t.user_attrs for t in only_study(postgres.url("restarted")).trials), sweep)
    postgres.restart_after(8)
    assert sweep.poll() is None, "the sweep was still running when the database came back"
    stdout, stderr = sweep.communicate(timeout=600)
    assert sweep.returncode == 0, stderr
    trials = optuna.load_study(study_name=optuna.get_all_study_names(postgres.url("restarted"))[0],
                               storage=postgres.url("restarted")).trials
    assert len(trials) == 2 and all(t.state == COMPLETE for t in trials), (
        [t.user_attrs for t in trials], stdout[-3000:])
    runs = [r for r in workspace.runs("pg-restart") if r.data.tags.get("fxml.role") != "sweep"]
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 2
    [parent] = parents(workspace, "pg-restart")
    assert parent.info.status == "FINISHED" and parent.data.tags["best_run_id"] in {
        t.user_attrs["mlflow_run_id"] for t in trials}


# --- grid multiruns -----------------------------------------------------------------------------


def grid_parent(workspace: Workspace, experiment: str):  # type: ignore[no-untyped-def]
    [parent] = parents(workspace, experiment)
    return parent


@pytest.mark.slow
def test_an_interrupted_grid_ends_its_parent_killed_and_a_failed_one_failed(workspace: Workspace) -> None:
    grid = [sys.executable, "-m", "fxml.run", "-m", "model.learning_rate=0.01,0.02", *SMALL_DATA]
    stopped = start(workspace, [*grid, "tracking.experiment=grid-stop", "hydra.sweep.dir=multirun/gs",
                                *SLOW_TRIALS[:1], "model.valid_corr_every=0", "tracking.log_model=false",
                                "scorer.fnc=false"])
    wait_for(lambda: any(r.info.status == "RUNNING" and r.data.tags.get("fxml.role") != "sweep"
                         for r in workspace.runs("grid-stop")), stopped)
    time.sleep(0.5)
    stopped.send_signal(signal.SIGINT)
    _, stderr = stopped.communicate(timeout=120)
    assert stopped.returncode == 130, stderr
    assert grid_parent(workspace, "grid-stop").info.status == "KILLED"
    assert [r.info.status for r in workspace.runs("grid-stop")
            if r.data.tags.get("fxml.role") != "sweep"] == ["KILLED"]

    failed = run(workspace, [*grid, "tracking.experiment=grid-fail", "hydra.sweep.dir=multirun/gf",
                             "model.colsample_bytree=5.0", *FAST])
    assert failed.returncode != 0
    parent = grid_parent(workspace, "grid-fail")
    assert parent.info.status == "FAILED" and parent.data.tags["error"] == "the multirun failed"


@pytest.mark.slow
def test_ctrl_c_during_a_deep_models_trial_ends_everything_killed(workspace: Workspace) -> None:
    # Lightning turns Ctrl-C into SystemExit(1); the sweep still knows it was interrupted
    given, storage = local_storage(workspace, "deep-stop")
    sweep = start(workspace, [sys.executable, "-m", "fxml.run", "-m", "hparams_search=mlp",
                              f"hydra.sweeper.storage={given}", "hydra.sweeper.n_trials=2",
                              "hydra.sweeper.pruner.name=none", "trainer.max_epochs=200",
                              "trainer.patience=null", "trainer.n_jobs=1", "tracking.log_model=false",
                              "tracking.experiment=deep-stop", *SMALL_DATA])
    wait_for(lambda: training(workspace, "deep-stop", "trial0")() and any(
        "mlflow_run_id" in t.user_attrs for t in only_study(storage).trials), sweep)
    time.sleep(2)
    sweep.send_signal(signal.SIGINT)
    _, stderr = sweep.communicate(timeout=120)
    assert sweep.returncode == 130, stderr
    [trial] = only_study(storage).trials
    assert trial.state == FAIL and trial.user_attrs["error"] == "interrupted"
    [parent] = parents(workspace, "deep-stop")
    assert parent.info.status == "KILLED"
    [child] = [r for r in workspace.runs("deep-stop") if r.info.run_name.endswith("-trial0")]
    assert child.info.status == "KILLED", child.data.tags.get("error")


@pytest.mark.slow
def test_ctrl_c_keeps_a_parallel_trial_that_had_finished(workspace: Workspace) -> None:
    """joblib runs two trials at once: one finishes, then Ctrl-C while the other trains. The
    finished one keeps its value (and is the best); the other FAILs, its run KILLED."""
    given, storage = local_storage(workspace, "parallel-stop")
    sweep = start(workspace, search_command(
        f"hydra.sweeper.storage={given}", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2",
        "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.sampler.name=grid",
        "hydra.sweeper.params=null", "model.n_estimators=choice(5,1000000)",
        "model.learning_rate=0.0001", "model.valid_corr_every=0", "tracking.log_model=false",
        "tracking.experiment=parallel-stop"))
    finished = lambda: any(r.info.status == "FINISHED" and r.data.tags.get("fxml.role") != "sweep"  # noqa: E731
                           for r in workspace.runs("parallel-stop"))
    wait_for(finished, sweep)
    sweep.send_signal(signal.SIGINT)
    _, stderr = sweep.communicate(timeout=120)
    assert sweep.returncode == 130, stderr
    runs = {r.data.tags.get("fxml.trial"): r for r in workspace.runs("parallel-stop")
            if r.data.tags.get("fxml.role") != "sweep"}
    trials = {t.number: t for t in only_study(storage).trials}
    done = next(number for number, t in trials.items() if t.params["model.n_estimators"] == 5)
    stopped = 1 - done
    assert trials[done].state == COMPLETE
    assert trials[done].value == pytest.approx(runs[str(done)].data.metrics["corr_sharpe"])
    assert trials[stopped].state == FAIL and trials[stopped].user_attrs["error"] == "interrupted"
    assert runs[str(stopped)].info.status == "KILLED"
    [parent] = parents(workspace, "parallel-stop")
    assert parent.info.status == "KILLED"
    assert parent.data.tags["best_run_id"] == runs[str(done)].info.run_id

