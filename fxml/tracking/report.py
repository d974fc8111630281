"""One self-contained HTML page comparing MLflow runs side by side.

Everything is inline (CSS, the sorting script, plotly.js once and the figures' data): the file opens
offline, can be mailed or attached, and never fetches anything. The runs are an experiment's
top-level runs (a sweep stands there as its best trial; cv folds are counted under their run), a
sweep's trials, or runs named by id; best first. Plots keep their legends beside them and start
with the best few runs shown, so a page of 200 runs stays readable.
"""

from __future__ import annotations

import html
import itertools
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import plotly.graph_objects as go  # type: ignore[import-untyped]
from mlflow.entities import Run

from fxml.errors import FxmlError
from fxml.scoring.diagnostics import rank_correlation_by_era
from fxml.scoring.eras import encode_eras
from fxml.tracking.mlflow_run import JOB_TAG, OVERRIDES_TAG, TRIAL_TAG

# The summary columns of the table, in order; a column no run logged is left out.
TABLE_METRICS = (
    "corr_mean", "corr_sharpe", "corr_max_drawdown", "mmc_mean", "mmc_sharpe", "mpc_mean",
    "mpc_sharpe", "bmc_mean", "fnc_mean", "payout_mean", "payout_apy", "payout_calmar",
    "tb200_corr_mean", "meta_model_rank_corr_mean", "exposure_dissimilarity_mean",
    "feature_exposure_max", "cv_corr_mean", "cv_corr_sharpe", "cv_mmc_mean", "n_eras",
    # what the run cost (fxml.tracking.costs)
    "fit_seconds", "peak_rss_gib", "peak_gpu_memory_gib",
)
# the order of the runs: the validation CORR sharpe on the main target (a grid's objective too)
RANKED_BY = "corr_sharpe"
CUMULATIVE = (("corr", "solid"), ("mmc", "dash"), ("mpc", "dot"))
LIVE = ("live_corr", "live_mmc", "live_tc", "live_payout")
PREDICTIONS = "predictions/validation.parquet"
PARENT_TAG = "mlflow.parentRunId"
ROLE_TAG = "fxml.role"  # "sweep" on a sweep's parent run, "cv_fold" on a fold's run
SHOWN_AT_FIRST = 10  # runs drawn when the page opens; the others wait in the legend
CORRELATED_RUNS = 20  # the best runs, whose predictions are correlated pairwise (cost ~ n²)
PAIR_LINES_UP_TO = 5  # runs; above, the pairs become a heatmap of their mean correlation
LEGEND_CHARACTERS = 36
PALETTE = ("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880",
           "#ff97ff", "#fecb52", "#1f77b4", "#8c564b", "#7f7f7f", "#bcbd22", "#17becf", "#2ca02c")


@dataclass(frozen=True)
class SweepView:
    """A sweep's parent run as the report names and ranks its trials: the study name (a grid's
    folder), the objective's label and its value from a trial's metrics (None: not scored)."""

    parent: Run
    name: str
    objective: str
    score: Callable[[Mapping[str, float]], float | None]


@dataclass
class Selection:
    """The runs a report shows, best first, and what it says about them."""

    runs: list[Run]
    ranked_by: str
    qualified: int  # runs that could have been shown (``runs`` is the best ``max_runs`` of them)
    folds: dict[str, int] = field(default_factory=dict)  # run id -> its cv fold runs
    standing_for: dict[str, str] = field(default_factory=dict)  # best trial's run id -> its sweep
    trials: list[Run] = field(default_factory=list)  # a sweep report: every trial, any status
    scores: dict[str, float] = field(default_factory=dict)  # run id -> objective (sweep report)


@dataclass
class RunData:
    """What the report shows of one run."""

    run: Run
    label: str
    per_era: dict[str, pd.Series] = field(default_factory=dict)  # metric -> value by era
    live: dict[str, pd.Series] = field(default_factory=dict)  # live metric -> value by round

    @property
    def run_id(self) -> str:
        return str(self.run.info.run_id)


# --- which runs ----------------------------------------------------------------------------------


def all_runs(client: mlflow.MlflowClient, experiment_id: str) -> list[Run]:
    return list(client.search_runs([experiment_id], max_results=50000,
                                   order_by=["attributes.start_time ASC"]))


