"""A PostgreSQL server holding both the MLflow store and the Optuna study that goes away again and
again during a sweep, each time for less than the retries wait: every call of the jobs and of the
sweeper survives, and nothing is left RUNNING."""

from __future__ import annotations

import threading
import time

import optuna
import pytest

from fxml.tracking.stores import store_client
from tests.conftest import Workspace
from tests.helpers import assert_parent_names_the_best
from tests.postgres_server import PASSWORD, postgres  # noqa: F401
from tests.test_sweep_lifecycle import COMPLETE, search_command, start, wait_for

OUTAGE_SECONDS = 5  # tracking.retry_seconds and sweep.storage_retry_seconds wait longer


@pytest.mark.slow
def test_a_flapping_database_loses_no_run_and_no_trial(workspace: Workspace, postgres) -> None:  # noqa: F811
    postgres.create_database("flapping_mlflow")
    postgres.create_database("flapping_optuna")
    command = search_command(
        f"hydra.sweeper.storage={postgres.url('flapping_optuna', with_password=False)}",
        f"tracking.uri={postgres.url('flapping_mlflow', with_password=False)}",
        "hydra.sweeper.n_trials=2", "tracking.experiment=flapping", "model.n_estimators=300",
        "model.valid_corr_every=20", "tracking.log_model=false", "scorer.fnc=false")
    sweep = start(workspace, command, PGPASSWORD=PASSWORD)
    client = store_client(postgres.url("flapping_mlflow"))

    def runs() -> list:
        experiment = client.get_experiment_by_name("flapping")
        return client.search_runs([experiment.experiment_id]) if experiment else []

    wait_for(lambda: any(r.info.run_name.endswith("-trial0") for r in runs()), sweep)
    outages = 0

    def flap() -> None:
        nonlocal outages
        while sweep.poll() is None:
            postgres.restart_after(OUTAGE_SECONDS)
            outages += 1
            time.sleep(2)

    flapping = threading.Thread(target=flap)
    flapping.start()
    stdout, stderr = sweep.communicate(timeout=600)
    flapping.join()
    assert sweep.returncode == 0, stderr[-3000:]
    assert outages >= 2, "the database went away during the sweep"
    assert "does not answer" in stdout + stderr, "the outages were noticed and waited out"
    study = optuna.load_study(study_name=optuna.get_all_study_names(postgres.url("flapping_optuna"))[0],
                              storage=postgres.url("flapping_optuna"))
    assert [t.state for t in study.trials] == [COMPLETE] * 2, [t.user_attrs for t in study.trials]
    ended = {r.info.run_name: r.info.status for r in runs()}
    assert sorted(ended.values()) == ["FINISHED"] * 3, ended
    [parent] = [r for r in runs() if r.data.tags.get("fxml.role") == "sweep"]
    assert_parent_names_the_best(parent, study)
