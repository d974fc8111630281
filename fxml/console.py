"""What users see in the terminal: progress on long steps, a summary table, quiet dependencies."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fxml.steps import StepCallback

if TYPE_CHECKING:
    import pandas as pd

console = Console()
error_console = Console(stderr=True)
SUMMARY_ROWS = (("corr", "CORR"), ("mmc", "MMC"), ("bmc", "BMC"), ("fnc", "FNC"),
                ("payout", "payout"),
                ("mpc", "MPC (local portfolio, not TC)"),
                ("meta_model_rank_corr", "rank corr w/ meta model"),
                ("exposure_dissimilarity", "exposure dissim. vs meta"))
STATISTICS = ("mean", "std", "sharpe", "max_drawdown")
# summaries of CORR against another target than the scored one (target names start "target")
OTHER_TARGET_CORR = "corr_target"
IMPORTANCE_SHOWN = 10
WIDE = 200  # characters a wide table may take outside a terminal
# a multirun's comparison: these summaries beside the objective, where some job logged them
COMPARED_METRICS = ("corr_mean", "corr_sharpe", "mmc_mean", "payout_mean", "cv_corr_mean",
                    "cv_corr_sharpe")

class JsonOutput:
    """``output=json``: a command's result as one JSON object on the stdout it was started with,
    its last line, while everything printed meanwhile (tables, progress, logs, libraries' prints)
    goes to stderr. Scripts chain commands through that line."""

    def __init__(self) -> None:
        self.stdout: TextIO | None = None

    @contextmanager
    def enabled(self, on: bool) -> Iterator[None]:
        if not on:
            yield
            return
        self.divert_prints()
        try:
            yield
        finally:
            sys.stdout, self.stdout = self.stdout or sys.stdout, None

    def divert_prints(self) -> None:
        if self.stdout is None:
            self.stdout, sys.stdout = sys.stdout, sys.stderr

    def emit(self, result: Any) -> None:
        if self.stdout is not None and result is not None:
            self.stdout.write(json.dumps(json_ready(result), sort_keys=True) + "\n")
            self.stdout.flush()


def json_ready(value: Any) -> Any:
    """``value`` as JSON can hold it: dataclasses and mappings as objects (with an ``as_json`` hook),
    paths as strings, NaN and infinities as null."""
    if hasattr(value, "as_json"):
        return json_ready(value.as_json())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json_ready({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    if isinstance(value, dict):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [json_ready(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # a numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


json_output = JsonOutput()


@dataclass
class ConsoleDetail:
    """Whether a job shows its step-by-step lines (data, memory plan, model) and keeps its progress
    bars on screen: a sweep's later jobs repeat its first one's, so theirs go to their log file."""

    steps_shown: bool = True


console_detail = ConsoleDetail()


def show_steps_once(job_number: int) -> None:
    """In a multirun, only job 0 prints its step lines; every job prints its result line."""
    console_detail.steps_shown = job_number == 0
    level = logging.INFO if console_detail.steps_shown else logging.WARNING
    for handler in logging.getLogger().handlers:
        if isinstance(handler, RichHandler):
            handler.setLevel(level)


def quiet_dependencies() -> None:
    """Silence dependency chatter that says nothing about the user's run."""
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category,
                                module=r"(mlflow|lightgbm|xgboost|pydantic|alembic)")
    warnings.filterwarnings("ignore", message=".*git.*")
    for name in ("alembic", "mlflow", "numerapi", "urllib3", "matplotlib", "py.warnings"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # logs a traceback for every database error it then raises: fxml reports those in one line
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


@contextmanager
def step_progress(description: str, *listeners: StepCallback) -> Iterator[StepCallback]:
    """A progress bar fed through the models' ``on_step`` hook, passing each step on to
    ``listeners`` (metric logging, sweep pruning)."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[metrics]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=not console_detail.steps_shown) as progress:
        task = progress.add_task(description, total=None, metrics="")

        def on_step(step: int, total: int, metrics: dict[str, float]) -> None:
            shown = "  ".join(f"{k}={v:.5f}" for k, v in metrics.items())
            progress.update(task, completed=step, total=total, metrics=shown)
            for listener in listeners:
                listener(step, total, metrics)

        yield on_step


def payout_label(corr_weight: float, mmc_weight: float, clip: float, source: str = "configured") -> str:
    """The payout row's label with the weights scored with and where they came from (``configured``
    or ``round 1234``): ``payout (configured: 0.5*CORR + 2*MMC, clip ±0.05)``."""
    return f"payout ({source}: {corr_weight:g}*CORR + {mmc_weight:g}*MMC, clip ±{clip:g})"


def summary_table(summary: dict[str, float], title: str, payout: str,
                  trained_on: str | None = None) -> Table:
    """Mean, std, sharpe and max drawdown over eras of each score (``payout``: the payout row's
    label, ``payout_label``), then CORR against each other target scored (``corr_<target>``;
    ``trained_on``: the one the model learnt)."""
    table = Table(title=title, title_justify="left")
    for header in ("metric", "mean", "std", "sharpe", "max drawdown"):
        table.add_column(header, justify="right" if header != "metric" else "left")
    labels = {**dict(SUMMARY_ROWS), "payout": payout}
    for key, label in labels.items():
        if _known(summary.get(f"{key}_mean")):
            table.add_row(label, *_statistics(summary, key))
    for key in sorted(k for k in summary if k.startswith("tb") and k.endswith("_corr_mean")
                      and _known(summary[k])):
        name = key.removesuffix("_mean")
        table.add_row(f"top/bottom {name[2:-5]} CORR", *_statistics(summary, name))
    for key in sorted(k for k in summary if k.startswith(OTHER_TARGET_CORR) and k.endswith("_mean")
                      and _known(summary[k])):
        name = key.removesuffix("_mean")
        target = name.removeprefix("corr_")
        note = " (trained on)" if target == trained_on else ""
        table.add_row(escape(f"CORR on {target}{note}"), *_statistics(summary, name))
    if "payout_apy" in summary:
        table.add_row("payout APY-style (compounded)", _fmt(summary["payout_apy"]), "", "", "")
        table.add_row("payout Calmar ratio", _fmt(summary.get("payout_calmar")), "", "", "")
    if "feature_exposure_max" in summary:
        table.add_row("feature exposure (per-era max)", _fmt(summary["feature_exposure_max"]),
                      _fmt(summary.get("feature_exposure_std")), "", "")
    return table


def importance_table(importance: pd.DataFrame, repeats: int, top: int = IMPORTANCE_SHOWN) -> Table:
    """The largest drops of a permutation importance frame (largest first, as computed); the
    std over shuffles only when there were several."""
    kind = "groups" if (importance["kind"] == "group").all() else "features"
    more = f"top {top} of {len(importance)} " if len(importance) > top else ""
    title = (f"Permutation importance, {more}{kind}: drop in validation CORR mean "
             f"(baseline {importance['corr_baseline'].iloc[0]:.4f})")
    table = Table(title=title, title_justify="left", min_width=len(title))
    unit = kind.removesuffix("s")
    headers = ("#", unit, "features", "CORR drop", *((f"std ({repeats} shuffles)",) if repeats > 1 else ()))
    for header in headers:
        table.add_column(header, justify="left" if header == unit else "right")
    for rank, row in enumerate(importance.head(top).itertuples(), start=1):
        spread = (_fmt(row.corr_drop_std),) if repeats > 1 else ()
        table.add_row(str(rank), escape(str(row.name)), str(row.n_features), _fmt(row.corr_drop), *spread)
    return table


@dataclass
class JobRow:
    """One job of a multirun as the comparison table shows it."""

    job: str  # the job's number (grid), or its trial's
    status: str  # FINISHED / FAILED / KILLED / PRUNED / ..., or an Optuna trial state
    run_name: str
    overrides: str  # what sets this job apart from the others
    metrics: dict[str, float] = field(default_factory=dict)
    objective: float | None = None


def comparison_table(rows: list[JobRow], title: str, objective: str, job: str = "job") -> Table:
    """One row per job (or trial: ``job``): the objective first, then the main summaries some
    job logged, its status, run name and distinct overrides."""
    shown = [m for m in COMPARED_METRICS if m != objective and any(m in r.metrics for r in rows)]
    table = Table(title=title, title_justify="left")
    table.add_column(job, justify="right", no_wrap=True)
    table.add_column(objective, justify="right", style="bold", overflow="fold")
    for name in shown:
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for header in ("run", "overrides"):
        table.add_column(header, overflow="fold")
    for row in rows:
        # overrides may hold brackets (lists) that rich would read as markup
        table.add_row(row.job, _fmt(row.objective), *(_fmt(row.metrics.get(m)) for m in shown),
                      row.status, escape(row.run_name), escape(row.overrides))
    return table


def print_wide(table: Table) -> None:
    """A wide table whole: a terminal folds its long cells; a log file or pipe (80 columns to
    rich) gets it at its natural width."""
    if console.is_terminal:
        console.print(table)
    else:
        Console(file=console.file, width=WIDE).print(table)


def job_line(run_name: str, metrics: dict[str, float]) -> str:
    """A multirun job's one-line summary (its table comes at the end of the multirun)."""
    shown = "  ".join(f"{name} {metrics[name]:.4f}" for name in COMPARED_METRICS
                      if name in metrics and not math.isnan(metrics[name]))
    return f"{run_name}: {shown}" if shown else run_name


def _statistics(summary: dict[str, float], name: str) -> list[str]:
    """A score's row cells: its mean, std, sharpe and max drawdown over eras, as shown."""
    return [_fmt(summary.get(f"{name}_{statistic}")) for statistic in STATISTICS]


def _known(value: float | None) -> bool:
    """A summary worth a row: computed, and not NaN (top/bottom CORR of eras too small for it)."""
    return value is not None and not math.isnan(value)


def _fmt(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.4f}"
