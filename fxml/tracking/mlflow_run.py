"""One MLflow run per job: config, tags, metrics, per-era series, plots, predictions, model.

A run that fails is ended with status FAILED and an ``error`` tag; whatever it logged before the
failure stays. An interrupted one (SIGINT, SIGTERM) ends KILLED. A tracking server or database that
stops answering mid-run gives up after the bounded retries (see :mod:`fxml.tracking.stores`); one
that refuses the credentials fails at once. Either is one line naming the store.
"""

from __future__ import annotations

import contextlib
import functools
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
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf

from fxml.errors import (
    OUTPUT_CLOSED,
    FxmlError,
    RunPruned,
    RunStopped,
    access_denied,
    already_exists,
    connection_lost,
    describe,
    error_chain,
    output_closed,
    reported_as_store_error,
    store_error,
)
from fxml.interrupts import interrupting_signal
from fxml.secrets import redact  # noqa: F401  (also imported from here by the sweeper)
from fxml.tracking.stores import (  # noqa: F401  (tracking_uri: also imported from here)
    DEFAULT_STORE,
    DEFAULT_URI,
    creation_lock,
    retrying,
    store_client,
    tracking_store,
    tracking_uri,
)
from fxml.tracking.ui import experiment_ui_tags, missing_ui_tags

log = logging.getLogger(__name__)
MAX_PARAM_LENGTH = 6000
BATCH = 1000
CREATE_ATTEMPTS = 8
SHORT_ID = 4  # characters of the run id in a run's name
# a multirun job's number and its command-line overrides (its row in the multirun's table)
JOB_TAG = "fxml.job"
OVERRIDES_TAG = "fxml.overrides"
TRIAL_TAG = "fxml.trial"  # the Optuna trial number of a search's job
# host:pid of the process that trains the run, to find (or kill) a sweep's worker on a cluster
PROCESS_TAG = "fxml.process"


# a final fit's run names the run whose configuration it refitted (fxml.refit)
SOURCE_RUN_TAG = "fxml.source_run_id"


def use_experiment(uri: str, experiment: str) -> str:
    """Point MLflow at ``uri`` and ``experiment``, creating either if needed; a local SQLite store
    keeps artifacts beside it, and the experiment fxml's view of the MLflow UI (fxml.tracking.ui).
    Safe when several processes do it at once on any backend. A store that does not answer is
    waited for (``tracking.retry_seconds``); one that refuses the credentials, or fails otherwise,
    is one line at once."""
    mlflow.set_tracking_uri(uri)
    with reported_as_store_error(tracking_store(uri)):
        return retrying(lambda: _experiment_id(uri, experiment))


def _experiment_id(uri: str, experiment: str) -> str:
    for attempt in range(CREATE_ATTEMPTS):
        try:
            client = store_client(uri)
            with creation_lock(uri):
                existing = client.get_experiment_by_name(experiment)
                if existing is not None:
                    # an experiment made before fxml kept these, or by hand, gets them once
                    for key, value in missing_ui_tags(existing.tags).items():
                        client.set_experiment_tag(existing.experiment_id, key, value)
                    return existing.experiment_id
                location = None
                if uri == DEFAULT_URI:
                    location = (DEFAULT_STORE / "artifacts").resolve().as_uri()
                return client.create_experiment(experiment, artifact_location=location,
                                                tags=experiment_ui_tags())
        except Exception as error:
            # another process created the tables or the experiment between our look and our write
            if already_exists(error) and attempt + 1 < CREATE_ATTEMPTS:
                time.sleep(0.2 + random.random() * 0.5)
                continue
            raise
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
def tracked_run(uri: str, experiment: str, name: RunName | str, tags: dict[str, str],
                parent_run_id: str | None = None) -> Iterator[Any]:
    """A run that ends FINISHED, FAILED (with an ``error`` tag) or KILLED (interrupted or
    pruned); inside a sweep it is a child of the sweep's parent run ``parent_run_id``
    (``sweep.parent_run_id`` of the job's config). A plain string names it exactly."""
    if isinstance(name, str):
        name = RunName(name, short_id=False)
    experiment_id = use_experiment(uri, experiment)
    if parent_run_id:
        tags = {**tags, "mlflow.parentRunId": parent_run_id}
    tags = {key: redact(str(value)) for key, value in tags.items()}
    run = mlflow.start_run(experiment_id=experiment_id, run_name=name.base + name.suffix, tags=tags)
    try:
        if name.short_id:
            # the short id is the run id's start, known once the run exists
            set_tags({"mlflow.runName": name.of(run.info.run_id)})
        yield run
    except BaseException as error:
        if connection_lost(error) or _store_refused(error):
            _drop_active_runs()
            raise FxmlError(f"{store_error(tracking_store(uri), error)}; run {run.info.run_id} could not "
                            "be closed there and may show RUNNING") from None
        signum = interrupting_signal()
        stopped = isinstance(error, (KeyboardInterrupt, RunPruned, RunStopped)) or signum is not None
        # a library may have turned the signal into its own exit (Lightning: SystemExit(1))
        what = f"Interrupted: {signal.Signals(signum).name}" if signum is not None \
            else OUTPUT_CLOSED if output_closed(error) else describe(error)
        tag = "pruned" if isinstance(error, RunPruned) else "stopped" if isinstance(error, RunStopped) \
            else "error"
        try:
            set_tags({tag: redact(what)[:5000]})
            end_active_run("KILLED" if stopped else "FAILED")
        except Exception as closing:
            _drop_active_runs()
            raise FxmlError(f"{store_error(tracking_store(uri), closing)} while run {run.info.run_id} "
                            f"was being closed after {what}") from None
        raise
    try:
        end_active_run("FINISHED")
    except Exception as closing:
        _drop_active_runs()
        raise FxmlError(f"{store_error(tracking_store(uri), closing)}; run {run.info.run_id} finished but "
                        "could not be closed there and may show RUNNING") from None


