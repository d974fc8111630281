"""Sweeps on submitit (hydra/launcher=slurm_local: the slurm launcher's jobs as local processes,
submitted, awaited and cancelled through submitit as on a cluster): a job killed as SLURM or the
kernel's OOM killer would kill it, a driver stopped mid-sweep, a password written in the config."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.conftest import Workspace, assert_one_line_error
from tests.helpers import assert_parent_names_the_best, process_of
from tests.test_sweep_lifecycle import (
    COMPLETE,
    FAIL,
    KILLABLE_TRIALS,
    local_storage,
    only_study,
    parents,
    run,
    search_command,
    start,
    wait_for,
)

pytest.importorskip("submitit")
LOCAL_JOBS = ("hydra/launcher=slurm_local", "hydra.launcher.timeout_min=10")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_a_killed_job_fails_its_trial_and_the_sweep_goes_on(workspace: Workspace) -> None:
    given, storage = local_storage(workspace, "submitit-kill")
    sweep = start(workspace, search_command(
        f"hydra.sweeper.storage={given}", "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.sampler.name=random", "hydra.sweeper.params=null",
        "model.learning_rate=interval(0.01,0.1)", "tracking.experiment=submitit-kill",
        *LOCAL_JOBS, *KILLABLE_TRIALS))
    training = lambda: [r for r in workspace.runs("submitit-kill")  # noqa: E731
                        if r.info.status == "RUNNING" and "fxml.process" in r.data.tags]
    wait_for(lambda: bool(training()), sweep)
    victim = training()[0]
    os.kill(process_of(victim), signal.SIGKILL)
    stdout, stderr = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, stderr

    trials = {t.number: t for t in only_study(storage).trials}
    killed = trials[int(victim.data.tags["fxml.trial"])]
    assert killed.state == FAIL and "its job" in killed.user_attrs["error"]
    assert "was lost (state " in killed.user_attrs["error"]
    assert [t.state for n, t in sorted(trials.items()) if n != killed.number] == [COMPLETE, COMPLETE]
    runs = {r.info.run_id: r for r in workspace.runs("submitit-kill")}
    assert runs[victim.info.run_id].info.status == "FAILED"
    assert runs[victim.info.run_id].data.tags["error"] == killed.user_attrs["error"]
    [parent] = parents(workspace, "submitit-kill")
    assert parent.info.status == "FINISHED"
    assert_parent_names_the_best(parent, only_study(storage))
    # each finished job's one-line summary reached the driver's console
    for number, trial in trials.items():
        if trial.state == COMPLETE:
            assert f"job {number}: lgbm-small-target-" in stdout


@pytest.mark.slow
def test_stopping_the_driver_cancels_its_jobs(workspace: Workspace) -> None:
    sweep = start(workspace, search_command(
        "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2", "hydra.sweeper.sampler.name=grid",
        "hydra.sweeper.params=null", "model.n_estimators=choice(5,1000000)",
        "model.learning_rate=0.0001", "model.valid_corr_every=0", "tracking.log_model=false",
        "tracking.experiment=submitit-stop", *LOCAL_JOBS))
    jobs = lambda: [r for r in workspace.runs("submitit-stop")  # noqa: E731
                    if r.data.tags.get("fxml.role") != "sweep"]
    wait_for(lambda: any(r.info.status == "FINISHED" for r in jobs()) and len(jobs()) == 2, sweep)
    [slow] = [r for r in jobs() if r.info.status == "RUNNING"]
    sweep.send_signal(signal.SIGINT)
    stdout, stderr = sweep.communicate(timeout=120)
    assert sweep.returncode == 130, stderr
    assert "cancelled job" in stdout
    deadline = time.monotonic() + 30
    while alive(process_of(slow)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(process_of(slow)), "the cancelled job still runs"
    ended = {r.info.run_id: r.info.status for r in jobs()}
    assert ended[slow.info.run_id] == "KILLED"
    assert sorted(ended.values()) == ["FINISHED", "KILLED"]
    [parent] = parents(workspace, "submitit-stop")
    assert parent.info.status == "KILLED"


def test_a_password_written_in_the_config_is_refused(workspace: Workspace) -> None:
    result = run(workspace, search_command(
        "hydra.sweeper.storage=postgresql://fxml:Sentinel-Password-7@127.0.0.1:1/optuna",
        "tracking.experiment=submitit-secret", "hydra.sweeper.n_trials=1", *LOCAL_JOBS))
    assert_one_line_error(result, "a password is written into the config", "${oc.env:NAME}")
    assert "Sentinel-Password-7" not in result.stdout + result.stderr
