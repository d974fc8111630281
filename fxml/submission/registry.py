"""Models in MLflow: load an fxml model from a ``runs:/`` or ``models:/`` URI, and promote a run's
model into the registry (a new version, or the existing one for that run, and an alias on it).

Aliases, not the deprecated stages: ``models:/<name>@champion`` always names one version.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any

import mlflow
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from fxml import __version__
from fxml.errors import FxmlError
from fxml.models.base import TabularModel
from fxml.tracking.mlflow_run import tracking_uri
from fxml.tracking.pyfunc import MODEL_ARTIFACT, FxmlPyfunc

log = logging.getLogger(__name__)
_ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)$")
_VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")
_RUN_URI = re.compile(r"^runs:/(?P<run_id>[^/]+)/(?P<path>.+)$")


def first_line(error: BaseException) -> str:
    message = getattr(error, "message", None) or str(error)
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


@dataclass
class ModelRef:
    """Where a model URI points: a registered version (name, version, alias) and its source run."""

    uri: str
    name: str | None = None
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None


@dataclass
class LoadedModel:
    """An fxml model loaded from MLflow, with the manifest it was logged with."""

    ref: ModelRef
    pyfunc: Any
    manifest: dict[str, Any]
    model: TabularModel
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def features(self) -> list[str]:
        return list(self.manifest["features"])

    @property
    def per_era(self) -> bool:
        return bool(getattr(self.model, "per_era", False))


def resolve_model_uri(uri: str, client: mlflow.MlflowClient | None = None) -> ModelRef:
    """Look up the registered version and source run behind ``uri`` (FxmlError if none)."""
    client = client or mlflow.MlflowClient()
    if match := _RUN_URI.match(uri):
        return ModelRef(uri, run_id=match["run_id"])
    try:
        if match := _ALIAS_URI.match(uri):
            version = client.get_model_version_by_alias(match["name"], match["alias"])
            alias = match["alias"]
        elif match := _VERSION_URI.match(uri):
            version = client.get_model_version(match["name"], match["version"])
            alias = None
        else:
            raise FxmlError(f"{uri} is not models:/<name>@<alias>, models:/<name>/<version> "
                            "or runs:/<run id>/model")
    except MlflowException as error:
        raise FxmlError(f"no registered model version at {uri} ({first_line(error)}) in "
                        f"{mlflow.get_tracking_uri()}") from None
    return ModelRef(uri, name=version.name, version=str(version.version), alias=alias,
                    run_id=version.run_id)


def load_logged_model(uri: str) -> LoadedModel:
    """Load the fxml model behind an MLflow URI (the tracking URI must be set already)."""
    ref = resolve_model_uri(uri)
    try:
        pyfunc = mlflow.pyfunc.load_model(uri)
    except MlflowException as error:
        raise FxmlError(f"cannot load {uri}: {first_line(error)}") from None
    except OSError as error:
        raise FxmlError(f"cannot load {uri}: {error}") from None
    python_model = pyfunc.unwrap_python_model()
    if not isinstance(python_model, FxmlPyfunc):
        raise FxmlError(f"{uri} is not an fxml model (its python_model is "
                        f"{type(python_model).__name__})")
    tags: dict[str, str] = {}
    if ref.name and ref.version:
        tags = dict(mlflow.MlflowClient().get_model_version(ref.name, ref.version).tags)
    return LoadedModel(ref, pyfunc, dict(python_model.manifest), python_model.model, tags)


# --- promotion ----------------------------------------------------------------------------------


@dataclass
class Promotion:
    name: str
    version: str
    alias: str
    run_id: str
    metric: str
    value: float | None
    previous_version: str | None
    reused: bool

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}"


def logged_a_model(run: Run) -> bool:
    outputs = getattr(run, "outputs", None)
    return bool(outputs and outputs.model_outputs)


def finished_runs_with_models(client: mlflow.MlflowClient, experiment_id: str) -> list[Run]:
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], "attributes.status = 'FINISHED'",
                                  max_results=1000, page_token=token)
        runs += [run for run in page if logged_a_model(run)]
        token = page.token
        if not token:
            return runs


def best_run(client: mlflow.MlflowClient, experiment: str, metric: str, mode: str) -> Run:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise FxmlError(f"no experiment '{experiment}' in {mlflow.get_tracking_uri()} "
                        f"(experiments: {', '.join(names) or 'none'})")
    candidates = finished_runs_with_models(client, found.experiment_id)
    if not candidates:
        raise FxmlError(f"experiment '{experiment}' has no finished run that logged a model")
    scored = [run for run in candidates
              if metric in run.data.metrics and not math.isnan(run.data.metrics[metric])]
    if not scored:
        logged = sorted({name for run in candidates for name in run.data.metrics
                         if not name.startswith(("era_", "valid_"))})
        shown = ", ".join(logged[:12]) + (", ..." if len(logged) > 12 else "")
        raise FxmlError(f"metric={metric}: no finished run with a model in experiment "
                        f"'{experiment}' logged it (they log: {shown})")
    sign = 1.0 if mode == "max" else -1.0
    return max(scored, key=lambda run: (sign * run.data.metrics[metric], run.info.start_time))


def promote(run_id: str | None, experiment: str, metric: str, mode: str, name: str | None,
            alias: str, uri: str | None) -> Promotion:
    """Register a run's model (the best of ``experiment`` by ``metric`` when ``run_id`` is None)
    and point ``alias`` at that version."""
    mlflow.set_tracking_uri(tracking_uri(uri))
    client = mlflow.MlflowClient()
    if run_id:
        try:
            run = client.get_run(run_id)
        except MlflowException:
            raise FxmlError(f"run_id={run_id}: no such run in {mlflow.get_tracking_uri()}") from None
        if not logged_a_model(run):
            raise FxmlError(f"run {run_id} logged no model (was it trained with "
                            "tracking.log_model=false?)")
        if run.info.status != "FINISHED":
            raise FxmlError(f"run {run_id} is {run.info.status}, not FINISHED")
    else:
        run = best_run(client, experiment, metric, mode)
    run_id = run.info.run_id
    value = run.data.metrics.get(metric)
    name = name or client.get_experiment(run.info.experiment_id).name
    previous = _alias_version(client, name, alias)
    existing = _version_of_run(client, name, run_id)
    tags = _version_tags(client, run, metric, value)
    try:
        if existing is None:
            version = mlflow.register_model(f"runs:/{run_id}/{MODEL_ARTIFACT}", name, tags=tags)
        else:
            version = existing
            for key, tag in tags.items():
                client.set_model_version_tag(name, version.version, key, tag)
        client.set_registered_model_alias(name, alias, version.version)
    except MlflowException as error:
        raise FxmlError(f"could not register run {run_id} as '{name}': {first_line(error)}") from None
    return Promotion(name, str(version.version), alias, run_id, metric, value, previous,
                     existing is not None)


def _alias_version(client: mlflow.MlflowClient, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _version_of_run(client: mlflow.MlflowClient, name: str, run_id: str) -> Any:
    escaped = name.replace("'", "\\'")
    try:
        versions = client.search_model_versions(f"name = '{escaped}' and run_id = '{run_id}'")
    except MlflowException:
        return None
    return max(versions, key=lambda v: int(v.version)) if versions else None


def _version_tags(client: mlflow.MlflowClient, run: Run, metric: str,
                  value: float | None) -> dict[str, str]:
    run_tags = run.data.tags
    tags = {
        "source_run_id": run.info.run_id,
        "source_experiment": client.get_experiment(run.info.experiment_id).name,
        "promoted_by": f"fxml {__version__}",
        "promoted_metric": metric,
    }
    if value is not None:
        tags["promoted_metric_value"] = f"{value:.6g}"
    for key in ("data_version", "feature_set", "target", "model_family", "data_fingerprint"):
        if key in run_tags:
            tags[key] = run_tags[key]
    params = run.data.params
    method = params.get("postprocess.method", "none")
    if method != "none":
        details = {key.split(".", 1)[1]: value for key, value in params.items()
                   if key.startswith("postprocess.") and key != "postprocess.method"}
        method += "(" + ", ".join(f"{k}={v}" for k, v in sorted(details.items())) + ")"
    tags["postprocess"] = method
    for key in ("corr_mean", "corr_sharpe", "mmc_mean", "bmc_mean", "fnc_mean"):
        if key in run.data.metrics:
            tags[f"validation_{key}"] = f"{run.data.metrics[key]:.6g}"
    return tags