def is_fold(run: Run) -> bool:
    return run.data.tags.get(ROLE_TAG) == "cv_fold"


def is_sweep(run: Run) -> bool:
    return run.data.tags.get(ROLE_TAG) == "sweep"


def scored(run: Run) -> bool:
    return run.info.status == "FINISHED" and "corr_mean" in run.data.metrics


def children_of(runs: list[Run]) -> dict[str, list[Run]]:
    found: dict[str, list[Run]] = {}
    for run in runs:
        parent = run.data.tags.get(PARENT_TAG)
        if parent:
            found.setdefault(parent, []).append(run)
    return found


def fold_counts(children: dict[str, list[Run]]) -> dict[str, int]:
    counts = {parent: sum(map(is_fold, runs)) for parent, runs in children.items()}
    return {parent: n for parent, n in counts.items() if n}


def metric_rank(metric: str) -> Callable[[Run], float]:
    """Sort key: best (highest) ``metric`` first, runs without it last."""
    def key(run: Run) -> float:
        value = run.data.metrics.get(metric)
        return -value if value is not None and np.isfinite(value) else np.inf
    return key


def best_trial(parent: Run, trials: list[Run]) -> Run | None:
    """The trial the sweep recorded as its best (an Optuna search), else its best scored one."""
    candidates = [run for run in trials if scored(run)]
    recorded = parent.data.tags.get("best_run_id")
    chosen = next((run for run in candidates if run.info.run_id == recorded), None)
    return chosen or min(candidates, key=metric_rank(RANKED_BY), default=None)


def sweep_name(parent: Run) -> str:
    """The study's name, or a grid's folder (its parent run is named ``sweep <folder>``)."""
    name = parent.data.tags.get("fxml.study") or parent.info.run_name or parent.info.run_id
    return str(name).removeprefix("sweep ")


def experiment_selection(client: mlflow.MlflowClient, experiment: str, max_runs: int,
                         nested: bool = False) -> Selection:
    """An experiment's finished scored top-level runs; a sweep stands there as its best trial
    (``nested``: as all its trials); cv folds are never runs of their own."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise FxmlError(f"experiment={experiment} does not exist in this MLflow store")
    runs = all_runs(client, found.experiment_id)
    children = children_of(runs)
    chosen, standing_for = [], {}
    for run in runs:
        if is_fold(run):
            continue
        if is_sweep(run) and not nested:
            trials = [child for child in children.get(run.info.run_id, []) if not is_fold(child)]
            best = best_trial(run, trials)
            if best is not None:
                chosen.append(best)
                standing_for[best.info.run_id] = f"best of {sweep_name(run)} ({len(trials)} trials)"
        elif scored(run) and (nested or PARENT_TAG not in run.data.tags):
            chosen.append(run)
    if not chosen:
        raise FxmlError(f"experiment={experiment} has no finished scored runs")
    ranked = sorted(chosen, key=metric_rank(RANKED_BY))
    return Selection(ranked[:max_runs], RANKED_BY, len(ranked), fold_counts(children), standing_for)


def sweep_selection(client: mlflow.MlflowClient, sweep: SweepView, max_runs: int) -> Selection:
    """A sweep's trials: every one in the trials table, the scored ones (best objective first)
    compared in the metrics table and plots."""
    runs = all_runs(client, sweep.parent.info.experiment_id)
    children = children_of(runs)
    trials = [run for run in children.get(sweep.parent.info.run_id, []) if not is_fold(run)]
    if not trials:
        raise FxmlError(f"sweep {sweep.name} has no trial runs (parent run {sweep.parent.info.run_id})")
    scores = {run.info.run_id: value for run in trials if run.info.status == "FINISHED"
              and (value := sweep.score(run.data.metrics)) is not None and np.isfinite(value)}
    sign = 1.0 if maximises(sweep.parent, list(scores.values())) else -1.0
    order = sorted(trials, key=lambda run: (-sign * scores.get(run.info.run_id, -sign * np.inf),
                                            trial_number(run)))
    compared = [run for run in order if run.info.run_id in scores and scored(run)]
    return Selection(compared[:max_runs], sweep.objective, len(compared), fold_counts(children),
                     trials=order, scores=scores)


def maximises(parent: Run, values: list[float]) -> bool:
    """Whether the sweep maximised its objective: the recorded best value is the lowest of the
    trials' values (and not also the highest) only when it minimised."""
    best = parent.data.metrics.get("best_value")
    if best is None or len(values) < 2 or min(values) == max(values):
        return True
    return not np.isclose(best, min(values))


