"""Multiruns on a real Ray cluster (``hydra/launcher=ray``): a head started on this machine for the
module, jobs as Ray tasks in worker processes that start elsewhere than the command (the Ray
folder) and without its environment, a worker killed mid-trial, secrets that must not be written."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import optuna
import pytest
from hydra.core.utils import JobStatus
from mlflow.entities import ViewType

from tests.conftest import SMALL_DATA, Workspace, assert_one_line_error
from tests.helpers import assert_parent_names_the_best, process_of
from tests.test_sweep_lifecycle import only_study, parents, wait_for

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                reason='Ray is not installed (pip install "fxml[ray]")')

FAST = ("model.n_estimators=30", "model.valid_corr_every=5", "tracking.log_model=false",
        "trainer.inner_holdout_eras=4", "scorer.fnc=false")
COMPLETE, FAIL = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL
SENTINEL = "fxml-sentinel-Q7v2Lp9X"


@dataclass
class Cluster:
    address: str
    folder: Path  # Ray's temp dir, and the folder its workers start in


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def cluster(workspace: Workspace) -> Iterator[Cluster]:
    """A Ray head of two CPUs. Its workers get neither the project's folder nor the variables a
    command sets (no FXML_DATA_DIR): only what the launcher hands each job."""
    # short: Ray's socket paths live under it
    folder = Path(tempfile.mkdtemp(prefix="fxr", dir="/tmp"))
    ray = str(Path(sys.executable).with_name("ray"))
    env = {k: v for k, v in workspace.env().items() if k != "FXML_DATA_DIR"}
    # no token authentication, whatever ~/.ray holds (a token there would turn it on)
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    port = free_port()
    subprocess.run([ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                    "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
                    f"--temp-dir={folder}", "--object-store-memory=200000000"],
                   cwd=folder, env=env, check=True, capture_output=True, timeout=120)
    try:
        yield Cluster(f"127.0.0.1:{port}", folder)
    finally:
        # stops every Ray of this machine: the tests start no other
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "fxml.run", "-m", "hydra/launcher=ray", *args, *SMALL_DATA]


def search(*args: str) -> list[str]:
    return command("hparams_search=lgbm", "hydra.sweeper.pruner.name=none", *args)


def on_ray(workspace: Workspace, cluster: Cluster, **env: str) -> dict[str, str]:
    return workspace.env(RAY_ADDRESS=cluster.address, **env)


def run(workspace: Workspace, cluster: Cluster, args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=workspace.root, env=on_ray(workspace, cluster, **env),
                          capture_output=True, text=True, timeout=600)


def children(workspace: Workspace, experiment: str) -> list:
    return [r for r in workspace.runs(experiment) if r.data.tags.get("fxml.role") != "sweep"]


def all_runs(workspace: Workspace, experiment: str) -> list:
    client = workspace.client()
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], run_view_type=ViewType.ALL)


def assert_jobs_ran_on_ray(output: str, numbers: range) -> None:
    """Each job's summary line reached the command's console from its Ray worker."""
    for number in numbers:
        assert re.search(rf"\(fxml-job-{number} pid=\d+\) job {number}: \S+", output), output[-3000:]


def written_files(*roots: Path) -> Iterator[Path]:
    for root in roots:
        for folder, _, names in os.walk(root):
            for name in names:
                path = Path(folder, name)
                if path.is_file() and not path.is_symlink():
                    yield path


def test_a_grid_on_ray_forwards_variables_by_name_and_writes_no_secret(
        workspace: Workspace, cluster: Cluster) -> None:
    """A grid of two jobs under one parent. The experiment's name reaches the jobs only through the
    forwarded variable (the workers lack it); the secrets the command holds are written nowhere:
    not by Ray (its folder), Hydra, MLflow, nor on any output stream."""
    secrets = {"MLFLOW_TRACKING_PASSWORD": SENTINEL, "NUMERAI_SECRET_KEY": SENTINEL + "-numerai",
               "FXML_RAY_TEST_SECRET": SENTINEL + "-own"}
    result = run(workspace, cluster, command(
        "model=ridge,lgbm", "tracking.log_model=false", "scorer.fnc=false",
        f"tracking.uri=sqlite:///{workspace.root}/mlruns/mlflow.db",
        "tracking.experiment=${oc.env:FXML_RAY_TEST_EXPERIMENT}", "hydra.sweep.dir=multirun/ray-grid",
        "hydra.launcher.env=[FXML_RAY_TEST_EXPERIMENT,FXML_RAY_TEST_SECRET,MLFLOW_TRACKING_PASSWORD,"
        "NUMERAI_SECRET_KEY]"), FXML_RAY_TEST_EXPERIMENT="ray-grid", **secrets)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_jobs_ran_on_ray(result.stdout + result.stderr, range(2))

    [parent] = parents(workspace, "ray-grid")
    jobs = children(workspace, "ray-grid")
    assert sorted(r.info.run_name.split("-")[0] for r in jobs) == ["lgbm", "ridge"]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in jobs)
    assert [r.info.status for r in [parent, *jobs]] == ["FINISHED"] * 3

    output = result.stdout + result.stderr
    for name, secret in secrets.items():
        assert secret not in output, name
        leaks = [str(p) for p in written_files(workspace.root, cluster.folder)
                 if secret.encode() in p.read_bytes()]
        assert leaks == [], (name, leaks)


@pytest.mark.slow
def test_a_killed_worker_fails_its_trial_and_the_search_goes_on(
        workspace: Workspace, cluster: Cluster) -> None:
    """A search on Ray, two trials at once: the quick one finishes, the slow one's Ray worker is
    killed (SIGKILL) while it trains. The killed one FAILs with the reason, the batch's other keeps
    its value, and the search runs its third trial and ends as usual, all in the project's store
    and study under one parent."""
    storage = f"sqlite:///{workspace.root}/mlruns/ray-kill.db"
    # seed 2 draws 5, 1000000, 5 estimators for trials 0, 1, 2 of study ray-kill (checked below);
    # the study and the store relative, as users write them: the project's, not the worker's
    sweep = subprocess.Popen(
        search("hydra.sweeper.storage=sqlite:///mlruns/ray-kill.db", "hydra.sweeper.study_name=ray-kill",
               "hydra.sweep.dir=multirun/ray-kill",
               "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2", "hydra.sweeper.sampler.name=random",
               "hydra.sweeper.sampler.seed=2", "hydra.sweeper.params=null",
               "model.n_estimators=choice(5,1000000)", "model.learning_rate=0.0001",
               "model.valid_corr_every=0", "tracking.log_model=false", "scorer.fnc=false",
               "tracking.experiment=ray-kill"),
        cwd=workspace.root, env=on_ray(workspace, cluster), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: slow_trials_worker(workspace) is not None, sweep)
        pid = slow_trials_worker(workspace)
        assert pid is not None
        # the run names the process that trains it: the Ray worker running job 1
        assert Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::fxml-job-1")
        os.kill(pid, signal.SIGKILL)
        stdout, stderr = sweep.communicate(timeout=300)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 0, stderr[-3000:]

    trials = only_study(storage).trials
    assert [t.params["model.n_estimators"] for t in trials] == [5, 1000000, 5]
    assert [t.state for t in trials] == [COMPLETE, FAIL, COMPLETE]
    assert "its Ray worker died" in trials[1].user_attrs["error"]
    runs = {r.data.tags["fxml.trial"]: r for r in children(workspace, "ray-kill")}
    assert runs["0"].info.status == runs["2"].info.status == "FINISHED"
    assert runs["1"].info.status == "FAILED"
    assert "its Ray worker died" in runs["1"].data.tags["error"]
    assert trials[0].value == pytest.approx(runs["0"].data.metrics["corr_sharpe"])
    [parent] = parents(workspace, "ray-kill")
    assert parent.info.status == "FINISHED"
    assert_parent_names_the_best(parent, only_study(storage))
    assert parent.data.tags["best_trial"] in ("0", "2")
    assert "trial 1 failed" in stdout + stderr
    assert_jobs_ran_on_ray(stdout + stderr, range(0, 3, 2))
    for trial in trials:
        assert runs[str(trial.number)].data.tags["mlflow.parentRunId"] == parent.info.run_id
    # the jobs' Hydra folders are the project's; nothing was written where the workers started
    sweep_dir = workspace.root / "multirun" / "ray-kill"
    assert sorted(p.parent.name for p in sweep_dir.glob("*/.hydra")) == ["0", "1", "2"]
    assert not list(cluster.folder.glob("mlruns")) and not list(cluster.folder.glob("multirun"))


def slow_trials_worker(workspace: Workspace) -> int | None:
    """The pid training trial 1 once trial 0 has finished (its run's ``fxml.process`` tag)."""
    runs = {r.data.tags.get("fxml.trial"): r for r in children(workspace, "ray-kill")}
    if "0" not in runs or "1" not in runs or runs["0"].info.status != "FINISHED":
        return None
    slow = runs["1"]
    if slow.info.status != "RUNNING" or "fxml.process" not in slow.data.tags:
        return None
    return process_of(slow)


def test_a_stopped_grid_interrupts_its_ray_tasks(workspace: Workspace, cluster: Cluster) -> None:
    """SIGTERM while two jobs train on Ray: the tasks are interrupted (each job ends its run
    KILLED), the parent is KILLED, the command exits with its one line, and no worker is left
    running a job."""
    grid = subprocess.Popen(
        command("model.learning_rate=0.0001,0.0002", "model.n_estimators=1000000",
                "model.valid_corr_every=0", "tracking.log_model=false", "scorer.fnc=false",
                "tracking.experiment=ray-stop", "hydra.sweep.dir=multirun/ray-stop"),
        cwd=workspace.root, env=on_ray(workspace, cluster), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: [r.info.status for r in children(workspace, "ray-stop")] == ["RUNNING"] * 2,
                 grid)
        time.sleep(1)
        grid.send_signal(signal.SIGTERM)
        _, stderr = grid.communicate(timeout=120)
    finally:
        if grid.poll() is None:
            grid.kill()
    assert grid.returncode == 143, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith("fxml: interrupted by SIGTERM"), stderr[-3000:]
    assert [r.info.status for r in children(workspace, "ray-stop")] == ["KILLED"] * 2
    [parent] = parents(workspace, "ray-stop")
    assert parent.info.status == "KILLED" and parent.data.tags["stopped"] == "terminated"
    assert running_jobs() == []


def running_jobs() -> list[int]:
    """The processes running an fxml job as a Ray task (``ray::fxml-job-<n>``; idle: ``ray::IDLE``)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(b"ray::fxml-job-"):
                found.append(int(entry.name))
        except OSError:  # a process that ended meanwhile
            continue
    return found


def test_no_cluster_is_one_line(workspace: Workspace) -> None:
    """Without an address the command stops before its study or parent run exists; no Ray is
    started unasked."""
    env = {k: v for k, v in workspace.env().items() if k != "RAY_ADDRESS"}
    result = subprocess.run(search("hydra.sweeper.storage=sqlite:///mlruns/ray-none.db",
                                   "tracking.experiment=ray-none", *FAST),
                            cwd=workspace.root, env=env, capture_output=True, text=True, timeout=300)
    assert_one_line_error(result, "no Ray cluster: start one with `ray start --head` and set "
                                  "hydra.launcher.address or RAY_ADDRESS")
    assert not (workspace.root / "mlruns" / "ray-none.db").exists()
    assert workspace.runs("ray-none") == []


# --- the worker's side, in this process --------------------------------------------------------


def test_forwarded_variables_are_the_jobs_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray reuses its workers: a job sees the command's values (none: unset), the next job the
    worker's own again."""
    from hydra_plugins.fxml_ray_launcher._worker import forwarded

    monkeypatch.setenv("FXML_RAY_A", "the worker's")
    monkeypatch.delenv("FXML_RAY_B", raising=False)
    monkeypatch.setenv("FXML_RAY_C", "the worker's own")
    with forwarded({"FXML_RAY_A": "the command's", "FXML_RAY_B": SENTINEL, "FXML_RAY_C": None}):
        assert [os.environ.get(name) for name in ("FXML_RAY_A", "FXML_RAY_B", "FXML_RAY_C")] == \
            ["the command's", SENTINEL, None]
    assert [os.environ.get(name) for name in ("FXML_RAY_A", "FXML_RAY_B", "FXML_RAY_C")] == \
        ["the worker's", None, "the worker's own"]


def test_a_folder_missing_on_the_worker_is_the_jobs_one_line_failure(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from fxml.errors import FxmlError
    from fxml.sweeps.parent import job_error
    from hydra_plugins.fxml_ray_launcher._worker import run_on_worker

    job = OmegaConf.create({"a": 1, "hydra": {"overrides": {"task": ["a=1"]}, "job": {"name": "run"}}})
    missing = tmp_path / "not-on-this-node"
    before = Path.cwd()
    with mock.patch.dict(os.environ):  # the settings fxml's commands make stay the test's
        result = run_on_worker((None, None), job, str(missing), {})  # type: ignore[arg-type]
    assert Path.cwd() == before
    assert result.status == JobStatus.FAILED
    assert result.overrides == ["a=1"] and OmegaConf.to_container(result.cfg) == {"a": 1}
    assert result.hydra_cfg is not None and result.hydra_cfg.hydra.job.name == "run"
    error = job_error(result)
    assert isinstance(error, FxmlError)
    assert str(error).startswith(f"the folder the command ran in, {missing}, does not exist on the Ray node")
