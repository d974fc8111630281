"""``python -m fxml.report``: a self-contained HTML comparison, opened in a real headless browser.

Most pages are built from runs made directly with MLflow's client (metrics, per-era histories,
cv fold runs, a sweep's parent and trials), not trained: 10, 40 and 200 top-level runs."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from PIL import Image

from tests.conftest import Workspace, assert_one_line_error
from tests.helpers import chromium

PLOTLY_BLUE = np.array([99, 110, 250])  # the report's first run colour (#636efa): the plots were drawn
ERAS = range(575, 587)
FAMILIES = ("lgbm", "ridge", "xgb", "mlp")
TARGETS = ("cyrus", "ralph", "victor")


def report(ws: Workspace, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fxml.report", *args], cwd=ws.root, env=ws.env(),
                          capture_output=True, text=True, timeout=600)


def screenshot(page: Path, image: Path, width: int = 1280, height: int = 1600) -> np.ndarray:
    browser = chromium()
    # the virtual time lets the page's scripts (plotly.js) draw before the picture is taken
    result = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                             "--hide-scrollbars", f"--screenshot={image}",
                             f"--window-size={width},{height}", "--virtual-time-budget=5000",
                             page.as_uri()], capture_output=True, text=True, timeout=120)
    assert image.is_file(), result.stderr
    return np.asarray(Image.open(image).convert("RGB"), dtype=np.int16)


def coloured(pixels: np.ndarray, colour: np.ndarray) -> int:
    return int((np.abs(pixels - colour).sum(axis=2) < 40).sum())


# --- runs made directly in a store -----------------------------------------------------------------


@dataclass
class Experiment:
    """What was logged, to check the page against."""

    name: str
    ranked: list[str] = field(default_factory=list)  # top-level runs and the sweep's best trial, best first
    names: dict[str, str] = field(default_factory=dict)  # run id -> run name
    folds: list[str] = field(default_factory=list)
    study: str = ""
    parent: str = ""
    trials: list[str] = field(default_factory=list)  # best objective first; the failed one last
    searched: dict[str, dict[str, str]] = field(default_factory=dict)  # trial run id -> its values


def finished_run(client: Any, experiment_id: str, name: str, tags: dict[str, str],
                 metrics: dict[str, float], per_era: float | None = None, status: str = "FINISHED",
                 params: dict[str, str] | None = None) -> str:
    """One run, as fxml would leave it: summary metrics, per-era histories around ``per_era``."""
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    now = int(time.time() * 1000)
    logged = [Metric(key, value, now, 0) for key, value in metrics.items()]
    if per_era is not None:
        rng = np.random.default_rng(abs(hash(name)) % 2**32)
        for key, scale in (("era_corr", 1.0), ("era_mmc", 0.4), ("era_mpc", 0.2)):
            logged += [Metric(key, float(value), now, era) for era, value in
                       zip(ERAS, rng.normal(per_era * scale, 0.02, len(ERAS)), strict=True)]
    client.log_batch(run.info.run_id, metrics=logged,
                     params=[Param(key, value) for key, value in (params or {}).items()])
    client.set_terminated(run.info.run_id, status)
    return str(run.info.run_id)


def scores(sharpe: float) -> dict[str, float]:
    return {"corr_mean": sharpe / 50, "corr_sharpe": sharpe, "mmc_mean": sharpe / 200,
            "mmc_sharpe": sharpe / 3, "mpc_mean": sharpe / 300, "payout_apy": sharpe * 10,
            "n_eras": float(len(ERAS))}


def log_predictions(client: Any, run_id: str, signal: np.ndarray, noise: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"id": [f"n{i:05d}" for i in range(len(signal))],
                          "era": np.repeat(np.array(ERAS), len(signal) // len(ERAS)),
                          "prediction": signal + rng.normal(0, noise, len(signal))})
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "validation.parquet"
        frame.to_parquet(path)
        client.log_artifact(run_id, str(path), "predictions")


def build_experiment(uri: str, n_runs: int, predictions: int = 0) -> Experiment:
    """``n_runs`` scored top-level runs (two share a name; every 7th has three cv fold runs that
    would top the ranking if they were taken for runs) and a sweep of six trials (one failed)
    whose best trial tops it; the best ``predictions`` runs log validation predictions."""
    from fxml.tracking.stores import store_client

    client = store_client(uri)
    found = Experiment(f"many-{n_runs}", study=f"tune-{n_runs}")
    artifacts = Path(uri.removeprefix("sqlite:///")).parent / "artifacts"
    experiment_id = client.create_experiment(found.name, artifact_location=artifacts.as_uri())
    rng = np.random.default_rng(n_runs)
    sharpes = 0.1 + rng.permutation(n_runs) / n_runs
    top: dict[str, float] = {}
    for i, sharpe in enumerate(sharpes):
        family, target = FAMILIES[i % len(FAMILIES)], TARGETS[i % len(TARGETS)]
        name = "ridge-cyrus-shared" if i < 2 else f"{family}-{target}-{i:03d}"
        run_id = finished_run(client, experiment_id, name, {"model_family": family, "target": target},
                              scores(sharpe), per_era=sharpe / 50)
        top[run_id], found.names[run_id] = sharpe, name
        if i % 7 == 0:
            found.folds += [finished_run(client, experiment_id, f"{name}-fold{k}",
                                         {"mlflow.parentRunId": run_id, "fxml.role": "cv_fold",
                                          "fxml.fold": str(k - 1)},
                                         {"corr_mean": 1.0, "corr_sharpe": 50.0 + k})
                            for k in (1, 2, 3)]
    parent = client.create_run(experiment_id, run_name=f"study {found.study}",
                               tags={"fxml.role": "sweep", "fxml.study": found.study,
                                     "objective": "corr_sharpe"})
    found.parent = str(parent.info.run_id)
    trial_values: dict[str, float] = {}
    for number, sharpe in enumerate((2.0, 5.0, 3.0, 1.5, 4.0)):
        values = {"model.learning_rate": str([0.01, 0.02, 0.05, 0.1, 0.2][number]),
                  "model.num_leaves": str([15, 31, 63, 127, 255][number])}
        overrides = " ".join(f"{k}={v}" for k, v in values.items()) + \
            f" sweep.parent_run_id={found.parent} sweep.trial_number={number}"
        run_id = finished_run(client, experiment_id, f"lgbm-cyrus-{found.study}-trial{number}",
                              {"mlflow.parentRunId": found.parent, "fxml.trial": str(number),
                               "fxml.overrides": overrides, "model_family": "lgbm", "target": "cyrus"},
                              scores(sharpe), per_era=sharpe / 50,
                              params={**values, "model.n_estimators": "200"})
        found.searched[run_id], trial_values[run_id] = values, sharpe
    failed = finished_run(client, experiment_id, f"lgbm-cyrus-{found.study}-trial5",
                          {"mlflow.parentRunId": found.parent, "fxml.trial": "5",
                           "fxml.overrides": f"model.learning_rate=0.3 model.num_leaves=7 "
                                             f"sweep.parent_run_id={found.parent}",
                           "error": "ValueError: boom"}, {}, status="FAILED")
    found.searched[failed] = {"model.learning_rate": "0.3", "model.num_leaves": "7"}
    found.trials = [*sorted(trial_values, key=lambda run: -trial_values[run]), failed]
    best = found.trials[0]
    client.log_batch(found.parent, metrics=[Metric("best_value", 5.0, 0, 0)])
    for key, value in {"best_run_id": best, "best_trial": "1", "best.model.learning_rate": "0.02",
                       "best.model.num_leaves": "31"}.items():
        client.set_tag(found.parent, key, value)
    client.set_terminated(found.parent, "FINISHED")
    found.ranked = [best, *sorted(top, key=lambda run: -top[run])]
    signal = np.random.default_rng(0).normal(0, 1, 60 * len(ERAS))
    for k, run_id in enumerate(found.ranked[:predictions]):
        log_predictions(client, run_id, signal, noise=0.3 + k * 0.3, seed=k)
    return found


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A store in memory-backed storage where there is some (/dev/shm): SQLite's commits to a busy
    disk would take most of these tests' time."""
    shared = Path("/dev/shm")
    if not (shared.is_dir() and os.access(shared, os.W_OK)):
        yield f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"
        return
    folder = Path(tempfile.mkdtemp(prefix="fxml-report-", dir=shared))
    try:
        yield f"sqlite:///{folder}/mlflow.db"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def experiments(store: str) -> dict[int, Experiment]:
    """Three experiments in one store; the best 3, 8 and 8 runs logged predictions (3: one line
    per pair, 8: a heatmap)."""
    return {n: build_experiment(store, n, predictions) for n, predictions in
            ((10, 3), (40, 8), (200, 8))}