def trial_number(run: Run) -> int:
    tags = run.data.tags
    number = tags.get(TRIAL_TAG, tags.get(JOB_TAG, ""))
    return int(number) if str(number).isdigit() else 1 << 30


def given_selection(client: mlflow.MlflowClient, run_ids: list[str]) -> Selection:
    runs = []
    for run_id in run_ids:
        try:
            runs.append(client.get_run(run_id))
        except mlflow.exceptions.MlflowException:
            raise FxmlError(f"runs: no MLflow run {run_id}") from None
    ranked = sorted(runs, key=metric_rank(RANKED_BY))
    return Selection(ranked, RANKED_BY, len(ranked))


# --- what is shown of them -----------------------------------------------------------------------


def run_labels(runs: list[Run]) -> dict[str, str]:
    """Each run's name; the start of its id only where two shown runs share a name."""
    names = {run.info.run_id: run.info.run_name or run.info.run_id[:8] for run in runs}
    repeated = Counter(names.values())
    return {run_id: f"{name} ({run_id[:8]})" if repeated[name] > 1 else name
            for run_id, name in names.items()}


def load_run(client: mlflow.MlflowClient, run: Run, label: str) -> RunData:
    data = RunData(run, label)
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
    shared ids: rows are eras, columns ``(a, b)`` pairs of labels."""
    pairs = {}
    for (a, left), (b, right) in itertools.combinations(frames.items(), 2):
        joined = left.join(right["prediction"].rename("other"), how="inner")
        if joined.empty:
            continue
        codes = encode_eras(joined["era"].to_numpy().astype(np.int64))
        values = rank_correlation_by_era(joined["prediction"].to_numpy(np.float64),
                                         joined["other"].to_numpy(np.float64), codes.codes,
                                         codes.n_eras)
        pairs[(a, b)] = pd.Series(values, index=codes.labels)
    return pd.DataFrame(pairs)


def short(label: str) -> str:
    return label if len(label) <= LEGEND_CHARACTERS else label[: LEGEND_CHARACTERS - 1] + "…"


def colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def legend_beside() -> dict[str, Any]:
    """A legend right of the plotting area (never over it): Plotly widens the right margin to fit
    it and scrolls it when it is taller than the plot."""
    return {"x": 1.02, "xanchor": "left", "y": 1.0, "yanchor": "top", "font": {"size": 11},
            "groupclick": "togglegroup", "itemclick": "toggle", "itemdoubleclick": "toggleothers"}


def styled(figure: go.Figure, x_title: str, y_title: str, height: int = 520) -> go.Figure:
    figure.update_layout(template="plotly_white", height=height, legend=legend_beside(),
                         margin={"l": 60, "r": 20, "t": 20, "b": 50}, hovermode="closest",
                         xaxis_title=x_title, yaxis_title=y_title)
    return figure


def cumulative_figure(runs: list[RunData]) -> go.Figure | None:
    """Cumulative per-era CORR (solid), MMC (dashed) and MPC (dotted), one colour and one legend
    entry per run; the best SHOWN_AT_FIRST runs drawn, the others a click away."""
    figure = go.Figure()
    for index, data in enumerate(runs):
        first = True
        for metric, dash in CUMULATIVE:
            values = data.per_era.get(metric)
            if values is None or values.empty:
                continue
            figure.add_trace(go.Scatter(
                x=values.index, y=values.cumsum(), mode="lines", name=short(data.label),
                legendgroup=data.run_id, showlegend=first, line={"color": colour(index), "dash": dash},
                visible=True if index < SHOWN_AT_FIRST else "legendonly",
                hovertemplate=f"{html.escape(data.label)} {metric.upper()}<br>era %{{x}}: %{{y:.4f}}"
                              "<extra></extra>"))
            first = False
    if not figure.data:
        return None
    figure.add_hline(y=0, line={"color": "grey", "width": 1})
    return styled(figure, "era", "cumulative score")


def correlation_figure(correlations: pd.DataFrame, labels: list[str]) -> go.Figure | None:
    """A line per pair of runs for a few runs; for more, a heatmap of each pair's mean per-era
    correlation (a run against itself left blank)."""
    if correlations.empty:
        return None
    if len(labels) <= PAIR_LINES_UP_TO:
        figure = go.Figure()
        for (a, b), values in correlations.items():
            figure.add_trace(go.Scatter(x=values.index, y=values, mode="lines+markers",
                                        name=short(f"{a} | {b}"), hovertemplate=f"{html.escape(a)} | "
                                        f"{html.escape(b)}<br>era %{{x}}: %{{y:.4f}}<extra></extra>"))
        return styled(figure, "era", "Spearman correlation", height=400)
    means = correlations.mean()
    matrix = pd.DataFrame(np.nan, index=labels, columns=labels)
    for (a, b), value in means.items():
        matrix.loc[a, b] = matrix.loc[b, a] = value
    names = [short(label) for label in labels]
    figure = go.Figure(go.Heatmap(z=matrix.to_numpy(), x=names, y=names, colorscale="Viridis",
                                  texttemplate="%{z:.2f}", hoverongaps=False,
                                  colorbar={"title": {"text": "mean"}},
                                  hovertemplate="%{y}<br>%{x}<br>mean per-era correlation "
                                                "%{z:.4f}<extra></extra>"))
    side = 260 + 26 * len(labels)
    figure.update_layout(template="plotly_white", height=side, width=side + 260,
                         margin={"l": 20, "r": 20, "t": 20, "b": 20},
                         yaxis={"autorange": "reversed", "automargin": True},
                         xaxis={"tickangle": -45, "automargin": True})
    return figure


def live_figure(runs: list[RunData]) -> go.Figure | None:
    figure = go.Figure()
    for index, data in enumerate(runs):
        shown = [(metric, values) for metric, values in data.live.items() if metric != "live_payout"]
        for number, (metric, values) in enumerate(shown):
            figure.add_trace(go.Scatter(
                x=values.index, y=values.cumsum(), mode="lines+markers", name=short(data.label),
                legendgroup=data.run_id, showlegend=number == 0,
                line={"color": colour(index), "dash": ("solid", "dash", "dot")[number % 3]},
                visible=True if index < SHOWN_AT_FIRST else "legendonly",
                hovertemplate=f"{html.escape(data.label)} {metric}<br>round %{{x}}: %{{y:.4f}}"
                              "<extra></extra>"))
    return styled(figure, "round", "cumulative live score", height=420) if figure.data else None


def metric_table(runs: list[RunData], selection: Selection) -> tuple[list[str], list[list[str]]]:
    present = [m for m in TABLE_METRICS if any(m in d.run.data.metrics for d in runs)]
    extra = sorted({m for d in runs for m in d.run.data.metrics
                    if m.startswith("tb") and m.endswith("_corr_mean") and m not in present})
    live = [f"{m} (mean)" for m in LIVE if any(m in d.live for d in runs)]
    sweeps = ["sweep"] if any(d.run_id in selection.standing_for for d in runs) else []
    folds = ["cv folds"] if any(d.run_id in selection.folds for d in runs) else []
    objective = ["objective"] if selection.scores else []
    headers = ["run", "model", "trained on", *sweeps, *objective, *present, *extra, *live, *folds]
    rows = []
    for data in runs:
        metrics = data.run.data.metrics
        tags = data.run.data.tags
        # an ensemble's members may each have learnt their own target
        row = [data.label, tags.get("model_family", ""), tags.get("member_targets") or tags.get("target", "")]
        row += [selection.standing_for.get(data.run_id, "") for _ in sweeps]
        row += [_number(selection.scores.get(data.run_id)) for _ in objective]
        row += [_number(metrics.get(m), 0 if m == "n_eras" else 4) for m in (*present, *extra)]
        row += [_number(data.live[m.split(" ")[0]].mean()) if m.split(" ")[0] in data.live else ""
                for m in live]
        row += [str(selection.folds.get(data.run_id, "")) for _ in folds]
        rows.append(row)
    return headers, rows


def overrides_of(run: Run) -> dict[str, str]:
    """A job's command-line overrides (``key=value``), by key."""
    pairs = (token.split("=", 1) for token in run.data.tags.get(OVERRIDES_TAG, "").split() if "=" in token)
    return {key.lstrip("+~"): value for key, value in pairs}


