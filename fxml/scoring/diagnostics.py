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

from dataclasses import dataclass

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
from fxml.scoring.rows import Features, rows_of
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


@dataclass
class MetaReference:
    """The reference side (the meta model) of the rank correlation and the exposure
    dissimilarity, prepared once per split: per model each is then one dot product per era.

    With U and E the feature correlations of the model's and the reference's centred values p, m
    over an era's rows X (features' centred norms d_j), ``U.E = p.z / (|p| |m|)`` where
    ``z = X_c D^-1 X_c' m`` is a per-row vector that does not depend on the model.
    """

    grid: EraGrid
    ranks: np.ndarray  # centred percentile ranks of the reference (grid)
    ranks_norm2: np.ndarray  # per era
    exposure_direction: np.ndarray | None  # z (grid), None without features
    exposure_scale: np.ndarray | None  # per era |m| * E.E


def prepare_meta_reference(grid: EraGrid, reference: np.ndarray,
                           features: Features | None) -> MetaReference:
    """``reference`` (full-length) must be present on every row of ``grid``."""
    ranks = grid.centred(percentile_ranks(grid, grid_ranks(grid, reference)))
    direction = scale = None
    if features is not None:
        direction, scale = exposure_direction(grid, grid.centred(grid.place(reference)), features)
    return MetaReference(grid, ranks, np.einsum("ew,ew->e", ranks, ranks), direction, scale)


# Columns of an era's features converted to float at a time: at v5.2's 2,748 features a whole
# 6,000-row era would be a 132 MB float copy, made beside the core metrics' own.
EXPOSURE_COLUMNS = 512


def exposure_direction(grid: EraGrid, centred: np.ndarray,
                       features: Features) -> tuple[np.ndarray, np.ndarray]:
    """``z = X_c D^-1 X_c' m`` per era (grid) and ``|m| E.E`` per era, skipping features constant
    in the era. Each era's features are converted to float ``EXPOSURE_COLUMNS`` at a time; integer
    features make the column sums and squares exact."""
    direction = np.zeros_like(centred)
    scale = np.full(grid.n_eras, np.nan)
    starts = era_starts(grid.counts)
    for era in np.flatnonzero(grid.counts > 1):
        size = int(grid.counts[era])
        rows = grid.rows[starts[era]: starts[era] + size]
        era_rows = rows_of(features, rows)
        values = centred[era, :size]
        explained = 0.0
        for first in range(0, era_rows.shape[1], EXPOSURE_COLUMNS):
            block = era_rows[:, first: first + EXPOSURE_COLUMNS].astype(np.float64)
            sums = block.sum(axis=0)
            norms2 = np.einsum("rk,rk->k", block, block) - sums * sums / size
            cross = values @ block  # the centred values sum to 0: no feature centring needed
            usable = norms2 > 1e-9 * size
            inverse = np.where(usable, 1.0 / np.where(usable, norms2, 1.0), 0.0)
            weights = cross * inverse
            direction[era, :size] += block @ weights - sums @ weights / size
            explained += (cross * cross * inverse).sum()
        norm = np.sqrt(values @ values)
        scale[era] = norm * explained / (norm * norm)
    return direction, scale


def rank_correlation_with(reference: MetaReference, values: np.ndarray,
                          ranks: GridRanks | None = None) -> np.ndarray:
    """Spearman correlation of ``values`` with the prepared reference over its grid, per era."""
    grid = reference.grid
    own = grid.centred(percentile_ranks(grid, ranks or grid_ranks(grid, values)))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.einsum("ew,ew->e", own, reference.ranks) / np.sqrt(
            np.einsum("ew,ew->e", own, own) * reference.ranks_norm2)
    corr[grid.counts < 2] = np.nan
    return np.clip(corr, -1.0, 1.0)


def exposure_dissimilarity_with(reference: MetaReference, values: np.ndarray) -> np.ndarray:
    """``1 - U.E / E.E`` per era against the prepared reference."""
    assert reference.exposure_direction is not None and reference.exposure_scale is not None
    grid = reference.grid
    centred = grid.centred(grid.place(values))
    with np.errstate(invalid="ignore", divide="ignore"):
        dissimilarity = 1.0 - np.einsum("ew,ew->e", centred, reference.exposure_direction) / (
            np.sqrt(np.einsum("ew,ew->e", centred, centred)) * reference.exposure_scale)
    dissimilarity[~(reference.exposure_scale > 0)] = np.nan
    return dissimilarity


def rank_correlation_on_grid(grid: EraGrid, a: np.ndarray, b: np.ndarray,
                             a_ranks: GridRanks | None = None) -> np.ndarray:
    """Spearman correlation of ``a`` and ``b`` (full-length, no NaN on the grid's rows) per era."""
    return rank_correlation_with(prepare_meta_reference(grid, b, None), a, a_ranks)


def rank_correlation_by_era(a: np.ndarray, b: np.ndarray, codes: np.ndarray,
                            n_eras: int) -> np.ndarray:
    """Spearman correlation of ``a`` and ``b`` inside each era, over rows where both are present."""
    return rank_correlation_on_grid(era_grid(codes, n_eras, ~np.isnan(a) & ~np.isnan(b)), a, b)


def top_bottom_corr_on_grid(grid: EraGrid, predictions: np.ndarray, targets: np.ndarray,
                            top_bottom: int, ranks: GridRanks | None = None,
                            transformed: np.ndarray | None = None) -> np.ndarray:
    """``top_bottom_corr_by_era`` on a grid of the scored rows, reusing the predictions' ranks and
    their gaussianised, powered values when given."""
    ranks = ranks or grid_ranks(grid, predictions)
    if ranks.has_ties and not ranks.stable:  # which tied rows make the cut depends on their order
        ranks = grid_ranks(grid, predictions, stable=True)
    if transformed is None:
        transformed = gaussian_power_ranks(grid, ranks)
    powered_targets = grid.memo("powered_targets",
                                lambda: signed_power(grid.centred(grid.place(targets))))
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


def exposure_dissimilarity_by_era(predictions: np.ndarray, reference: np.ndarray,
                                  features: Features, codes: np.ndarray,
                                  n_eras: int) -> np.ndarray:
    """``1 - U.E / E.E`` per era, U and E the feature correlations of the predictions and of the
    reference over rows where the reference is present; features without a correlation (constant
    in the era) are left out of both sums."""
    grid = era_grid(codes, n_eras, ~np.isnan(reference))
    return exposure_dissimilarity_with(prepare_meta_reference(grid, reference, features), predictions)


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
