"""The MLflow UI shows fxml's runs comparably without set-up: the link the summary prints opens the
runs table (not the GenAI overview) with the scores, readable names and the release each run read,
checked in a real MLflow server and a real headless Chromium at 1400 px.

``python -m tests.test_mlflow_ui docs/images/mlflow-ui-runs.png`` redraws the screenshot.
"""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
import pytest

from fxml.data.layout import FEATURES_JSON
from fxml.data.loader import NumeraiData
from fxml.tracking.mlflow_run import RunName, tracked_run, use_experiment
from fxml.tracking.stores import store_client
from fxml.tracking.ui import (
    CREATED_COLUMN,
    DATASET_COLUMN,
    KIND_TAG,
    MACHINE_LEARNING,
    NAME_COLUMN,
    SCORE_COLUMNS,
    VIEW_KEY,
    VIEW_NAME,
    VIEW_TAG,
    browse_lines,
    log_data_input,
    metric_column,
    view_state,
)
from tests.helpers import chromium
from tests.releases import FolderSource
from tests.test_lifecycle import kill_group, start_mlflow_server

EXPERIMENT = "fxml-ui"
SCORES = ("corr_mean", "corr_sharpe", "mmc_mean", "bmc_mean", "payout_mean")
Runs = tuple[tuple[str, str, str, tuple[float, ...]], ...]
# model, feature set, target and SCORES: names alike up to their ends, as a user's runs are
RUNS: Runs = (
    ("xgboost", "medium", "target_cyrusd_20", (0.0312, 1.62, 0.0061, 0.0044, 0.0187)),
    ("lgbm", "medium", "target_cyrusd_20", (0.0287, 1.41, 0.0049, 0.0031, 0.0163)),
    ("lgbm", "medium", "target_teager2b_20", (0.0265, 1.55, 0.0072, 0.0052, 0.0170)),
    ("ridge", "small", "target", (0.0201, 0.93, -0.0008, -0.0011, 0.0071)),
)
# what MLflow 3.17 shows of an experiment in its GenAI mode, its default: the overview's charts, and
# beside the runs table the GenAI pages (and the table's title "Training runs")
GENAI_PAGES = ("Token Usage", "Observability", "Evaluation runs", "Training runs")


def release(folder: Path) -> Path:
    """A release's features.json: all NumeraiData reads to be opened and named."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"feature_{i}" for i in range(6)]
    (folder / FEATURES_JSON).write_text(json.dumps({
        "feature_sets": {"small": names[:3], "medium": names},
        "targets": ["target", "target_cyrusd_20", "target_teager2b_20"]}))
    return folder


def log_runs(uri: str, folder: Path, runs: Runs = RUNS) -> dict[str, float]:
    """Runs named, tagged and given their dataset inputs by fxml's own functions, with the scores
    logged directly (no model is trained); each run's name and its corr_sharpe."""
    logged = {}
    for model, feature_set, target, scores in runs:
        data = NumeraiData(FolderSource(), folder, feature_set=feature_set, target=target)
        name = RunName(f"{model}-{feature_set}-{target}")
        with tracked_run(uri, EXPERIMENT, name, {}) as run:
            log_data_input(data, "train")
            log_data_input(data, "validation")
            mlflow.log_metrics(dict(zip(SCORES, scores, strict=True)))
        logged[name.of(run.info.run_id)] = scores[SCORES.index("corr_sharpe")]
    return logged


def open_in_browser(url: str, *output: str) -> subprocess.CompletedProcess:
    """The page at 1400 px, given 20 s of its own time to fetch the runs and draw them."""
    return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--window-size=1400,900", "--virtual-time-budget=20000", *output, url],
                          capture_output=True, text=True, timeout=120)


def printed_link(uri: str) -> str:
    """The link a run's summary prints for the experiment on the tracking server ``uri``."""
    lines = browse_lines(uri, use_experiment(uri, EXPERIMENT))
    assert len(lines) == 1 and lines[0].startswith("Browse: http"), lines
    return lines[0].removeprefix("Browse: ")


def visible_text(dom: str) -> str:
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", text)))


