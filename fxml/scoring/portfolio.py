"""Meta-portfolio contribution (MPC): a model's contribution to a stake-weighted portfolio of models.

This is the public form of the construction behind Numerai's TC (numerai-tools'
``meta_portfolio_contribution``), applied here to a *local* portfolio: the model plus the release's
benchmark models, with stakes from the config. It is not Numerai's TC, which uses every staked
model and Numerai's private optimiser and data.

Per era, over the rows where the target and every model's prediction are present:

1. each model's predictions are tie-kept ranked, gaussianised and raised to the signed 1.5 power;
2. neutralised into weights ``w_k = (s_k - N N' (q * s_k)) * q`` (``N`` the neutraliser columns,
   ``q`` the sample weights; no neutraliser: ``w_k = s_k * q``), then centred;
3. the portfolio is ``v = W s`` with stakes ``s`` normalised to sum to 1 in absolute value;
4. MPC of model k is the gradient of the portfolio's return ``v.t / |v|`` with respect to its stake:
   ``(w_k.t - (v.t)(w_k.v)/(v.v)) / |v| / 50`` with ``t`` the centred target.

All eras are computed at once on a padded (eras, width) grid: one vectorised sort per model
and era row, per-era dot products as row sums. Steps 2 and 3 are linear in the signals, so the
benchmarks' stake-weighted signals are summed first and neutralised once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fxml.scoring.eras import era_starts
from fxml.scoring.grid import (
    EraGrid,
    GridRanks,
    era_grid,
    gaussian_power_ranks,
    grid_ranks,
    sorted_signals,
)
from fxml.scoring.rows import Features, rows_of

# numerai-tools divides the stake gradient by 50, a scale that brings it near CORR's range.
MPC_SCALE = 50.0
# Singular values below this fraction of the largest are dropped when a neutraliser basis is built.
NEUTRALIZER_RCOND = 1e-10


def stake_weighted_signals(predictions: np.ndarray, stakes: np.ndarray, grid: EraGrid) -> np.ndarray:
    """``sum_k stake_k s_k`` on the grid (0 in padding), ``s_k`` model k's signed 1.5 power of
    gaussianised tie-kept ranks among the grid's rows of each era: its position in the portfolio
    before neutralisation. Neutralising and centring are linear, so the benchmarks' combined
    position needs them once on this sum rather than once per model."""
    combined = np.zeros(grid.n_eras * grid.width)
    offsets = (np.arange(grid.n_eras) * grid.width)[:, None]
    for column in np.flatnonzero(stakes):
        ranks = grid_ranks(grid, predictions[:, column])
        # each column's sorted places are distinct cells: a fancy-indexed += adds once per cell
        combined[ranks.order + offsets] += stakes[column] * sorted_signals(grid, ranks)
    return combined.reshape(grid.n_eras, grid.width)


def neutralizer_basis(columns: np.ndarray) -> np.ndarray:
    """Orthonormal basis of the span of ``columns`` and a constant, for one era's rows.

    numerai-tools' weights subtract ``N N'(q s)``, a projection only when ``N`` has orthonormal
    columns; features become such a basis first (directions without variance are dropped)."""
    block = np.column_stack([np.asarray(columns, dtype=np.float64), np.ones(len(columns))])
    left, singular, _ = np.linalg.svd(block, full_matrices=False)
    return left[:, singular > NEUTRALIZER_RCOND * singular.max()]


def neutral_weights(signals: np.ndarray, sample_weights: np.ndarray,
                    neutralizers: Features | None, grid: EraGrid) -> np.ndarray:
    """Centred portfolio weights (a grid) of signals (a grid): the neutralisers' span removed,
    times the sample weights (a grid). ``neutralizers`` (rows, m) are raw columns (features),
    turned into an orthonormal basis per era (a matrix or rows read an era at a time); None
    neutralises nothing."""
    weights = signals * sample_weights
    if neutralizers is not None:
        starts = era_starts(grid.counts)
        for era in np.flatnonzero(grid.counts):
            size = int(grid.counts[era])
            basis = neutralizer_basis(rows_of(neutralizers, grid.rows[starts[era]: starts[era] + size]))
            fitted = basis @ (basis.T @ weights[era, :size])
            weights[era, :size] = (signals[era, :size] - fitted) * sample_weights[era, :size]
    return grid.centred(weights)


@dataclass
class BenchmarkPortfolio:
    """The model-independent part of a meta portfolio: the benchmark models' centred weights
    combined by their stakes, the centred targets and their per-era products. Prepared once per
    split, it makes each model's MPC one ranking and three dot products per era."""

    grid: EraGrid
    sample_weights: np.ndarray  # grid
    neutralizers: Features | None  # (rows, m) raw columns, or None
    targets: np.ndarray  # centred target grid
    position: np.ndarray  # sum over benchmarks of stake x centred weights (grid)
    stake_total: float  # sum of |stakes| without the model's
    position_return: np.ndarray  # per era position . targets
    position_norm2: np.ndarray  # per era position . position


def portfolio_rows(targets: np.ndarray, benchmarks: np.ndarray,
                   sample_weights: np.ndarray | None) -> np.ndarray:
    """Rows that take part: target, every benchmark prediction and the sample weight present
    (numerai-tools drops the others)."""
    kept = ~np.isnan(targets) & ~np.isnan(benchmarks).any(axis=1)
    return kept if sample_weights is None else kept & ~np.isnan(sample_weights)


