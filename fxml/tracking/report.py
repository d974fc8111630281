"""One self-contained HTML page comparing MLflow runs side by side.

Everything is inline (CSS, a few lines of JavaScript for sorting, PNG plots as data URIs): the file
opens offline, can be mailed or attached, and never fetches anything.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import mlflow
import numpy as np
import pandas as pd

# Figures drawn without pyplot need no backend and are freed with their last reference
from matplotlib.figure import Figure
from mlflow.entities import Run

from fxml.errors import FxmlError
from fxml.scoring.diagnostics import rank_correlation_by_era
from fxml.scoring.eras import encode_eras

# The summary columns of the table, in order; a column no run logged is left out.
TABLE_METRICS = (
    "corr_mean", "corr_sharpe", "corr_max_drawdown", "mmc_mean", "mmc_sharpe", "mpc_mean",
    "mpc_sharpe", "bmc_mean", "fnc_mean", "payout_mean", "payout_apy", "payout_calmar",
    "tb200_corr_mean", "meta_model_rank_corr_mean", "exposure_dissimilarity_mean",
    "feature_exposure_max", "n_eras",
)
# the order of the runs: the validation CORR sharpe on the main target (a grid's objective too)
RANKED_BY = "corr_sharpe"
CUMULATIVE = (("corr", "-"), ("mmc", "--"), ("mpc", ":"))
LIVE = ("live_corr", "live_mmc", "live_tc", "live_payout")
PREDICTIONS = "predictions/validation.parquet"


@dataclass
class RunData:
    """What the report shows of one run."""

    run: Run
    per_era: dict[str, pd.Series] = field(default_factory=dict)  # metric -> value by era
    live: dict[str, pd.Series] = field(default_factory=dict)  # live metric -> value by round

    @property
    def label(self) -> str:
        name = self.run.info.run_name or "run"
        return f"{name} ({self.run.info.run_id[:8]})"


def select_runs(client: mlflow.MlflowClient, experiment: str | None, sweep: str | None,
                runs: list[str] | None, max_runs: int) -> list[Run]:
    """The runs to compare: given ids, the child runs of a sweep's parent run, or the finished
    runs of an experiment (newest first); exactly one of the three."""
    given = [name for name, value in (("experiment", experiment), ("sweep", sweep), ("runs", runs))
             if value]
    if len(given) != 1:
        raise FxmlError("give exactly one of experiment=<name>, sweep=<parent run id> or "
                        f"runs=<id>,<id> (got {', '.join(given) or 'none'})")
    if runs:
        found = []
        for run_id in runs:
            try:
                found.append(client.get_run(run_id))
            except mlflow.exceptions.MlflowException:
                raise FxmlError(f"runs: no MLflow run {run_id}") from None
        return found
    if sweep:
        try:
            parent = client.get_run(sweep)
        except mlflow.exceptions.MlflowException:
            raise FxmlError(f"sweep={sweep} is not an MLflow run id (the sweep's parent run)") from None
        found = client.search_runs([parent.info.experiment_id],
                                   f"tags.mlflow.parentRunId = '{sweep}'",
                                   order_by=["attributes.start_time ASC"], max_results=max_runs)
        if not found:
            raise FxmlError(f"sweep={sweep} has no child runs")
        return list(found)
    assert experiment is not None
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise FxmlError(f"experiment={experiment} does not exist in this MLflow store")
    found = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'",
                               order_by=["attributes.start_time DESC"], max_results=max_runs)
    found = [run for run in found if "corr_mean" in run.data.metrics]
    if not found:
        raise FxmlError(f"experiment={experiment} has no finished scored runs")
    return found


def load_run(client: mlflow.MlflowClient, run: Run) -> RunData:
    data = RunData(run)
    for metric, _ in CUMULATIVE:
        data.per_era[metric] = series(client, run.info.run_id, f"era_{metric}")
    for metric in LIVE:
        if metric in run.data.metrics:
            data.live[metric] = series(client, run.info.run_id, metric)
    return data


def series(client: mlflow.MlflowClient, run_id: str, key: str) -> pd.Series:
    values = {m.step: m.value for m in client.get_metric_history(run_id, key)}
    return pd.Series(values, dtype=float).sort_index()


def logged_predictions(client: mlflow.MlflowClient, run: Run) -> pd.DataFrame | None:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run.info.run_id, PREDICTIONS, tmp)
        except (OSError, mlflow.exceptions.MlflowException):
            return None
        frame = pd.read_parquet(path, columns=["id", "era", "prediction"])
    return frame.set_index("id")


def prediction_correlations(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per-era Spearman correlation of every pair of runs' validation predictions over their
    shared ids: rows are eras, columns ``"a | b"``."""
    pairs = {}
    for (a, left), (b, right) in itertools.combinations(frames.items(), 2):
        joined = left.join(right["prediction"].rename("other"), how="inner")
        if joined.empty:
            continue
        codes = encode_eras(joined["era"].to_numpy().astype(np.int64))
        values = rank_correlation_by_era(joined["prediction"].to_numpy(np.float64),
                                         joined["other"].to_numpy(np.float64), codes.codes,
                                         codes.n_eras)
        pairs[f"{a} | {b}"] = pd.Series(values, index=codes.labels)
    return pd.DataFrame(pairs)


