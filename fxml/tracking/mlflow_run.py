"""One MLflow run per job: config, tags, metrics, per-era series, plots, predictions, model.

A run that fails is ended with status FAILED and an ``error`` tag; whatever it logged before the
failure stays.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import Metric
from omegaconf import DictConfig, OmegaConf
from optuna import TrialPruned

from fxml.errors import FxmlError

log = logging.getLogger(__name__)
DEFAULT_STORE = Path("mlruns")
DEFAULT_URI = f"sqlite:///{DEFAULT_STORE}/mlflow.db"
MAX_PARAM_LENGTH = 6000
BATCH = 1000
_URL_PASSWORD = re.compile(r"://([^:/@\s]+):([^@\s]+)@")


def tracking_uri(configured: str | None) -> str:
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def use_experiment(uri: str, experiment: str) -> str:
    """Point MLflow at ``uri`` and ``experiment``; a local SQLite store keeps artifacts beside it."""
    mlflow.set_tracking_uri(uri)
    with _store_lock(uri):
        try:
            existing = mlflow.get_experiment_by_name(experiment)
            if existing is not None:
                return existing.experiment_id
            location = None
            if uri == DEFAULT_URI:
                location = (DEFAULT_STORE / "artifacts").resolve().as_uri()
            return mlflow.create_experiment(experiment, artifact_location=location)
        except mlflow.exceptions.MlflowException as error:
            raise FxmlError(f"MLflow tracking at {uri} failed: {error.message.splitlines()[0]}") from None


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Processes starting together (sweep workers, parallel launchers) would race to create a new
    SQLite store's tables; the first one in creates them while the others wait."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    database = Path(uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def tracked_run(uri: str, experiment: str, run_name: str | None, tags: dict[str, str]) -> Iterator[Any]:
    """A run that ends FINISHED, FAILED (with an ``error`` tag) or KILLED (interrupted or
    pruned); inside a sweep it is a child of the sweep's parent run."""
    experiment_id = use_experiment(uri, experiment)
    parent = os.environ.get("FXML_PARENT_RUN_ID")
    if parent:
        tags = {**tags, "mlflow.parentRunId": parent}
    run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags)
    try:
        yield run
    except BaseException as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        stopped = isinstance(error, (KeyboardInterrupt, TrialPruned))
        mlflow.set_tag("pruned" if isinstance(error, TrialPruned) else "error",
                       f"{type(error).__name__}: {message}"[:5000])
        mlflow.end_run(status="KILLED" if stopped else "FAILED")
        raise
    mlflow.end_run(status="FINISHED")


def redact(text: str) -> str:
    """Hide the password of a database URL (an Optuna or MLflow server) before it is logged."""
    return _URL_PASSWORD.sub(r"://\1:***@", text)


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
    mlflow.log_text(OmegaConf.to_yaml(config, resolve=True), "config.yaml")


def log_metric_batch(metrics: list[Metric]) -> None:
    """Many metric values to the active run in few requests (MLflow takes 1000 per batch)."""
    client, run_id = mlflow.tracking.MlflowClient(), mlflow.active_run().info.run_id
    for start in range(0, len(metrics), BATCH):
        client.log_batch(run_id, metrics=metrics[start : start + BATCH])


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
    """Write a frame as parquet or CSV (by the path's suffix) into the run's artifacts."""
    folder, _, name = artifact_path.rpartition("/")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        if name.endswith(".csv"):
            frame.to_csv(path)
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