def prepare_portfolio(
    benchmarks: np.ndarray,
    stakes: np.ndarray,
    targets: np.ndarray,
    codes: np.ndarray,
    n_eras: int,
    *,
    sample_weights: np.ndarray | None = None,
    neutralizers: Features | None = None,
    grid: EraGrid | None = None,
) -> BenchmarkPortfolio:
    """Rank, neutralise and stake-weight the benchmark models (rows, benchmarks) once. ``grid``:
    the scored rows' grid, used when it holds exactly the portfolio's rows (shared rankings)."""
    benchmarks = np.asarray(benchmarks, dtype=np.float64)
    stakes = np.nan_to_num(np.asarray(stakes, dtype=np.float64))
    if benchmarks.ndim != 2 or benchmarks.shape[1] != stakes.size:
        raise ValueError(f"benchmarks must be (rows, {stakes.size}), got {benchmarks.shape}")
    targets = np.asarray(targets, dtype=np.float64)
    kept = portfolio_rows(targets, benchmarks, sample_weights)
    if grid is None or grid.rows.size != kept.sum() or not kept[grid.rows].all():
        grid = era_grid(codes, n_eras, kept)
    weights_q = grid.place(np.ones(targets.size) if sample_weights is None
                           else np.asarray(sample_weights, dtype=np.float64))
    position = neutral_weights(stake_weighted_signals(benchmarks, stakes, grid), weights_q,
                               neutralizers, grid)
    centred_targets = grid.centred(grid.place(targets))
    return BenchmarkPortfolio(grid, weights_q, neutralizers, centred_targets, position,
                              float(np.abs(stakes).sum()),
                              np.einsum("ew,ew->e", position, centred_targets),
                              np.einsum("ew,ew->e", position, position))


def model_contribution(portfolio: BenchmarkPortfolio, predictions: np.ndarray, own_stake: float,
                       ranks: GridRanks | None = None, signals: np.ndarray | None = None) -> np.ndarray:
    """Per-era MPC of a model joining ``portfolio`` with ``own_stake``.

    With ``w`` the model's centred weights, ``P`` the benchmarks' stake-weighted position and
    ``S`` the sum of all |stakes|, the portfolio is ``v = (own w + P) / S`` and the model's MPC is
    ``(w.t - (v.t)(w.v)/(v.v)) / |v| / 50``: only ``w.t``, ``w.P`` and ``w.w`` depend on the model.
    ``ranks`` and ``signals``: the predictions' ranks on the portfolio's grid and their
    gaussianised, powered values, when already computed.
    """
    grid = portfolio.grid
    if signals is None:
        ranks = ranks or grid_ranks(grid, np.asarray(predictions, np.float64))
        signals = gaussian_power_ranks(grid, ranks)
    weights = neutral_weights(signals, portfolio.sample_weights, portfolio.neutralizers, grid)
    total = portfolio.stake_total + abs(own_stake)
    if not total > 0:
        raise ValueError("the portfolio's stakes must not all be zero")
    model_return = np.einsum("ew,ew->e", weights, portfolio.targets)
    model_overlap = np.einsum("ew,ew->e", weights, portfolio.position)
    model_norm2 = np.einsum("ew,ew->e", weights, weights)
    portfolio_return = (own_stake * model_return + portfolio.position_return) / total
    portfolio_norm2 = (own_stake**2 * model_norm2 + 2 * own_stake * model_overlap
                       + portfolio.position_norm2) / total**2
    overlap = (own_stake * model_norm2 + model_overlap) / total
    with np.errstate(invalid="ignore", divide="ignore"):
        contribution = (model_return - portfolio_return * overlap / portfolio_norm2) / (
            np.sqrt(portfolio_norm2) * MPC_SCALE)
    contribution[~(portfolio_norm2 > 0)] = np.nan
    return contribution


def meta_portfolio_contribution_by_era(
    predictions: np.ndarray,
    stakes: np.ndarray,
    targets: np.ndarray,
    codes: np.ndarray,
    n_eras: int,
    *,
    sample_weights: np.ndarray | None = None,
    neutralizers: Features | None = None,
) -> np.ndarray:
    """Per-era MPC of the model in column 0 of ``predictions`` (rows, models), the other columns
    being the rest of the portfolio; ``stakes`` has one stake per column. Rows with a NaN target,
    other model's prediction or sample weight are left out of their era (numerai-tools drops
    them); the model itself must have no NaN there. An era without rows, or whose portfolio is
    flat, is NaN."""
    predictions = np.asarray(predictions, dtype=np.float64)
    stakes = np.asarray(stakes, dtype=np.float64)
    portfolio = prepare_portfolio(predictions[:, 1:], stakes[1:], targets, codes, n_eras,
                                  sample_weights=sample_weights, neutralizers=neutralizers)
    model = predictions[:, 0]
    if np.isnan(model[portfolio.grid.rows]).any():
        raise ValueError("the model's predictions are NaN on rows the portfolio scores")
    return model_contribution(portfolio, model, float(stakes[0]))
