"""Sweeps run as users run them, read back with Optuna's and MLflow's own clients."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import optuna
import optuna.distributions as dists
import pytest

from fxml.errors import FxmlError
from fxml.sweeps.objective import Objective
from fxml.sweeps.space import distribution, grid, parse_overrides
from tests.conftest import REPO, SMALL_DATA, Workspace, assert_one_line_error
from tests.helpers import assert_parent_names_the_best

FAST = ("model.n_estimators=30", "model.valid_corr_every=5", "tracking.log_model=false",
        "scorer.fnc=false")


def study(workspace: Workspace, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{workspace.root}/mlruns/optuna.db")


def children(workspace: Workspace, parent_id: str, experiment: str = "fxml") -> list:
    return [r for r in workspace.runs(experiment) if r.data.tags.get("mlflow.parentRunId") == parent_id]


def parent_of(workspace: Workspace, key_fragment: str, experiment: str = "fxml"):
    return next(r for r in workspace.runs(experiment)
                if key_fragment in r.data.tags.get("fxml.sweep_key", ""))


def test_grid_multirun_groups_every_job_under_one_parent(workspace: Workspace) -> None:
    """Every job under one parent; the jobs after the first print only their result line, and
    ``output=json`` ends the multirun with one object naming the parent and the jobs, best first."""
    result = workspace.run("-m", "model=lgbm,xgboost", "model.learning_rate=0.02,0.05", *FAST,
                           "tracking.experiment=grid", "hydra.sweep.dir=multirun/grid", "output=json")
    assert result.returncode == 0, result.stderr
    parent = parent_of(workspace, "multirun/grid", "grid")
    assert parent.info.status == "FINISHED"
    jobs = children(workspace, parent.info.run_id, "grid")
    combos = {(r.data.tags["model_family"], r.data.params["model.learning_rate"]) for r in jobs}
    assert combos == {(f, lr) for f in ("LightGBMModel", "XGBoostModel") for lr in ("0.02", "0.05")}
    assert all(r.info.status == "FINISHED" for r in jobs)

    [line] = result.stdout.splitlines()  # everything else went to stderr
    sweep = json.loads(line)
    assert sweep["parent_run_id"] == parent.info.run_id and sweep["objective"] == "corr_sharpe"
    by_name = {r.info.run_name: r for r in jobs}
    assert sorted(job["run_name"] for job in sweep["jobs"]) == sorted(by_name)
    for job in sweep["jobs"]:
        assert job["objective"] == pytest.approx(by_name[job["run_name"]].data.metrics["corr_sharpe"])
        assert job["status"] == "FINISHED"
    assert sweep["best"] == max(sweep["jobs"], key=lambda job: job["objective"])
    # job 0 says which data and memory plan the jobs use; the others do not say it again
    assert result.stderr.count("memory: training rows") == 1
    assert result.stderr.count("data: train ") == 1
    assert all(result.stderr.count(f"job {n}: ") == 1 for n in range(4))


def test_search_logs_trials_best_and_plots_then_resumes(workspace: Workspace) -> None:
    args = ("-m", "hparams_search=lgbm", "hydra.sweeper.study_name=resumable",
            "hydra.sweeper.sampler.n_startup_trials=2", "hydra.sweeper.pruner.name=none",
            "tracking.experiment=search", *FAST)
    first = workspace.run(*args, "hydra.sweeper.n_trials=2")
    assert first.returncode == 0, first.stderr
    assert "Run it: python -m fxml.run" in first.stdout and "hparams_search" not in \
        first.stdout.split("Run it:")[1].splitlines()[0]
    assert len(study(workspace, "resumable").trials) == 2

    again = workspace.run(*args, "hydra.sweeper.n_trials=4")
    assert again.returncode == 0, again.stderr
    assert "resuming study resumable with 2 trial(s)" in again.stdout + again.stderr
    found = study(workspace, "resumable")
    assert [t.state for t in found.trials] == [optuna.trial.TrialState.COMPLETE] * 4
    assert len({t.params["model.learning_rate"] for t in found.trials}) == 4

    parent = parent_of(workspace, "optuna:resumable@", "search")
    trial_runs = children(workspace, parent.info.run_id, "search")
    assert {r.info.run_id for r in trial_runs} == {t.user_attrs["mlflow_run_id"] for t in found.trials}
    best = found.best_trial
    assert_parent_names_the_best(parent, found)
    best_run = next(r for r in trial_runs if r.info.run_id == best.user_attrs["mlflow_run_id"])
    assert best_run.data.metrics["corr_sharpe"] == pytest.approx(best.value)
    plots = {a.path for a in workspace.client().list_artifacts(parent.info.run_id, "optuna")}
    assert {"optuna/optimization_history.png", "optuna/param_importances.png"} <= plots


def test_pruned_and_failed_trials_are_recorded_and_the_sweep_goes_on(workspace: Workspace) -> None:
    result = workspace.run(
        "-m", "hparams_search=lgbm", "hydra.sweeper.study_name=prune-fail", "hydra.sweeper.n_trials=4",
        "hydra.sweeper.sampler.name=grid", "hydra.sweeper.params=null",
        "model.colsample_bytree=choice(0.5,5.0)", "model.min_child_samples=choice(20,100000)",
        "hydra.sweeper.pruner.name=threshold", "hydra.sweeper.pruner.lower=-0.5",
        "hydra.sweeper.pruner.n_warmup_steps=0", "tracking.experiment=prune", *FAST)
    assert result.returncode == 0, result.stderr
    trials = study(workspace, "prune-fail").trials
    assert len(trials) == 4, "the grid has four points"
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert {t.params["model.colsample_bytree"] for t in failed} == {5.0} and len(failed) == 2
    assert all("model.colsample_bytree must be in (0, 1]" in t.user_attrs["error"] for t in failed)
    assert [t.params for t in trials if t.state == optuna.trial.TrialState.COMPLETE] == [
        {"model.colsample_bytree": 0.5, "model.min_child_samples": 20}]
    # a model that cannot split predicts a constant: NaN validation CORR, pruned at the first report
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert [t.params for t in pruned] == [{"model.colsample_bytree": 0.5, "model.min_child_samples": 100000}]
    assert pruned[0].last_step == 5 and pruned[0].intermediate_values == {5: -1.0}
    killed = [r for r in workspace.runs("prune") if r.info.status == "KILLED"]
    assert killed and all("pruned at step 5" in r.data.tags["pruned"] for r in killed)


def test_payout_style_objective(workspace: Workspace) -> None:
    result = workspace.run(
        "-m", "hparams_search=lgbm", "hydra.sweeper.study_name=payout", "hydra.sweeper.n_trials=1",
        "hydra.sweeper.objective='0.5*corr_mean + 2*mmc_mean'", "tracking.experiment=payout",
        *FAST)
    assert result.returncode == 0, result.stderr
    trial = study(workspace, "payout").trials[0]
    run = workspace.client().get_run(trial.user_attrs["mlflow_run_id"])
    expected = 0.5 * run.data.metrics["corr_mean"] + 2.0 * run.data.metrics["mmc_mean"]
    assert trial.value == pytest.approx(expected)


def test_misspelt_objective_fails_before_the_first_trial(workspace: Workspace) -> None:
    result = workspace.run("-m", "hparams_search=lgbm", "hydra.sweeper.study_name=typo",
                           "hydra.sweeper.objective=corr_sharp", *FAST)
    assert_one_line_error(result, "unknown metric 'corr_sharp'", "corr_sharpe")
    assert "typo" not in optuna.get_all_study_names(f"sqlite:///{workspace.root}/mlruns/optuna.db")


@pytest.mark.parametrize(
    ("text", "weights"),
    [
        ("corr_sharpe", {"corr_sharpe": 1.0}),
        ("0.5*corr_mean + 2*mmc_mean", {"corr_mean": 0.5, "mmc_mean": 2.0}),
        ("corr_mean - 0.25 * feature_exposure_max", {"corr_mean": 1.0, "feature_exposure_max": -0.25}),
    ],
)
def test_objective_grammar(text: str, weights: dict) -> None:
    objective = Objective.parse(text)
    assert dict(objective.weights) == weights
    metrics = {"corr_sharpe": 0.9, "corr_mean": 0.02, "mmc_mean": 0.01, "feature_exposure_max": 0.2}
    assert objective.value(metrics) == pytest.approx(sum(w * metrics[k] for k, w in weights.items()))


@pytest.mark.parametrize("text", ["corr_sharp", "0.5*corr_mean 2*mmc_mean", "corr_mean +", ""])
def test_objective_grammar_rejects(text: str) -> None:
    with pytest.raises(FxmlError, match="hydra.sweeper.objective"):
        Objective.parse(text)


def test_search_space_from_hydra_override_grammar() -> None:
    overrides = parse_overrides(["a=choice(x,y)", "b=range(8,65,8)", "c=tag(log, interval(0.001, 0.1))",
                                 "d=interval(0.1, 0.9)", "e=tag(int, interval(1, 5))"])
    space = {o.get_key_element(): distribution(o) for o in overrides}
    assert space["a"] == dists.CategoricalDistribution(["x", "y"])
    assert space["b"] == dists.IntDistribution(8, 64, step=8)
    assert space["c"] == dists.FloatDistribution(0.001, 0.1, log=True)
    assert space["d"] == dists.FloatDistribution(0.1, 0.9)
    assert space["e"] == dists.IntDistribution(1, 5)
    assert grid({k: space[k] for k in ("a", "b")}) == {"a": ["x", "y"], "b": [8, 16, 24, 32, 40, 48, 56, 64]}
    with pytest.raises(FxmlError, match="grid sampler needs choice"):
        grid({"d": space["d"]})


@pytest.mark.slow
def test_interrupted_sweep_resumes_with_the_same_command(workspace: Workspace) -> None:
    command = [sys.executable, "-m", "fxml.run", "-m", "hparams_search=lgbm",
               "hydra.sweeper.study_name=interrupted", "hydra.sweeper.n_trials=3",
               "hydra.sweeper.pruner.name=none", "tracking.experiment=interrupted",
               # trials of some seconds each, so that one is surely caught mid-run
               "model.n_estimators=3000", "model.valid_corr_every=0", "tracking.log_model=false",
               "scorer.fnc=false", *SMALL_DATA]
    # a shell that starts jobs in the background (CI may) makes them ignore SIGINT; a user's
    # terminal does not, so give the sweep the default handling a terminal would
    first = subprocess.Popen(command, cwd=workspace.root, env=workspace.env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # interrupt once the second trial's job is training
        time.sleep(0.2)
        if any(r.info.run_name.endswith("-trial1") and r.info.status == "RUNNING"
               for r in workspace.runs("interrupted")):
            time.sleep(0.5)
            break
    assert first.poll() is None, "the sweep ended before it could be interrupted"
    first.send_signal(signal.SIGINT)
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1].startswith("fxml: interrupted")
    trials = study(workspace, "interrupted").trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL]
    assert trials[1].user_attrs["error"] == "interrupted"
    killed = workspace.client().get_run(
        next(r.info.run_id for r in workspace.runs("interrupted") if r.info.run_name.endswith("-trial1")))
    assert killed.info.status == "KILLED"
    [parent] = [r for r in workspace.runs("interrupted") if r.data.tags.get("fxml.role") == "sweep"]
    assert parent.info.status == "KILLED" and parent.data.tags["stopped"] == "interrupted"

    again = subprocess.run(command, cwd=workspace.root, env=workspace.env(), capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    states = [t.state for t in study(workspace, "interrupted").trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL,
                      optuna.trial.TrialState.COMPLETE]
    parents = [r for r in workspace.runs("interrupted") if r.data.tags.get("fxml.role") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"


def test_joblib_launcher_runs_trials_in_parallel_processes(workspace: Workspace) -> None:
    result = workspace.run("-m", "hparams_search=lgbm", "hydra.sweeper.study_name=joblib",
                           "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2", "hydra/launcher=joblib",
                           "hydra.launcher.n_jobs=2", "hydra.sweeper.pruner.name=none",
                           "tracking.experiment=joblib", *FAST)
    assert result.returncode == 0, result.stderr
    trials = study(workspace, "joblib").trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    parent = parent_of(workspace, "optuna:joblib@", "joblib")
    assert len(children(workspace, parent.info.run_id, "joblib")) == 2


def test_mlp_search_reports_every_epoch(workspace: Workspace) -> None:
    result = workspace.run("-m", "hparams_search=mlp", "hydra.sweeper.study_name=mlp",
                           "hydra.sweeper.n_trials=2", "hydra.sweeper.pruner.name=none",
                           "trainer.max_epochs=3", "trainer.patience=null", "trainer.n_jobs=1",
                           "tracking.log_model=false", "tracking.experiment=mlp-search")
    assert result.returncode == 0, result.stderr
    trials = study(workspace, "mlp").trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert all(sorted(t.intermediate_values) == [1, 2, 3] for t in trials)
    assert all(isinstance(t.params["model.learning_rate"], float) for t in trials)


# --- a job handed only its config ---------------------------------------------------------------

ISOLATED = "hydra.launcher._target_=hydra_plugins.fxml_isolated_launcher.IsolatedLauncher"


def run_isolated(workspace: Workspace, *args: str):  # type: ignore[no-untyped-def]
    """A multirun whose jobs each run in a new process in another folder, given only their config
    (tests/plugins: no FXML_ or MLFLOW_ variable reaches them), as on Ray or another machine. The
    sweep finds its store in $MLFLOW_TRACKING_URI; the jobs never see it."""
    elsewhere = workspace.root / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    return workspace.run("-m", ISOLATED, *args, *FAST, MLFLOW_TRACKING_URI=workspace.uri,
                         PYTHONPATH=f"{REPO}:{REPO / 'tests' / 'plugins'}",
                         FXML_TEST_ELSEWHERE=str(elsewhere))


def test_a_search_job_handed_only_its_config_lands_under_its_parent_trial_and_study(
        workspace: Workspace) -> None:
    (workspace.root / "mlruns").mkdir(exist_ok=True)
    storage = f"sqlite:///{workspace.root}/mlruns/isolated.db"
    result = run_isolated(workspace, "hparams_search=lgbm", f"hydra.sweeper.storage={storage}",
                          "hydra.sweeper.study_name=isolated", "hydra.sweeper.n_trials=2",
                          "hydra.sweeper.objective=corr_mean", "tracking.experiment=isolated",
                          "hydra.sweep.dir=multirun/isolated")
    assert result.returncode == 0, result.stderr
    found = optuna.load_study(study_name="isolated", storage=storage)
    assert [t.state for t in found.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    parent = parent_of(workspace, "optuna:isolated@", "isolated")
    runs = {r.info.run_id: r for r in children(workspace, parent.info.run_id, "isolated")}
    for trial in found.trials:
        # the job reattached to its own trial in the study: it wrote its run id there
        run = runs[trial.user_attrs["mlflow_run_id"]]
        assert run.data.tags["fxml.trial"] == str(trial.number)
        assert run.info.run_name.endswith(f"-trial{trial.number}")
        assert run.data.metrics["corr_mean"] == pytest.approx(trial.value)
        assert run.data.params["sweep.objective"] == "corr_mean"
        assert run.data.params["sweep.study_name"] == "isolated"
    # the jobs ran elsewhere (their Hydra folders are there), not in the sweep's folder
    assert sorted(p.parent.name for p in (workspace.root / "elsewhere" / "multirun" / "isolated")
                  .glob("*/.hydra")) == ["0", "1"]


def test_a_grid_job_handed_only_its_config_lands_under_its_parent(workspace: Workspace) -> None:
    result = run_isolated(workspace, "model.learning_rate=0.02,0.05", "tracking.experiment=isolated-grid",
                          "hydra.sweep.dir=multirun/isolated-grid")
    assert result.returncode == 0, result.stderr
    parent = parent_of(workspace, "multirun/isolated-grid", "isolated-grid")
    jobs = children(workspace, parent.info.run_id, "isolated-grid")
    assert sorted(r.data.params["model.learning_rate"] for r in jobs) == ["0.02", "0.05"]
    assert {r.data.params["sweep.objective"] for r in jobs} == {"None"}, "a grid has no objective"


def test_a_job_whose_sweep_ended_its_trial_stops_killed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A stopped sweep fails its trials while a cluster's jobs may still train (SLURM lets a
    cancelled job run on until it is killed): the job's next report stops it, its run KILLED."""
    import mlflow
    from omegaconf import OmegaConf

    from fxml.errors import RunStopped
    from fxml.sweeps.pruning import report_to_trial
    from fxml.tracking.mlflow_run import tracked_run

    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="ended", storage=storage, direction="maximize")
    trial = study.ask()
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sweep = OmegaConf.create({"storage": storage, "study_name": "ended", "trial_number": trial.number,
                              "storage_retry_seconds": 1.0, "prune_on": "valid_corr"})
    with pytest.raises(RunStopped, match="its sweep ended trial 0"), \
            tracked_run(uri, "ended", "job", {}) as run:
        report = report_to_trial(sweep)
        report(10, 100, {"valid_corr": 0.02})  # the trial is running: reported
        study.tell(trial, state=optuna.trial.TrialState.FAIL)  # the sweep was stopped
        report(20, 100, {"valid_corr": 0.03})
    ended = mlflow.MlflowClient(uri).get_run(run.info.run_id)
    assert ended.info.status == "KILLED" and "its sweep ended trial 0" in ended.data.tags["stopped"]
    assert study.trials[0].intermediate_values == {10: 0.02}