def end_active_run(status: str) -> None:
    """End the active run as ``status``, tried again while the store is away. MLflow's ``end_run``
    forgets the run before it asks the store, so the store is told first, with retries; ``end_run``
    then forgets the run (telling the store again, which has the status already)."""
    run = mlflow.active_run()
    if run is None:
        return
    client = mlflow.MlflowClient()
    retrying(lambda: client.set_terminated(run.info.run_id, status=status))
    with contextlib.suppress(MlflowException):
        mlflow.end_run(status=status)


def _store_refused(error: BaseException) -> bool:
    """Whether the tracking store itself refused a call (credentials, permission): an error of
    MLflow's, not of the job. A refused Optuna storage is the job's error and fails the run."""
    return access_denied(error) and any(isinstance(link, MlflowException) for link in error_chain(error))


def _drop_active_runs() -> None:
    """End this process's active runs (a job's, and a fold's nested in it) without waiting on a
    store that is gone: one attempt each, no HTTP retries, its failure ignored. MLflow would
    otherwise retry ending them at exit, once more for the full retry time."""
    with _no_http_retries():
        while mlflow.active_run() is not None:
            with contextlib.suppress(Exception):
                mlflow.end_run(status="FAILED")  # MLflow forgets the run before asking the store


@contextmanager
def _no_http_retries() -> Iterator[None]:
    previous = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)
        else:
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = previous


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


# --- the active run's logging, each call tried again while the store is away -------------------
# (tracking.retry_seconds), so that an outage its retries survive costs a job nothing


def log_metrics(metrics: dict[str, float]) -> None:
    retrying(lambda: mlflow.log_metrics(metrics))


def log_params(params: dict[str, Any]) -> None:
    retrying(lambda: mlflow.log_params(params))


def set_tags(tags: dict[str, Any]) -> None:
    retrying(lambda: mlflow.set_tags(tags))


def log_figure(figure: Any, artifact_file: str) -> None:
    retrying(lambda: mlflow.log_figure(figure, artifact_file))


def log_artifact(local_path: str, artifact_path: str | None = None) -> None:
    retrying(lambda: mlflow.log_artifact(local_path, artifact_path=artifact_path))


def log_text(text: str, artifact_file: str) -> None:
    retrying(lambda: mlflow.log_text(text, artifact_file))


def log_config(config: DictConfig) -> None:
    log_params(flatten(config))
    log_text(redact(OmegaConf.to_yaml(config, resolve=True)), "config.yaml")


def log_metric_batch(metrics: list[Metric]) -> None:
    """Many metric values to the active run in few requests (MLflow takes 1000 per batch)."""
    active = mlflow.active_run()
    if active is None:
        raise RuntimeError("log_metric_batch() outside an MLflow run")
    client, run_id = store_client(), active.info.run_id
    for start in range(0, len(metrics), BATCH):
        batch = metrics[start : start + BATCH]
        retrying(functools.partial(client.log_batch, run_id, metrics=batch))


def log_fitted_params(model: Any) -> None:
    """Log what ``fit`` chose (``model.fitted_params()``, e.g. ensemble weights) to the active run."""
    params = model.fitted_params()
    if params:
        log_params(params)


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
        log_artifact(str(path), artifact_path=folder or None)


def git_commit() -> str:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return result.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