# --- reading the page back ---------------------------------------------------------------------------


class Tables(HTMLParser):
    """Every table's header cells and body rows, as text."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[tuple[list[str], list[list[str]]]] = []
        self.cell: list[str] | None = None
        self.row: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append(([], []))
        elif tag == "tr":
            self.row = []
        elif tag in ("td", "th"):
            self.cell = []

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.cell is not None:
            self.row.append("".join(self.cell))
            self.cell = None
        elif tag == "tr" and self.tables:
            headers, rows = self.tables[-1]
            if headers:
                rows.append(self.row)
            else:
                headers.extend(self.row)


def tables(page: str) -> list[tuple[list[str], list[list[str]]]]:
    parser = Tables()
    parser.feed(page)
    return parser.tables


def array(value: Any) -> np.ndarray:
    """A figure's array as Plotly writes it: a list, or typed binary data in base64."""
    if isinstance(value, dict):
        shape = [int(n) for n in str(value.get("shape", "-1")).split(",")]
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).reshape(shape)
    return np.asarray(value, dtype=float)


def figures(page: str) -> list[tuple[list[dict[str, Any]], dict[str, Any]]]:
    """Each ``Plotly.newPlot(id, data, layout, config)`` call's data and layout."""
    decoder = json.JSONDecoder()
    found = []
    for call in re.finditer(r"Plotly\.newPlot\(\s*\"[^\"]+\",\s*", page):
        data, end = decoder.raw_decode(page, call.end())
        layout, _ = decoder.raw_decode(page, re.compile(r",\s*").match(page, end).end())  # type: ignore[union-attr]
        found.append((data, layout))
    return found


