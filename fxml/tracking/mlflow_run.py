"""One MLflow run per job: config, tags, metrics, per-era series, plots, predictions, model.

A run that fails is ended with status FAILED and an ``error`` tag; whatever it logged before the
failure stays. An interrupted one (SIGINT, SIGTERM) ends KILLED. A tracking server or database that
stops answering mid-run gives up after the bounded retries (see :mod:`fxml.tracking.stores`).
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import Metric
from omegaconf import DictConfig, OmegaConf

from fxml.errors import OUTPUT_CLOSED, FxmlError, RunPruned, output_closed
from fxml.interrupts import interrupting_signal
from fxml.secrets import redact  # noqa: F401  (also imported from here by the sweeper)
from fxml.tracking.stores import (
    check_driver,
    creation_lock,
    first_line,
    is_already_exists,
    is_unreachable,
    retrying,
    store_client,
)

log = logging.getLogger(__name__)
DEFAULT_STORE = Path("mlruns")
DEFAULT_URI = f"sqlite:///{DEFAULT_STORE}/mlflow.db"
MAX_PARAM_LENGTH = 6000
BATCH = 1000
CREATE_ATTEMPTS = 8
SHORT_ID = 4  # characters of the run id in a run's name
# a multirun job's number and its command-line overrides (its row in the multirun's table)
JOB_TAG = "fxml.job"
OVERRIDES_TAG = "fxml.overrides"
TRIAL_TAG = "fxml.trial"  # the Optuna trial number of a search's job


def tracking_uri(configured: str | None, setting: str = "tracking.uri") -> str:
    """The store to use; a database URL whose driver is missing is one line naming the extra."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    check_driver(uri, setting)
    return uri


def use_experiment(uri: str, experiment: str) -> str:
    """Point MLflow at ``uri`` and ``experiment``, creating either if needed; a local SQLite store
    keeps artifacts beside it. Safe when several processes do it at once on any backend."""
    mlflow.set_tracking_uri(uri)
    for attempt in range(CREATE_ATTEMPTS):
        try:
            client = store_client(uri)
            with creation_lock(uri):
                existing = client.get_experiment_by_name(experiment)
                if existing is not None:
                    return existing.experiment_id
                location = None
                if uri == DEFAULT_URI:
                    location = (DEFAULT_STORE / "artifacts").resolve().as_uri()
                return client.create_experiment(experiment, artifact_location=location)
        except FxmlError:
            raise
        except Exception as error:
            # another process created the tables or the experiment between our look and our write
            if is_already_exists(error) and attempt + 1 < CREATE_ATTEMPTS:
                time.sleep(0.2 + random.random() * 0.5)
                continue
            raise FxmlError(f"MLflow tracking at {redact(uri)} failed: "
                            f"{redact(first_line(error))}") from None
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class RunName:
    """How a run is named in MLflow and in the terminal: ``base`` (``lgbm-small-target``, or the
    user's ``tracking.run_name``), then the first characters of the run id when ``short_id``
    (tells apart runs of one configuration), then ``suffix`` (``-trial3`` in a search)."""

    base: str
    short_id: bool = True
    suffix: str = ""

    def of(self, run_id: str) -> str:
        return self.base + (f"-{run_id[:SHORT_ID]}" if self.short_id else "") + self.suffix


