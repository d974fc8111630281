"""What users see in the terminal: progress on long steps, a summary table, quiet dependencies."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fxml.steps import StepCallback

console = Console()
error_console = Console(stderr=True)
SUMMARY_ROWS = (("corr", "CORR"), ("mmc", "MMC"), ("bmc", "BMC"), ("fnc", "FNC"),
                ("payout", "payout (0.5 CORR + 2 MMC, clipped)"),
                ("mpc", "MPC (local portfolio, not TC)"),
                ("meta_model_rank_corr", "rank corr w/ meta model"),
                ("exposure_dissimilarity", "exposure dissim. vs meta"))


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
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=None, metrics="")

        def on_step(step: int, total: int, metrics: dict[str, float]) -> None:
            shown = "  ".join(f"{k}={v:.5f}" for k, v in metrics.items())
            progress.update(task, completed=step, total=total, metrics=shown)
            for listener in listeners:
                listener(step, total, metrics)

        yield on_step


def summary_table(summary: dict[str, float], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for header in ("metric", "mean", "std", "sharpe", "max drawdown"):
        table.add_column(header, justify="right" if header != "metric" else "left")
    for key, label in SUMMARY_ROWS:
        if f"{key}_mean" in summary:
            table.add_row(label, *(_fmt(summary.get(f"{key}_{stat}"))
                                   for stat in ("mean", "std", "sharpe", "max_drawdown")))
    for key in sorted(k for k in summary if k.startswith("tb") and k.endswith("_corr_mean")):
        name = key.removesuffix("_mean")
        stats = ("mean", "std", "sharpe", "max_drawdown")
        table.add_row(f"top/bottom {name[2:-5]} CORR", *(_fmt(summary.get(f"{name}_{s}")) for s in stats))
    if "payout_apy" in summary:
        table.add_row("payout APY-style (compounded)", _fmt(summary["payout_apy"]), "", "", "")
        table.add_row("payout Calmar ratio", _fmt(summary.get("payout_calmar")), "", "", "")
    if "feature_exposure_max" in summary:
        table.add_row("feature exposure (max, era mean)", _fmt(summary["feature_exposure_max"]),
                      "", "", "")
    return table


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"