def outside_plotly_bundle(page: str) -> str:
    """The page less plotly.js itself (whose source names web addresses in strings)."""
    return re.sub(r"<script>/\*\*\s*\* plotly\.js.*?</script>", "", page,
                  flags=re.DOTALL)


def assert_self_contained(page: str) -> None:
    """Nothing is fetched: no external script, style, image or link; plotly.js inline once."""
    rest = outside_plotly_bundle(page)
    assert len(rest) < len(page) - 1_000_000  # the bundle was there and was cut out
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", rest)
    assert not re.search(r"<script[^>]*\bsrc=", page) and "<link" not in rest
    assert page.count("* plotly.js v") == 1


def assert_legends_beside_plots(page: str) -> None:
    for data, layout in figures(page):
        if any(trace.get("showlegend", True) and trace.get("type") == "scatter" for trace in data):
            legend = layout["legend"]
            assert legend["x"] > 1 and legend["xanchor"] == "left", legend


@pytest.fixture(scope="module")
def two_runs(workspace: Workspace) -> list[str]:
    ids = []
    for name, overrides in (("report-ridge", ("model=ridge",)),
                            ("report-lgbm", ("model.n_estimators=30",))):
        result = workspace.train(*overrides, f"tracking.run_name={name}", "tracking.log_model=false")
        assert result.returncode == 0, result.stderr
        ids.append(next(r.info.run_id for r in workspace.runs() if r.info.run_name == name))
    return ids


