"""The other numbers Numerai users compare models by, computed per era for all eras at once.

None of them is TC. Each is a small pure function; the scorer picks which ones a run logs.

- ``rank_correlation_by_era``: Spearman correlation (Pearson of tie-kept ranks, as pandas'
  ``corr(method="spearman")`` and numerai-tools' ``spearman_correlation``), e.g. with the meta model.
- ``top_bottom_corr_by_era``: numerai-tools' ``numerai_corr(..., top_bottom=n)``: CORR over only the
  n highest and n lowest predictions of the era (what a long/short book of those names would earn).
- ``exposure_dissimilarity_by_era``: ``1 - U.E / E.E`` with U and E the per-feature correlations of
  the model and of a reference (the meta model): 0 when the model leans on features as the
  reference does, 1 when orthogonally, above 1 when against it (numerblox's ``ex_diss``).
- ``churn``: ``1 - Spearman`` between two prediction sets over their common ids (consecutive live
  submissions).
- ``compounded_annual_return`` and ``calmar_ratio``: summaries of a per-era payout-style score.
"""

from __future__ import annotations

import numpy as np

from fxml.scoring.eras import era_starts
from fxml.scoring.grid import (
    EraGrid,
    GridRanks,
    era_grid,
    gaussian_power_ranks,
    grid_ranks,
    percentile_ranks,
)
from fxml.scoring.transforms import signed_power

ERAS_PER_YEAR = 52  # validation eras are weekly


def grid_pearson(a: np.ndarray, b: np.ndarray, grid: EraGrid,
                 mask: np.ndarray | None = None) -> np.ndarray:
    """Per-era Pearson correlation of two grids over the valid cells (or ``mask``); NaN for an era
    with fewer than two cells or a constant input."""
    mask = grid.valid if mask is None else mask
    count = mask.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        a = np.where(mask, a - (np.where(mask, a, 0.0).sum(axis=1) / count)[:, None], 0.0)
        b = np.where(mask, b - (np.where(mask, b, 0.0).sum(axis=1) / count)[:, None], 0.0)
        corr = np.einsum("ew,ew->e", a, b) / np.sqrt(
            np.einsum("ew,ew->e", a, a) * np.einsum("ew,ew->e", b, b))
    corr[count < 2] = np.nan
    return np.clip(corr, -1.0, 1.0)


def rank_correlation_on_grid(grid: EraGrid, a: np.ndarray, b: np.ndarray,
                             a_ranks: GridRanks | None = None) -> np.ndarray:
    """Spearman correlation of ``a`` and ``b`` (full-length, no NaN on the grid's rows) per era."""
    a_ranks = a_ranks or grid_ranks(grid, a)
    return grid_pearson(percentile_ranks(grid, a_ranks), percentile_ranks(grid, grid_ranks(grid, b)),
                        grid)


def rank_correlation_by_era(a: np.ndarray, b: np.ndarray, codes: np.ndarray,
                            n_eras: int) -> np.ndarray:
    """Spearman correlation of ``a`` and ``b`` inside each era, over rows where both are present."""
    return rank_correlation_on_grid(era_grid(codes, n_eras, ~np.isnan(a) & ~np.isnan(b)), a, b)


def top_bottom_corr_on_grid(grid: EraGrid, predictions: np.ndarray, targets: np.ndarray,
                            top_bottom: int, ranks: GridRanks | None = None) -> np.ndarray:
    """``top_bottom_corr_by_era`` on a grid of the scored rows, reusing the predictions' ranks."""
    ranks = ranks or grid_ranks(grid, predictions)
    if ranks.has_ties and not ranks.stable:  # which tied rows make the cut depends on their order
        ranks = grid_ranks(grid, predictions, stable=True)
    transformed = gaussian_power_ranks(grid, ranks)
    powered_targets = signed_power(grid.centred(grid.place(targets)))
    place = np.arange(grid.width)[None, :]
    size = grid.counts[:, None]
    extreme = ((place < top_bottom) | (place >= size - top_bottom)) & (place < size)
    corr = grid_pearson(transformed, powered_targets, grid, ranks.scatter(extreme).astype(bool))
    corr[grid.counts < 2 * top_bottom] = np.nan
    return corr


def top_bottom_corr_by_era(predictions: np.ndarray, targets: np.ndarray, codes: np.ndarray,
                           n_eras: int, top_bottom: int) -> np.ndarray:
    """Numerai CORR over the ``top_bottom`` highest and lowest predictions of each era.

    As numerai-tools: the target is centred over the era's scored rows and powered, predictions are
    ranked over those rows, then only the extreme rows enter the Pearson correlation. Ties at the
    cut are taken in row order (numerai-tools takes them in id order: the same when rows are sorted
    by id within eras, as in Numerai's files). An era with fewer than ``2 * top_bottom`` scored rows
    is NaN.
    """
    grid = era_grid(codes, n_eras, ~np.isnan(targets))
    return top_bottom_corr_on_grid(grid, predictions, targets, top_bottom)