@contextmanager
def tracked_run(uri: str, experiment: str, name: RunName | str, tags: dict[str, str]) -> Iterator[Any]:
    """A run that ends FINISHED, FAILED (with an ``error`` tag) or KILLED (interrupted or
    pruned); inside a sweep it is a child of the sweep's parent run. A plain string names it
    exactly."""
    if isinstance(name, str):
        name = RunName(name, short_id=False)
    experiment_id = use_experiment(uri, experiment)
    parent = os.environ.get("FXML_PARENT_RUN_ID")
    if parent:
        tags = {**tags, "mlflow.parentRunId": parent}
    tags = {key: redact(str(value)) for key, value in tags.items()}
    run = mlflow.start_run(experiment_id=experiment_id, run_name=name.base + name.suffix, tags=tags)
    try:
        if name.short_id:
            # the short id is the run id's start, known once the run exists
            mlflow.set_tag("mlflow.runName", name.of(run.info.run_id))
        yield run
    except BaseException as error:
        if is_unreachable(error):
            _forget_active_run()
            raise FxmlError(f"MLflow tracking at {redact(uri)} stopped answering "
                            f"({redact(first_line(error))}); run {run.info.run_id} could not be "
                            "closed there and may show RUNNING") from None
        signum = interrupting_signal()
        stopped = isinstance(error, (KeyboardInterrupt, RunPruned)) or signum is not None
        # a library may have turned the signal into its own exit (Lightning: SystemExit(1))
        what = f"Interrupted: {signal.Signals(signum).name}" if signum is not None \
            else OUTPUT_CLOSED if output_closed(error) else first_line(error)
        try:
            mlflow.set_tag("pruned" if isinstance(error, RunPruned) else "error",
                           redact(what)[:5000])
            mlflow.end_run(status="KILLED" if stopped else "FAILED")
        except Exception as closing:
            if not is_unreachable(closing):
                raise
            _forget_active_run()
            raise FxmlError(f"MLflow tracking at {redact(uri)} stopped answering while run "
                            f"{run.info.run_id} was being closed after {redact(first_line(error))}") from None
        raise
    mlflow.end_run(status="FINISHED")


def _forget_active_run() -> None:
    """Drop the active run without asking the server (which is gone): MLflow would otherwise
    retry ending it at exit, once more for the full retry time."""
    from mlflow.tracking import fluent

    fluent._active_run_stack.get().clear()
    os.environ.pop("MLFLOW_RUN_ID", None)


def flatten(config: DictConfig) -> dict[str, str]:
    """Dotted keys of the resolved config, as MLflow params."""
    flat: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
            return
        text = redact(str(node))
        flat[prefix[:-1]] = text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 1] + "…"

    walk(OmegaConf.to_container(config, resolve=True), "")
    return flat


def log_config(config: DictConfig) -> None:
    mlflow.log_params(flatten(config))
    mlflow.log_text(redact(OmegaConf.to_yaml(config, resolve=True)), "config.yaml")


def log_metric_batch(metrics: list[Metric]) -> None:
    """Many metric values to the active run in few requests (MLflow takes 1000 per batch)."""
    client, run_id = store_client(), mlflow.active_run().info.run_id
    for start in range(0, len(metrics), BATCH):
        batch = metrics[start : start + BATCH]
        retrying(lambda batch=batch: client.log_batch(run_id, metrics=batch))


def log_fitted_params(model: Any) -> None:
    """Log what ``fit`` chose (``model.fitted_params()``, e.g. ensemble weights) to the active run."""
    params = model.fitted_params()
    if params:
        mlflow.log_params(params)


def log_series(per_era: pd.DataFrame, columns: tuple[str, ...]) -> None:
    """Per-era scores as metric series, the era number as the step."""
    log_metric_batch([
        Metric(key=f"era_{column}", value=float(value), timestamp=0, step=int(era))
        for column in columns if column in per_era
        for era, value in per_era[column].dropna().items()
    ])


class StepMetrics:
    """Buffers the metrics a model reports each boosting round or epoch, written in batches."""

    def __init__(self, flush_every: int = 200) -> None:
        self.pending: list[Metric] = []
        self.flush_every = flush_every

    def __call__(self, step: int, total: int, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        self.pending += [Metric(key=k, value=float(v), timestamp=now, step=step)
                         for k, v in metrics.items()]
        if len(self.pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        log_metric_batch(self.pending)
        self.pending = []


def log_frame(frame: pd.DataFrame, artifact_path: str) -> None:
    """Write a frame as parquet or CSV (by the path's suffix) into the run's artifacts. A CSV
    keeps the index only when it is named (``era``): a plain row number is no column of the data."""
    folder, _, name = artifact_path.rpartition("/")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        if name.endswith(".csv"):
            frame.to_csv(path, index=frame.index.name is not None)
        else:
            frame.to_parquet(path, index=False)
        mlflow.log_artifact(str(path), artifact_path=folder or None)


def git_commit() -> str:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return result.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
