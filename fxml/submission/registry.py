"""Models in MLflow: load an fxml model from a ``runs:/`` or ``models:/`` URI, and promote a run's
model into the registry (a new version, or the existing one for that run, and an alias on it).

Aliases, not the deprecated stages: ``models:/<name>@champion`` always names one version.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import mlflow
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from fxml import __version__
from fxml.errors import FxmlError, describe
from fxml.models.base import TabularModel
from fxml.submission.choice import RunSelection, choose_run
from fxml.tracking.mlflow_run import SOURCE_RUN_TAG, tracking_uri
from fxml.tracking.stores import store_client

log = logging.getLogger(__name__)
_ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)$")
_VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")
_RUN_URI = re.compile(r"^runs:/(?P<run_id>[^/]+)/(?P<path>.+)$")


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
    client = client or store_client()
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
        raise FxmlError(f"no registered model version at {uri} ({describe(error)}) in "
                        f"{mlflow.get_tracking_uri()}") from None
    return ModelRef(uri, name=version.name, version=str(version.version), alias=alias,
                    run_id=version.run_id)


def load_logged_model(uri: str) -> LoadedModel:
    """Load the fxml model behind an MLflow URI (the tracking URI must be set already)."""
    from fxml.tracking.pyfunc import FxmlPyfunc  # MLflow's pyfunc machinery: see log_model

    ref = resolve_model_uri(uri)
    try:
        pyfunc = mlflow.pyfunc.load_model(uri)
    except MlflowException as error:
        raise FxmlError(f"cannot load {uri}: {describe(error)}") from None
    except OSError as error:
        raise FxmlError(f"cannot load {uri}: {error}") from None
    python_model = pyfunc.unwrap_python_model()
    if not isinstance(python_model, FxmlPyfunc):
        raise FxmlError(f"{uri} is not an fxml model (its python_model is "
                        f"{type(python_model).__name__})")
    tags: dict[str, str] = {}
    if ref.name and ref.version:
        tags = dict(store_client().get_model_version(ref.name, ref.version).tags)
    return LoadedModel(ref, pyfunc, dict(python_model.manifest), python_model.model, tags)


def load_ensemble_members(model: TabularModel) -> None:
    """Load the members an ensemble names by MLflow URI and attach them: the model layer never
    reads MLflow itself. Any other model is left as it is."""
    from fxml.models.ensemble import EnsembleModel, LoadedMember

    if not isinstance(model, EnsembleModel):
        return
    for name, uri in model.logged_member_uris().items():
        try:
            loaded = load_logged_model(uri)
        except FxmlError as error:
            raise FxmlError(f"model.members.{name}: {error}") from None
        log.info("ensemble: member %s loaded from %s (%d features)", name, uri, len(loaded.features))
        model.attach(name, LoadedMember(loaded.model, loaded.features, uri,
                                        str(loaded.manifest.get("feature_set", "?")),
                                        str(loaded.manifest.get("target", "?"))))


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
    reason: str = ""

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}"

    def as_json(self) -> dict[str, Any]:
        """What ``fxml.promote output=json`` prints: these fields and the model URI to load."""
        return {**dataclasses.asdict(self), "uri": self.uri}


def promote(selection: RunSelection, name: str | None, alias: str, uri: str | None) -> Promotion:
    """Register the model of the run ``selection`` picks (see fxml.submission.choice) and point
    ``alias`` at that version."""
    mlflow.set_tracking_uri(tracking_uri(uri))
    from fxml.tracking.pyfunc import MODEL_ARTIFACT

    client = store_client()
    choice = choose_run(client, selection)
    run, metric, value = choice.run, choice.metric, choice.value
    run_id = run.info.run_id
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
        raise FxmlError(f"could not register run {run_id} as '{name}': {describe(error)}") from None
    return Promotion(name, str(version.version), alias, run_id, metric, value, previous,
                     existing is not None, choice.reason)


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
    if "mlflow.parentRunId" in run_tags:
        tags["source_sweep_run_id"] = run_tags["mlflow.parentRunId"]
    if SOURCE_RUN_TAG in run_tags:  # a final fit: the run whose configuration it refitted
        tags["refit_of"] = run_tags[SOURCE_RUN_TAG]
    for key in ("data_version", "feature_set", "target", "model_family", "data_fingerprint",
                "member_targets"):
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
