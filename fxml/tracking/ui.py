"""What the MLflow UI shows of fxml's runs without set-up: the runs table with the scores, the
release each run read, and the link the summary prints.

The MLflow 3 UI opens an experiment on its GenAI overview unless told otherwise, and its runs table
shows no metric column until one is picked (the picks live in the browser). Two of its own
mechanisms change that: ``workflowType=machine_learning`` in the page's URL opens the runs rather
than the GenAI pages, and a saved view (experiment tag ``mlflow.sharedViewState.<key>``, opened by
``viewStateShareKey=<key>`` and listed under the runs page's "Views") picks columns, their order
and widths, and the sort. fxml writes the view on each experiment it uses; the summary's link opens
it. The ``mlflow.experimentKind`` tag marks the experiment as machine learning for MLflow versions
whose UI reads it (3.17 follows its workflow switch instead).
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

import mlflow
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.exceptions import MlflowException

from fxml.errors import already_exists
from fxml.secrets import redact
from fxml.tracking.stores import retrying

if TYPE_CHECKING:
    from fxml.data.loader import NumeraiData

KIND_TAG = "mlflow.experimentKind"
MACHINE_LEARNING = "custom_model_development"
VIEW_KEY = "fxml-scores"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
VIEW_NAME = "fxml scores"
# what `mlflow ui` serves at when given no --host or --port
LOCAL_UI = "http://127.0.0.1:5000"
SORTED_BY = "corr_sharpe"
# the scores a user compares runs by, in this order after the name; columns of metrics no run of
# the experiment has are left out by the UI
SCORE_COLUMNS = ("corr_sharpe", "corr_mean", "mmc_mean", "payout_mean", "bmc_mean", "cv_corr_sharpe",
                 "cv_corr_mean")
# the UI's column ids: its run name and start time columns, pinned left
NAME_COLUMN, CREATED_COLUMN = "attributes.`Run Name`", "runDateAndNestInfo"
DATASET_COLUMN, DURATION_COLUMN = "attributes.`Dataset`", "duration"
# pixels: a default name whole (xgboost-medium-target_cyrusd_20-3f9a), and four scores beside it
# at 1400 px while MLflow's assistant panel is open (it opens on a first visit to a local server)
NAME_WIDTH, CREATED_WIDTH, SCORE_WIDTH = 262, 90, 88


def metric_column(name: str) -> str:
    return f"metrics.`{name}`"


def view_state() -> dict[str, Any]:
    """The saved view's state: the runs page's sort and the table's columns, as the UI keeps them."""
    scores = [metric_column(name) for name in SCORE_COLUMNS]
    return {
        "orderByKey": metric_column(SORTED_BY),
        "orderByAsc": False,
        "selectedColumns": [DATASET_COLUMN, *scores],
        "columnOrder": [NAME_COLUMN, CREATED_COLUMN, *scores, DATASET_COLUMN, DURATION_COLUMN],
        "columnWidths": {NAME_COLUMN: NAME_WIDTH, CREATED_COLUMN: CREATED_WIDTH,
                         **{column: SCORE_WIDTH for column in scores}},
    }


def experiment_ui_tags(now_ms: int | None = None) -> dict[str, str]:
    """The experiment tags fxml keeps on its experiments: the kind and the saved view."""
    created = int(time.time() * 1000) if now_ms is None else now_ms
    view = {"name": VIEW_NAME, "createdAt": created, "updatedAt": created,
            "state": json.dumps(view_state())}
    return {KIND_TAG: MACHINE_LEARNING, VIEW_TAG: json.dumps(view)}


def missing_ui_tags(tags: dict[str, str]) -> dict[str, str]:
    """Of ``experiment_ui_tags``, those an experiment with ``tags`` lacks or has otherwise (a view
    written by another fxml version); empty once they are there, so checking costs no write."""
    wanted = experiment_ui_tags()
    missing = {}
    if tags.get(KIND_TAG) != wanted[KIND_TAG]:
        missing[KIND_TAG] = wanted[KIND_TAG]
    if _view_state_of(tags.get(VIEW_TAG)) != view_state():
        missing[VIEW_TAG] = wanted[VIEW_TAG]
    return missing


def _view_state_of(value: str | None) -> Any:
    try:
        return json.loads(json.loads(value)["state"]) if value else None
    except (ValueError, TypeError, KeyError):
        return None


def runs_page_url(ui: str, experiment_id: str) -> str:
    """The runs table of experiment ``experiment_id`` in the MLflow UI at ``ui`` (``http://host:port``
    or with a path prefix), opened on fxml's saved view."""
    query = urlencode({"viewStateShareKey": VIEW_KEY, "workflowType": "machine_learning"})
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


def browse_lines(uri: str, experiment_id: str) -> list[str]:
    """How to see a run's experiment in the MLflow UI: a tracking server's page, or the ``mlflow ui``
    command for a local store and the page it serves. No credentials are printed."""
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        # the UI is served where the API is; a password in the URI is left out, not masked
        server = f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"
        return [f"Browse: {redact(runs_page_url(server, experiment_id))}"]
    return [f"Browse: mlflow ui --backend-store-uri {redact(uri)}",
            f"  then open {runs_page_url(LOCAL_UI, experiment_id)}"]


class ReleaseFile(DatasetSource):
    """Where a run's data was read from: a file of the release folder (recorded, never copied)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    @staticmethod
    def _get_source_type() -> str:
        return "local"

    def load(self, **kwargs: Any) -> str:
        return self.uri

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False

    @classmethod
    def _resolve(cls, raw_source: Any) -> ReleaseFile:
        return cls(str(raw_source))

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> ReleaseFile:
        return cls(str(source_dict["uri"]))


def dataset_name(data: NumeraiData) -> str:
    """``v5.3/medium/target_cyrusd_20``: the release, the feature set and the training target."""
    return f"{data.version}/{data.feature_set}/{data.target}"


def log_data_input(data: NumeraiData, split: str) -> None:
    """Record on the active run that it read ``split`` (``train``, ``full``, ``validation``) of
    ``data``, as an MLflow dataset input: its name, a digest of what was read and where it lies."""
    context = "validation" if split == "validation" else "training"
    files = data.split_files(split)  # full before v5.3: train's and validation's files
    where = data.folder / files[0] if len(files) == 1 else data.folder
    # the same columns of another file, or other columns of the same file, are another dataset
    digest = hashlib.sha256(f"{data.fingerprint()}/{split}".encode()).hexdigest()[:8]
    # MLflow's MetaDataset leaves Dataset.profile abstract; Dataset is no ABC, so it instantiates
    dataset = MetaDataset(ReleaseFile(str(where)), name=dataset_name(data),  # type: ignore[abstract]
                          digest=digest)
    retrying(lambda: _log_input(dataset, context))


def _log_input(dataset: Any, context: str) -> None:
    try:
        mlflow.log_input(dataset, context=context)
    except MlflowException as error:
        # runs started together may insert the same dataset at once (MLflow looks, then inserts):
        # the loser finds it there now and only links it to its run
        if not already_exists(error):
            raise
        mlflow.log_input(dataset, context=context)