@pytest.mark.slow
def test_report_is_self_contained_and_renders_in_a_browser(workspace: Workspace, two_runs,
                                                            tmp_path: Path) -> None:
    file = tmp_path / "compare.html"
    result = report(workspace, f"runs={two_runs[0]},{two_runs[1]}", f"file={file}")
    assert result.returncode == 0, result.stderr
    assert f"wrote {file}" in result.stdout
    page = file.read_text()
    assert_self_contained(page)
    assert len(figures(page)) == 2  # cumulative scores, prediction correlations (one pair: a line)
    assert_legends_beside_plots(page)
    table = metrics_table(page)
    # names alone: they tell the runs apart
    assert sorted(column(table, "run")) == ["report-lgbm", "report-ridge"]
    for name in ("corr_mean", "mmc_mean", "mpc_mean", "payout_apy", "exposure_dissimilarity_mean"):
        assert name in table[0]
    assert "table.sortable" in page and "addEventListener('click'" in page
    assert "not Numerai's TC" in page

    pixels = screenshot(file, tmp_path / "compare.png")
    assert pixels.shape[:2] == (1600, 1280)
    assert pixels.std() > 20  # not a blank page
    not_white = (pixels < 235).any(axis=2).mean()
    assert not_white > 0.03, not_white
    assert coloured(pixels, PLOTLY_BLUE) > 500  # plotly.js ran and drew the first run


def metrics_table(page: str) -> tuple[list[str], list[list[str]]]:
    (found,) = [table for table in tables(page) if table[0][:2] == ["run", "model"]]
    return found


def column(table: tuple[list[str], list[list[str]]], name: str) -> list[str]:
    headers, rows = table
    return [row[headers.index(name)] for row in rows]


def expected_labels(found: Experiment, runs: list[str]) -> list[str]:
    names = {**found.names, found.trials[0]: f"lgbm-cyrus-{found.study}-trial1"}
    return [f"{names[run]} ({run[:8]})" if names[run] == "ridge-cyrus-shared" else names[run]
            for run in runs]


@pytest.mark.parametrize("n_runs", [10, 40, 200])
def test_report_of_many_runs_stays_readable(workspace: Workspace, store: str,
                                            experiments: dict[int, Experiment], n_runs: int,
                                            tmp_path: Path) -> None:
    """Top-level runs only (a sweep by its best trial, cv folds counted under their run), best
    corr_sharpe first; legends beside the plots; the best 10 runs drawn, the rest in the legend."""
    found = experiments[n_runs]
    file = tmp_path / f"report-{n_runs}.html"
    result = workspace.command("fxml.report", f"experiment={found.name}", f"file={file}", "max_runs=500",
                               f"tracking_uri={store}")
    assert result.returncode == 0, result.stderr
    assert result.value == {"file": str(file), "runs": found.ranked,
                            "title": f"fxml experiment {found.name}: {n_runs + 1} runs"}
    page = file.read_text()
    assert_self_contained(page)
    assert f"<h1>fxml experiment {found.name}: {n_runs + 1} runs</h1>" in page

    table = metrics_table(page)
    labels = expected_labels(found, found.ranked)
    assert column(table, "run") == labels
    sharpes = [float(value) for value in column(table, "corr_sharpe")]
    assert sharpes == sorted(sharpes, reverse=True) and sharpes[0] == 5.0
    assert column(table, "sweep")[:2] == [f"best of {found.study} (6 trials)", ""]
    folds = dict(zip(column(table, "run"), column(table, "cv folds"), strict=True))
    assert {label for label, n in folds.items() if n} == set(expected_labels(
        found, [run for run in found.ranked[1:] if list(found.names).index(run) % 7 == 0]))
    assert set(folds.values()) == {"3", ""}
    shown = outside_plotly_bundle(page)
    assert "-fold1" not in shown and "-trial0" not in shown  # folds and the other trials: not runs

    assert_legends_beside_plots(page)
    (cumulative_data, _), (correlation_data, _) = figures(page)[:2]
    entries = [trace for trace in cumulative_data if trace["showlegend"]]
    assert [trace["name"] for trace in entries] == [label[:35] + "…" if len(label) > 36 else label
                                                   for label in labels]
    assert [trace.get("visible", True) for trace in entries] == \
        [True] * 10 + ["legendonly"] * (n_runs + 1 - 10)
    if n_runs == 10:  # three runs with predictions: a line per pair
        assert [trace["type"] for trace in correlation_data] == ["scatter"] * 3
    else:  # eight: a heatmap of the pairs' mean correlation, the best runs (least noise) closest
        (heatmap,) = correlation_data
        matrix = array(heatmap["z"])
        assert matrix.shape == (8, 8) and np.isnan(np.diag(matrix)).all()
        np.testing.assert_allclose(matrix, matrix.T)
        assert heatmap["y"] == labels[:8]
        assert matrix[0, 1] > matrix[0, 7] > 0

    pixels = screenshot(file, tmp_path / f"report-{n_runs}.png", width=1400, height=2000)
    assert pixels.shape[:2] == (2000, 1400)
    assert coloured(pixels, PLOTLY_BLUE) > 500  # plotly.js ran and drew the best run


