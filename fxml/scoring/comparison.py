"""MPC and the comparison diagnostics of one model, per era, sharing one ranking of its predictions.

``score_eras`` gives Numerai's core metrics; this adds the numbers people compare models by. Both
are per era, indexed by era number, and are joined by the scorer. The model-independent parts (the
benchmark portfolio, the meta model's ranks and exposures) are prepared separately, once per split.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fxml.scoring.diagnostics import (
    MetaReference,
    exposure_dissimilarity_with,
    prepare_meta_reference,
    rank_correlation_with,
    top_bottom_corr_on_grid,
)
from fxml.scoring.eras import EraCodes
from fxml.scoring.grid import EraGrid, era_grid, gaussian_power_ranks, grid_ranks
from fxml.scoring.portfolio import BenchmarkPortfolio, model_contribution
from fxml.scoring.rows import Features


def scored_grid(codes: EraCodes, targets: np.ndarray) -> EraGrid:
    """The grid of the rows with a resolved target: what CORR, top/bottom CORR and (when the
    benchmarks cover them) MPC rank over."""
    return era_grid(codes.codes, codes.n_eras, ~np.isnan(targets))


def meta_reference(codes: EraCodes, grid: EraGrid, meta_model: np.ndarray,
                   features: Features | None) -> MetaReference:
    """The meta model's side of the diagnostics, over the scored rows it covers."""
    covered = ~np.isnan(meta_model[grid.rows])
    if not covered.all():
        kept = np.zeros(meta_model.size, dtype=bool)
        kept[grid.rows[covered]] = True
        grid = era_grid(codes.codes, codes.n_eras, kept)
    return prepare_meta_reference(grid, meta_model, features)


def _same_rows(a: EraGrid, b: EraGrid) -> bool:
    return a is b or np.array_equal(a.rows, b.rows)


def comparison_scores(
    predictions: np.ndarray,
    targets: np.ndarray,
    codes: EraCodes,
    grid: EraGrid,
    *,
    portfolio: BenchmarkPortfolio | None = None,
    own_stake: float = 1.0,
    meta: MetaReference | None = None,
    top_bottom: int | None = 200,
) -> pd.DataFrame:
    """Per-era columns (index: era number, every era of ``codes``):

    - ``mpc`` with a ``portfolio``: the model's meta-portfolio contribution;
    - ``tb<N>_corr`` with ``top_bottom``: CORR over the N highest and N lowest predictions;
    - ``meta_model_rank_corr`` with ``meta``: Spearman correlation with the meta model;
    - ``exposure_dissimilarity`` with ``meta`` prepared with features.
    """
    ranks = grid_ranks(grid, predictions)
    signals = gaussian_power_ranks(grid, ranks)
    columns: dict[str, np.ndarray] = {}
    if portfolio is not None:
        shared = _same_rows(portfolio.grid, grid)
        columns["mpc"] = model_contribution(portfolio, predictions, own_stake,
                                            ranks if shared else None, signals if shared else None)
    if top_bottom:
        columns[f"tb{top_bottom}_corr"] = top_bottom_corr_on_grid(
            grid, predictions, targets, top_bottom, ranks, None if ranks.has_ties else signals)
    if meta is not None:
        shared = _same_rows(meta.grid, grid)
        columns["meta_model_rank_corr"] = rank_correlation_with(meta, predictions,
                                                                ranks if shared else None)
        if meta.exposure_direction is not None:
            columns["exposure_dissimilarity"] = exposure_dissimilarity_with(meta, predictions)
    return pd.DataFrame(columns, index=pd.Index(codes.labels, name="era"))