def searched_keys(parent: Run, trials: list[Run]) -> list[str]:
    """The searched settings: those of the best trial an Optuna search recorded on its parent
    (``best.<key>`` tags), and any override whose value differs between the trials."""
    keys = [tag.removeprefix("best.") for tag in sorted(parent.data.tags) if tag.startswith("best.")]
    overrides = [overrides_of(run) for run in trials]
    for key in sorted({key for found in overrides for key in found}):
        # sweep.* is what the sweep tells each job (its trial number, parent run), never searched
        varies = len({found.get(key) for found in overrides}) > 1
        if varies and key not in keys and not key.startswith("sweep."):
            keys.append(key)
    return keys


def trial_table(sweep: SweepView, selection: Selection) -> tuple[list[str], list[list[str]]]:
    keys = searched_keys(sweep.parent, selection.trials)
    labels = run_labels(selection.trials)
    headers = ["trial", "run", "status", *keys, sweep.objective]
    rows = []
    for run in selection.trials:
        overrides = overrides_of(run)
        number = trial_number(run)
        status = "PRUNED" if "pruned" in run.data.tags else str(run.info.status)
        rows.append([str(number) if number != 1 << 30 else "", labels[run.info.run_id], status,
                     *(str(run.data.params.get(key, overrides.get(key, ""))) for key in keys),
                     _number(selection.scores.get(run.info.run_id))])
    return headers, rows


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _number(value: float | None, digits: int = 4) -> str:
    if value is None or not np.isfinite(value):
        return ""
    return f"{value:.{digits}f}"


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
p.note{color:#555;font-size:13px;max-width:1100px}
table{border-collapse:collapse;font-size:13px}th,td{padding:4px 8px;border-bottom:1px solid #ddd;
text-align:right}th{background:#f0f3f7;cursor:pointer;position:sticky;top:0}
tr:hover td{background:#fafbe8}
div.wide{overflow:auto;width:fit-content;max-width:100%;max-height:420px;border:1px solid #eee}
td:first-child{white-space:nowrap}
th.asc:after{content:" \\25B2"}th.desc:after{content:" \\25BC"}div.plot{max-width:1400px}
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


class Page:
    """The HTML being written; plotly.js goes inline with the first figure only."""

    def __init__(self, title: str) -> None:
        escape = html.escape(title)
        self.parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{escape}</title>",
                      f"<style>{STYLE}</style></head><body><h1>{escape}</h1>"]
        self.plotly_included = False
        self.tables = 0

    def add(self, text: str) -> None:
        self.parts.append(text)

    def table(self, headers: list[str], rows: list[list[str]], sortable: bool = True) -> None:
        """A table whose text columns (any cell not a number) are left-aligned, numbers right."""
        escape = html.escape
        self.tables += 1
        name = f"table{self.tables}"
        text = [j + 1 for j in range(len(headers)) if any(row[j] and not is_number(row[j]) for row in rows)]
        if text:
            cells = ",".join(f"#{name} td:nth-child({j}),#{name} th:nth-child({j})" for j in text)
            self.add(f"<style>{cells}{{text-align:left}}</style>")
        self.add(f"<div class='wide'><table id='{name}'{' class=sortable' if sortable else ''}><thead><tr>"
                 + "".join(f"<th>{escape(h)}</th>" for h in headers) + "</tr></thead><tbody>")
        self.parts += ["<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows]
        self.add("</tbody></table></div>")

    def figure(self, figure: go.Figure) -> None:
        self.add("<div class='plot'>" + figure.to_html(
            full_html=False, include_plotlyjs=not self.plotly_included,
            config={"displaylogo": False, "responsive": True}) + "</div>")
        self.plotly_included = True

    def html(self) -> str:
        return "".join([*self.parts, f"<script>{SORT_SCRIPT}</script></body></html>"])


def intro(runs: list[RunData], selection: Selection) -> str:
    shown = (f"the best {len(runs)} of {selection.qualified}" if selection.qualified > len(runs)
             else str(len(runs)))
    return (f"<p class='note'>{shown} run(s), ranked by {html.escape(selection.ranked_by)}. "
            "Validation metrics per era on the main target (whatever target a model trained on), "
            "summarised over eras. MPC is the meta-portfolio contribution in a local portfolio of "
            "the model and the release's benchmark models: not Numerai's TC (live_tc is Numerai's, "
            "where present). Click a column to sort.</p>")


def render_html(title: str, runs: list[RunData], selection: Selection, correlations: pd.DataFrame,
                correlated: list[str], sweep: SweepView | None = None) -> str:
    page = Page(title)
    page.add(intro(runs, selection))
    if sweep is not None:
        page.add(f"<h2>Trials, best {html.escape(sweep.objective)} first</h2>")
        page.table(*trial_table(sweep, selection))
    page.add("<h2>Metrics</h2>")
    page.table(*metric_table(runs, selection))
    legend_note = (f"<p class='note'>The best {SHOWN_AT_FIRST} runs are drawn; click a run in the "
                   "legend to show or hide it, double-click to see it alone.</p>"
                   if len(runs) > SHOWN_AT_FIRST else
                   "<p class='note'>Click a run in the legend to show or hide it, double-click to "
                   "see it alone.</p>")
    cumulative = cumulative_figure(runs)
    if cumulative is not None:
        page.add("<h2>Cumulative per-era CORR (solid), MMC (dashed) and MPC (dotted)</h2>" + legend_note)
        page.figure(cumulative)
    if len(runs) > 1:
        add_correlations(page, correlations, correlated, len(runs))
    live = live_figure(runs)
    if live is not None:
        page.add("<h2>Live scores from Numerai (per round, cumulative)</h2>")
        page.figure(live)
    return page.html()


def add_correlations(page: Page, correlations: pd.DataFrame, correlated: list[str], n_runs: int) -> None:
    page.add("<h2>Correlation between the runs' validation predictions</h2>")
    figure = correlation_figure(correlations, correlated)
    if figure is None:
        page.add("<p class='note'>No logged validation predictions to compare.</p>")
        return
    bounded = (f" (those of the best {CORRELATED_RUNS} runs that logged predictions)"
               if n_runs > CORRELATED_RUNS else "")
    if len(correlated) <= PAIR_LINES_UP_TO:
        page.add("<p class='note'>Per-era Spearman correlation of each pair over their shared "
                 f"ids{bounded}.</p>")
        page.figure(figure)
        summary = correlations.agg(["mean", "min", "max"]).T
        page.table(["pair", "mean", "min", "max"],
                   [[f"{a} | {b}", *(_number(v) for v in row)] for (a, b), row in summary.iterrows()],
                   sortable=False)
    else:
        page.add("<p class='note'>Mean over eras of each pair's per-era Spearman correlation over "
                 f"their shared ids{bounded}.</p>")
        page.figure(figure)


def write_report(client: mlflow.MlflowClient, selection: Selection, title: str, file: Path,
                 sweep: SweepView | None = None) -> Path:
    labels = run_labels(selection.trials or selection.runs)  # one label per run in both tables
    loaded = [load_run(client, run, labels[run.info.run_id]) for run in selection.runs]
    frames: dict[str, pd.DataFrame] = {}
    for data in loaded[:CORRELATED_RUNS]:
        frame = logged_predictions(client, data.run)
        if frame is not None:
            frames[data.label] = frame
    file.parent.mkdir(parents=True, exist_ok=True)
    page = render_html(title, loaded, selection, prediction_correlations(frames), list(frames), sweep)
    file.write_text(page, encoding="utf-8")
    return file


def report_summary(file: Path, selection: Selection, title: str) -> dict[str, Any]:
    """What the command returns (and prints as JSON): the file, the runs in report order, the title."""
    return {"file": str(file), "runs": [str(run.info.run_id) for run in selection.runs], "title": title}
