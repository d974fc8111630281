"""MPC and the comparison diagnostics of one model, per era, sharing one ranking of its predictions.

``score_eras`` gives Numerai's core metrics; this adds the numbers people compare models by. Both
are per era, indexed by era number, and are joined by the scorer.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fxml.scoring.diagnostics import (
    exposure_dissimilarity_on_grid,
    rank_correlation_on_grid,
    top_bottom_corr_on_grid,
)
from fxml.scoring.eras import EraCodes
from fxml.scoring.grid import EraGrid, era_grid, grid_ranks
from fxml.scoring.portfolio import BenchmarkPortfolio, model_contribution


def scored_grid(codes: EraCodes, targets: np.ndarray) -> EraGrid:
    """The grid of the rows with a resolved target: what CORR, top/bottom CORR and (when the
    benchmarks cover them) MPC rank over."""
    return era_grid(codes.codes, codes.n_eras, ~np.isnan(targets))


def comparison_scores(
    predictions: np.ndarray,
    targets: np.ndarray,
    codes: EraCodes,
    grid: EraGrid,
    *,
    portfolio: BenchmarkPortfolio | None = None,
    own_stake: float = 1.0,
    meta_model: np.ndarray | None = None,
    features: np.ndarray | None = None,
    top_bottom: int | None = 200,
) -> pd.DataFrame:
    """Per-era columns (index: era number, every era of ``codes``):

    - ``mpc`` with a ``portfolio``: the model's meta-portfolio contribution;
    - ``tb<N>_corr`` with ``top_bottom``: CORR over the N highest and N lowest predictions;
    - ``meta_model_rank_corr``: Spearman correlation with the meta model over the scored rows;
    - ``exposure_dissimilarity`` with ``features`` too: against the meta model's feature exposures.
    """
    ranks = grid_ranks(grid, predictions)
    columns: dict[str, np.ndarray] = {}
    if portfolio is not None:
        same_rows = portfolio.grid is grid or np.array_equal(portfolio.grid.rows, grid.rows)
        shared = ranks if same_rows else None
        columns["mpc"] = model_contribution(portfolio, predictions, own_stake, shared)
    if top_bottom:
        columns[f"tb{top_bottom}_corr"] = top_bottom_corr_on_grid(grid, predictions, targets,
                                                                  top_bottom, ranks)
    if meta_model is not None:
        covered = ~np.isnan(meta_model[grid.rows])
        meta_grid, meta_ranks = grid, ranks
        if not covered.all():  # the meta model misses some scored rows: rank over the others
            kept = np.zeros(predictions.size, dtype=bool)
            kept[grid.rows[covered]] = True
            meta_grid, meta_ranks = era_grid(codes.codes, codes.n_eras, kept), None
        columns["meta_model_rank_corr"] = rank_correlation_on_grid(meta_grid, predictions, meta_model,
                                                                   meta_ranks)
        if features is not None:
            columns["exposure_dissimilarity"] = exposure_dissimilarity_on_grid(
                meta_grid, predictions, meta_model, features)
    return pd.DataFrame(columns, index=pd.Index(codes.labels, name="era"))