def test_sweep_report_shows_the_searched_settings(workspace: Workspace, store: str,
                                                  experiments: dict[int, Experiment],
                                                  tmp_path: Path) -> None:
    """``sweep=`` takes the study's name (as the sweep prints it) or its parent run's id: the same
    trials, best objective first, with the values the search tried."""
    found = experiments[10]
    by_name = workspace.command("fxml.report", f"sweep={found.study}", f"file={tmp_path / 'name.html'}",
                                f"tracking_uri={store}")
    by_id = workspace.command("fxml.report", f"sweep={found.parent}", f"file={tmp_path / 'id.html'}",
                              f"tracking_uri={store}")
    assert by_name.returncode == by_id.returncode == 0, by_name.stderr + by_id.stderr
    title = f"fxml sweep {found.study}: 6 trials, objective corr_sharpe"
    assert by_name.value["runs"] == by_id.value["runs"] == found.trials[:-1]
    assert by_name.value["title"] == by_id.value["title"] == title
    page = (tmp_path / "name.html").read_text()
    assert f"<h1>{title}</h1>" in page and found.parent not in outside_plotly_bundle(page)

    (headers, rows), metrics = tables(page)[0], metrics_table(page)
    assert headers == ["trial", "run", "status", "model.learning_rate", "model.num_leaves", "corr_sharpe"]
    assert [row[3:5] for row in rows] == [[found.searched[run]["model.learning_rate"],
                                           found.searched[run]["model.num_leaves"]] for run in found.trials]
    assert [row[5] for row in rows] == ["5.0000", "4.0000", "3.0000", "2.0000", "1.5000", ""]
    assert [row[2] for row in rows] == ["FINISHED"] * 5 + ["FAILED"]
    assert [row[0] for row in rows] == ["1", "4", "2", "0", "3", "5"]
    assert column(metrics, "objective") == ["5.0000", "4.0000", "3.0000", "2.0000", "1.5000"]

    # nested=true: the experiment's report takes every scored trial as a run; cv folds still not
    nested = workspace.command("fxml.report", f"experiment={found.name}", "nested=true",
                               f"file={tmp_path / 'nested.html'}", f"tracking_uri={store}")
    assert nested.returncode == 0, nested.stderr
    assert set(nested.value["runs"]) == set(found.ranked) | set(found.trials[:-1])
    assert not set(nested.value["runs"]) & set(found.folds)


def test_report_needs_exactly_one_selection(workspace: Workspace, store: str) -> None:
    """The lines the command prints (in-process: the page test above runs the command itself)."""
    def report_here(*args: str):  # type: ignore[no-untyped-def]
        return workspace.command("fxml.report", *args, f"tracking_uri={store}")

    assert_one_line_error(report_here(), "give exactly one of experiment=")
    assert_one_line_error(report_here("experiment=nope"), "experiment=nope does not exist")
    assert_one_line_error(report_here("runs=[deadbeef]"), "no MLflow run deadbeef")
    assert_one_line_error(report_here("sweep=no-such-study"), "sweep=no-such-study: no sweep's parent run")
    assert_one_line_error(report_here("experiment=fxml", "file=report.htm"), "file", "must end with .html")