def test_browse_lines_name_the_runs_page_and_never_a_password() -> None:
    query = f"?viewStateShareKey={VIEW_KEY}&workflowType=machine_learning"
    assert browse_lines("https://alice:s3cret@mlflow.example.org:8443/tracking", "7") == [
        f"Browse: https://mlflow.example.org:8443/tracking/#/experiments/7/runs{query}"]
    assert browse_lines("postgresql://fxml:s3cret@db:5432/mlflow", "3") == [
        "Browse: mlflow ui --backend-store-uri postgresql://fxml:***@db:5432/mlflow",
        f"  then open http://127.0.0.1:5000/#/experiments/3/runs{query}"]


def test_fxml_experiments_carry_the_kind_and_the_view_once(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = store_client(uri)
    created = client.get_experiment(use_experiment(uri, "made-by-fxml")).tags
    # one made before fxml kept the tags (or by hand) gets them when fxml first uses it
    older = client.create_experiment("made-elsewhere")
    assert KIND_TAG not in client.get_experiment(older).tags
    assert use_experiment(uri, "made-elsewhere") == older
    added = client.get_experiment(older).tags
    for tags in (created, added):
        assert tags[KIND_TAG] == MACHINE_LEARNING
        view = json.loads(tags[VIEW_TAG])
        assert view["name"] == VIEW_NAME and json.loads(view["state"]) == view_state()
    # the view is not rewritten on every run (its time stays the first write's)
    use_experiment(uri, "made-elsewhere")
    assert client.get_experiment(older).tags[VIEW_TAG] == added[VIEW_TAG]


@pytest.mark.slow
def test_the_printed_link_opens_the_runs_table_with_scores_names_and_datasets(tmp_path: Path) -> None:
    chromium()
    server, uri = start_mlflow_server(tmp_path / "server")
    try:
        logged = log_runs(uri, release(tmp_path / "release"))
        page = open_in_browser(printed_link(uri), "--dump-dom")
    finally:
        kill_group(server)
    dom, text = page.stdout, visible_text(page.stdout)
    assert "<title>Runs - Experiment" in dom, text[:2000]
    assert not any(genai in text for genai in GENAI_PAGES), text[:2000]
    assert VIEW_NAME in text and "Sort: corr_sharpe" in text, text[:2000]
    # the scores stand first after the name and its start, in fxml's order (the grid's columns by
    # their place on screen; it draws those in view and a few beyond)
    placed = {int(index): column for index, column in
              re.findall(r'aria-colindex="(\d+)" col-id="([^"]+)"', dom)
              if not re.fullmatch(r"\w+_\d+", column)}  # a group's header ("Metrics")
    columns = [placed[index] for index in sorted(placed)]
    assert columns[1:9] == [NAME_COLUMN, CREATED_COLUMN, *(metric_column(name) for name in SCORE_COLUMNS[:5]),
                            DATASET_COLUMN], columns
    # every run by its whole name, the best corr_sharpe first
    ranked = sorted(logged, key=logged.__getitem__, reverse=True)
    positions = [text.find(name) for name in ranked]
    assert -1 not in positions and positions == sorted(positions), (ranked, text[:3000])
    # the dataset column: the release, feature set and target each run read, and in which role
    for name in ("v5.2/medium/target_cyrusd_20", "v5.2/medium/target_teager2b_20", "v5.2/small/target"):
        for context in ("training", "validation"):
            assert re.search(rf"{re.escape(name)} \([0-9a-f]{{8}}\) {context}", text), (name, text[:3000])


def screenshot(image: Path) -> None:
    """The runs page of eight runs at 1400 px."""
    root = Path(tempfile.mkdtemp())
    server, uri = start_mlflow_server(root / "server")
    try:
        more = tuple((model, feature_set, target, tuple(score * factor for score in scores))
                     for factor in (1.0, 0.87) for model, feature_set, target, scores in RUNS)
        log_runs(uri, release(root / "release"), more)
        open_in_browser(printed_link(uri), f"--screenshot={image.resolve()}")
    finally:
        kill_group(server)


if __name__ == "__main__":
    screenshot(Path(sys.argv[1]))