def figure_uri(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def cumulative_figure(runs: list[RunData]) -> str | None:
    """Cumulative per-era CORR (solid), MMC (dashed) and MPC (dotted) of every run, one colour per
    run, on one plot."""
    figure = Figure(figsize=(10, 4.8))
    axes = figure.subplots()
    drawn = False
    colours = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, data in enumerate(runs):
        for metric, style in CUMULATIVE:
            values = data.per_era.get(metric)
            if values is None or values.empty:
                continue
            axes.plot(values.index, values.cumsum(), style, color=colours[index % len(colours)],
                      label=f"{data.label} {metric.upper()}")
            drawn = True
    if not drawn:
        return None
    axes.axhline(0, color="grey", linewidth=0.6)
    axes.set_xlabel("era")
    axes.set_ylabel("cumulative score")
    axes.legend(fontsize=7, ncol=2)
    axes.grid(alpha=0.3)
    return figure_uri(figure)


def correlation_figure(correlations: pd.DataFrame) -> str | None:
    if correlations.empty:
        return None
    figure = Figure(figsize=(10, 3.6))
    axes = figure.subplots()
    for column in correlations.columns:
        axes.plot(correlations.index, correlations[column], marker=".", label=column)
    axes.set_xlabel("era")
    axes.set_ylabel("Spearman correlation")
    axes.legend(fontsize=7)
    axes.grid(alpha=0.3)
    return figure_uri(figure)


def live_figure(runs: list[RunData]) -> str | None:
    with_live = [data for data in runs if data.live]
    if not with_live:
        return None
    figure = Figure(figsize=(10, 3.6))
    axes = figure.subplots()
    for data in with_live:
        for metric, values in data.live.items():
            if metric != "live_payout":
                axes.plot(values.index, values.cumsum(), marker="o", label=f"{data.label} {metric}")
    axes.set_xlabel("round")
    axes.set_ylabel("cumulative live score")
    axes.legend(fontsize=7)
    axes.grid(alpha=0.3)
    return figure_uri(figure)


def metric_table(runs: list[RunData]) -> tuple[list[str], list[list[str]]]:
    present = [m for m in TABLE_METRICS if any(m in d.run.data.metrics for d in runs)]
    extra = sorted({m for d in runs for m in d.run.data.metrics
                    if m.startswith("tb") and m.endswith("_corr_mean") and m not in present})
    live = [f"{m} (mean)" for m in LIVE if any(m in d.live for d in runs)]
    headers = ["run", "model", "trained on", *present, *extra, *live]
    rows = []
    for data in runs:
        metrics = data.run.data.metrics
        tags = data.run.data.tags
        # an ensemble's members may each have learnt their own target
        row = [data.label, tags.get("model_family", ""), tags.get("member_targets") or tags.get("target", "")]
        row += [_number(metrics.get(m), 0 if m == "n_eras" else 4) for m in (*present, *extra)]
        row += [_number(data.live[m.split(" ")[0]].mean()) if m.split(" ")[0] in data.live else ""
                for m in live]
        rows.append(row)
    return headers, rows


def _number(value: float | None, digits: int = 4) -> str:
    if value is None or not np.isfinite(value):
        return ""
    return f"{value:.{digits}f}"


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}p.note{color:#555;font-size:13px}
table{border-collapse:collapse;font-size:13px}th,td{padding:4px 8px;border-bottom:1px solid #ddd;
text-align:right}th{background:#f0f3f7;cursor:pointer;position:sticky;top:0}td:first-child,
th:first-child,td:nth-child(2),th:nth-child(2){text-align:left}tr:hover td{background:#fafbe8}
div.wide{overflow-x:auto;max-width:100%}td:first-child{white-space:nowrap}
th.asc:after{content:" \\25B2"}th.desc:after{content:" \\25BC"}img{max-width:100%;border:1px solid #eee}
"""
SORT_SCRIPT = """
document.querySelectorAll('table.sortable th').forEach(function(th, column){
  th.addEventListener('click', function(){
    var table = th.closest('table'), body = table.tBodies[0];
    var descending = !th.classList.contains('desc');
    table.querySelectorAll('th').forEach(function(h){h.classList.remove('asc','desc');});
    th.classList.add(descending ? 'desc' : 'asc');
    var rows = Array.from(body.rows);
    rows.sort(function(a, b){
      var x = a.cells[column].textContent, y = b.cells[column].textContent;
      var p = parseFloat(x), q = parseFloat(y);
      var order = (isNaN(p) || isNaN(q)) ? x.localeCompare(y) : p - q;
      if (x === '') order = 1; else if (y === '') order = -1;
      return descending ? -order : order;
    });
    rows.forEach(function(row){ body.appendChild(row); });
  });
});
"""


def render_html(title: str, runs: list[RunData], correlations: pd.DataFrame) -> str:
    headers, rows = metric_table(runs)
    escape = html.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{escape(title)}</title>",
             f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>",
             f"<p class='note'>{len(runs)} run(s), ranked by {RANKED_BY}. Validation metrics per "
             "era on the main target (whatever target a model trained on), summarised over eras. "
             "MPC is the meta-portfolio contribution in a local portfolio of the model and the "
             "release's benchmark models: not Numerai's TC (live_tc is Numerai's, where present). "
             "Click a column to sort.</p>",
             "<h2>Metrics</h2><div class='wide'><table class='sortable'><thead><tr>",
             "".join(f"<th>{escape(h)}</th>" for h in headers), "</tr></thead><tbody>"]
    parts += ["<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows]
    parts.append("</tbody></table></div>")
    cumulative = cumulative_figure(runs)
    if cumulative:
        parts.append("<h2>Cumulative per-era CORR (solid), MMC (dashed) and MPC (dotted)</h2>"
                     f"<img alt='cumulative scores' src='{cumulative}'>")
    if len(runs) > 1:
        parts.append("<h2>Per-era correlation between the runs' validation predictions</h2>")
        figure = correlation_figure(correlations)
        if figure:
            summary = correlations.agg(["mean", "min", "max"]).T
            parts.append(f"<img alt='prediction correlations' src='{figure}'>"
                         "<table><thead><tr><th>pair</th><th>mean</th><th>min</th><th>max</th>"
                         "</tr></thead><tbody>")
            parts += [f"<tr><td>{escape(pair)}</td>" + "".join(f"<td>{_number(v)}</td>" for v in row)
                      + "</tr>" for pair, row in summary.iterrows()]
            parts.append("</tbody></table>")
        else:
            parts.append("<p class='note'>No logged validation predictions to compare.</p>")
    live = live_figure(runs)
    if live:
        parts.append("<h2>Live scores from Numerai (per round, cumulative)</h2>"
                     f"<img alt='live scores' src='{live}'>")
    parts.append(f"<script>{SORT_SCRIPT}</script></body></html>")
    return "".join(parts)


def ranked(runs: list[Run]) -> list[Run]:
    """Best first by RANKED_BY (runs without it last, in the order given)."""
    def score(run: Run) -> float:
        value = run.data.metrics.get(RANKED_BY)
        return -value if value is not None and np.isfinite(value) else np.inf
    return sorted(runs, key=score)


def write_report(client: mlflow.MlflowClient, runs: list[Run], title: str, output: Path) -> Path:
    loaded = [load_run(client, run) for run in ranked(runs)]
    frames = {}
    for data in loaded:
        frame = logged_predictions(client, data.run)
        if frame is not None:
            frames[data.label] = frame
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render_html(title, loaded, prediction_correlations(frames)), encoding="utf-8")
    return output
