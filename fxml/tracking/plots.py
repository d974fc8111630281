"""Figures logged with every run."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def cumulative_scores(per_era: pd.DataFrame, columns: tuple[str, ...] = ("corr", "mmc")) -> Figure:
    """Cumulative per-era scores: the curve Numerai users read drawdowns and consistency from."""
    # drawn without pyplot: no backend (runs have no display), matplotlib's global state left
    # alone; imported here, after training and scoring, whose peaks it would otherwise add to
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 4.5), dpi=100)
    axis = figure.subplots()
    for column in columns:
        if column in per_era and per_era[column].notna().any():
            series = per_era[column].dropna()
            axis.plot(series.index, series.cumsum(), label=f"cumulative {column.upper()}")
    axis.axhline(0.0, color="grey", linewidth=0.8)
    axis.set_xlabel("era")
    axis.set_ylabel("cumulative score")
    axis.set_title("Validation: cumulative per-era scores")
    axis.legend(loc="upper left")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def cumulative_scores_by_fold(per_era: pd.DataFrame, fold_starts: list[int],
                              columns: tuple[str, ...] = ("corr", "mmc")) -> Figure:
    """Out-of-fold cumulative per-era scores, a dashed line where each fold's test block starts
    (a column without values, such as MMC on training eras, is left out)."""
    figure = cumulative_scores(per_era, columns)
    axis = figure.axes[0]
    for number, era in enumerate(fold_starts):
        axis.axvline(era, color="black", linestyle="--", linewidth=0.8, alpha=0.6)
        axis.annotate(f"fold {number}", (era, 1.0), xycoords=("data", "axes fraction"),
                      xytext=(3, -12), textcoords="offset points", fontsize=8)
    axis.set_title("Cross-validation: out-of-fold cumulative per-era scores")
    return figure