def feature_correlations(values: np.ndarray, features: np.ndarray, grid: EraGrid) -> np.ndarray:
    """(eras, features, columns) Pearson correlation of each column of ``values`` (full-length,
    rows x columns) with each feature over the grid's rows of each era; a feature constant in the
    era (or a constant column) gives NaN. One float copy of an era's features serves all columns."""
    columns = values.shape[1]
    out = np.full((grid.n_eras, features.shape[1], columns), np.nan)
    starts = era_starts(grid.counts)
    for era in np.flatnonzero(grid.counts > 1):
        size = int(grid.counts[era])
        rows = grid.rows[starts[era]: starts[era] + size]
        contiguous = rows[-1] - rows[0] == size - 1 and bool(np.all(np.diff(rows) == 1))
        block = (features[rows[0]: rows[-1] + 1] if contiguous else features[rows]).astype(np.float64)
        sums = block.sum(axis=0)
        norms2 = np.einsum("rk,rk->k", block, block) - sums * sums / size
        centred = values[rows] - values[rows].mean(axis=0)
        cross = block.T @ centred  # the centred values sum to 0: no feature centring needed
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = cross / np.sqrt(norms2[:, None] * np.einsum("rc,rc->c", centred, centred))
        corr[~(norms2 > 1e-9 * size)] = np.nan
        out[era] = corr
    return out


def exposure_dissimilarity_on_grid(grid: EraGrid, predictions: np.ndarray, reference: np.ndarray,
                                   features: np.ndarray) -> np.ndarray:
    """``exposure_dissimilarity_by_era`` over the grid's rows (the reference present on all)."""
    correlations = feature_correlations(np.column_stack([predictions, reference]), features, grid)
    model, ref = correlations[:, :, 0], correlations[:, :, 1]
    both = ~np.isnan(model) & ~np.isnan(ref)
    overlap = np.where(both, model * ref, 0.0).sum(axis=1)
    ref_norm = np.where(both, ref * ref, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        dissimilarity = 1.0 - overlap / ref_norm
    dissimilarity[~(ref_norm > 0)] = np.nan
    return dissimilarity


def exposure_dissimilarity_by_era(predictions: np.ndarray, reference: np.ndarray,
                                  features: np.ndarray, codes: np.ndarray,
                                  n_eras: int) -> np.ndarray:
    """``1 - U.E / E.E`` per era, U and E the feature correlations of the predictions and of the
    reference over rows where the reference is present; features without a correlation (constant
    in the era) are left out of both sums."""
    grid = era_grid(codes, n_eras, ~np.isnan(reference))
    return exposure_dissimilarity_on_grid(grid, predictions, reference, features)


def churn(previous: dict[str, float] | None, current: dict[str, float] | None) -> float:
    """``1 - Spearman`` of two prediction sets (id -> prediction) over their common ids; NaN when
    fewer than two ids are shared. 0: same ranking; 1: unrelated; 2: reversed."""
    if not previous or not current:
        return float("nan")
    shared = sorted(set(previous) & set(current))
    if len(shared) < 2:
        return float("nan")
    a = np.array([previous[i] for i in shared], dtype=np.float64)
    b = np.array([current[i] for i in shared], dtype=np.float64)
    codes = np.zeros(len(shared), dtype=np.intp)
    return float(1.0 - rank_correlation_by_era(a, b, codes, 1)[0])


def compounded_annual_return(per_era: np.ndarray, eras_per_year: int = ERAS_PER_YEAR) -> float:
    """APY-style growth of a stake that earns each era's score as a return, compounded and
    annualised: ``prod(1 + score) ** (eras_per_year / n) - 1``. Eras overlap (20-day targets,
    weekly eras), so this shows a model's shape, not a payout forecast."""
    scores = np.asarray(per_era, dtype=np.float64)
    scores = scores[~np.isnan(scores)]
    if scores.size == 0 or np.any(scores <= -1):
        return float("nan")
    growth = np.exp(np.log1p(scores).sum() * eras_per_year / scores.size)
    return float(growth - 1.0)


def calmar_ratio(per_era: np.ndarray, eras_per_year: int = ERAS_PER_YEAR) -> float:
    """Annualised mean score over the maximum drawdown of the cumulative score: return earned per
    unit of the worst losing streak. NaN without a drawdown."""
    scores = np.asarray(per_era, dtype=np.float64)
    scores = scores[~np.isnan(scores)]
    if scores.size == 0:
        return float("nan")
    cumulative = np.cumsum(scores)
    drawdown = float(np.max(np.maximum.accumulate(cumulative) - cumulative))
    if not drawdown > 0:
        return float("nan")
    return float(scores.mean() * eras_per_year / drawdown)
