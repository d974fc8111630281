"""One parent MLflow run per sweep; every job of the sweep is its child.

A Hydra callback opens the parent in the launching process and hands its id to the jobs through
``FXML_PARENT_RUN_ID``, which launchers pass on to their worker processes. A search that is
resumed (same Optuna study) reopens the parent it had before.
"""

from __future__ import annotations

import gc
import logging
import os
from typing import Any

import mlflow
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from fxml.tracking.mlflow_run import redact, tracking_uri, use_experiment

log = logging.getLogger(__name__)
PARENT_ENV = "FXML_PARENT_RUN_ID"
SWEEP_KEY_TAG = "fxml.sweep_key"


def sweep_identity(config: DictConfig) -> tuple[str, str]:
    """A key that names the sweep across resumptions, and a readable run name."""
    sweeper = config.hydra.sweeper
    if "study_name" in sweeper:
        storage = redact(str(sweeper.storage)) if sweeper.storage else "default"
        return f"optuna:{sweeper.study_name}@{storage}", f"study {sweeper.study_name}"
    return f"grid:{os.path.abspath(config.hydra.sweep.dir)}", f"sweep {config.hydra.sweep.dir}"


def open_parent_run(uri: str, experiment: str, key: str, name: str) -> str:
    experiment_id = use_experiment(uri, experiment)
    client = mlflow.MlflowClient(uri)

    def parents() -> list:
        return client.search_runs([experiment_id], filter_string=f"tags.`{SWEEP_KEY_TAG}` = '{key}'",
                                  order_by=["attributes.start_time ASC"])

    found = parents()
    if found:
        client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    mine = client.create_run(experiment_id, run_name=name, tags={SWEEP_KEY_TAG: key, "fxml.role": "sweep"})
    # workers started together may both have created one: all keep the oldest
    oldest = parents()[0].info.run_id
    if oldest != mine.info.run_id:
        client.delete_run(mine.info.run_id)
    return oldest


class MlflowSweepParent(Callback):
    """Hydra callback: open the sweep's parent run before the jobs, close it after them."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        uri = tracking_uri(config.tracking.uri)
        key, name = sweep_identity(config)
        self.uri = uri
        self.run_id = open_parent_run(uri, config.tracking.experiment, key, name)
        os.environ[PARENT_ENV] = self.run_id
        log.info("sweep: parent MLflow run %s (%s)", self.run_id, name)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        # jobs run one after another in the same process: free the last one's arrays now
        gc.collect()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        run_id = os.environ.pop(PARENT_ENV, None)
        if run_id:
            mlflow.MlflowClient(self.uri).set_terminated(run_id, status="FINISHED")
