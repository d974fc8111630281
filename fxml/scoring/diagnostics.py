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

from fxml.scoring.eras import era_count, era_order, era_starts, era_sum, order_within_eras
from fxml.scoring.transforms import center_by_era, gaussianize, signed_power, tie_kept_rank

ERAS_PER_YEAR = 52  # validation eras are weekly


def pearson_of_centred(a: np.ndarray, b: np.ndarray, codes: np.ndarray, n_eras: int) -> np.ndarray:
    """Per-era Pearson correlation; NaN for an era with fewer than two rows or a constant input."""
    a = center_by_era(a, codes, n_eras)
    b = center_by_era(b, codes, n_eras)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = era_sum(a * b, codes, n_eras) / np.sqrt(
            era_sum(a * a, codes, n_eras) * era_sum(b * b, codes, n_eras))
    corr[era_count(codes, n_eras) < 2] = np.nan
    return np.clip(corr, -1.0, 1.0)


def rank_correlation_by_era(a: np.ndarray, b: np.ndarray, codes: np.ndarray,
                            n_eras: int) -> np.ndarray:
    """Spearman correlation of ``a`` and ``b`` inside each era, over rows where both are present."""
    rows = np.flatnonzero(~np.isnan(a) & ~np.isnan(b))
    ranks = [tie_kept_rank(v, codes, n_eras, order_within_eras(v, codes, n_eras, rows))[rows]
             for v in (a, b)]
    return pearson_of_centred(ranks[0], ranks[1], codes[rows], n_eras)


def top_bottom_corr_by_era(predictions: np.ndarray, targets: np.ndarray, codes: np.ndarray,
                           n_eras: int, top_bottom: int) -> np.ndarray:
    """Numerai CORR over the ``top_bottom`` highest and lowest predictions of each era.

    As numerai-tools: the target is centred over the era's scored rows and powered, predictions are
    ranked over those rows, then only the extreme rows enter the Pearson correlation. Ties at the
    cut are taken in row order (numerai-tools takes them in id order: the same when rows are sorted
    by id within eras, as in Numerai's files). An era with fewer than ``2 * top_bottom`` scored rows
    is NaN.
    """
    rows = np.flatnonzero(~np.isnan(targets))
    by_value = rows[np.argsort(predictions[rows], kind="stable")]
    order = by_value[np.argsort(codes[by_value], kind="stable")]
    counts = era_count(codes[rows], n_eras)
    transformed = signed_power(gaussianize(tie_kept_rank(predictions, codes, n_eras, order)))
    powered_targets = np.full(targets.shape, np.nan)
    powered_targets[rows] = signed_power(center_by_era(targets[rows], codes[rows], n_eras))

    position = np.arange(order.size) - np.repeat(era_starts(counts), counts)
    size = np.repeat(counts, counts)
    extreme = order[(position < top_bottom) | (position >= size - top_bottom)]
    corr = pearson_of_centred(transformed[extreme], powered_targets[extreme], codes[extreme], n_eras)
    corr[counts < 2 * top_bottom] = np.nan
    return corr


def feature_correlations_by_era(values: np.ndarray, features: np.ndarray, codes: np.ndarray,
                                n_eras: int, rows: np.ndarray) -> np.ndarray:
    """(n_eras, features) Pearson correlation of ``values`` with each feature over ``rows`` of each
    era; a feature constant in the era (or constant values) gives NaN."""
    out = np.full((n_eras, features.shape[1]), np.nan)
    kept_codes = codes[rows]
    counts = era_count(kept_codes, n_eras)
    ordered = rows[era_order(kept_codes, n_eras)]
    starts = era_starts(counts)
    for era in np.flatnonzero(counts > 1):
        era_rows = ordered[starts[era]: starts[era] + counts[era]]
        block = features[era_rows].astype(np.float64)
        block -= block.mean(axis=0)
        centred = values[era_rows] - values[era_rows].mean()
        with np.errstate(invalid="ignore", divide="ignore"):
            out[era] = (centred @ block) / np.sqrt((block * block).sum(axis=0) * (centred @ centred))
    return out


def exposure_dissimilarity_by_era(predictions: np.ndarray, reference: np.ndarray,
                                  features: np.ndarray, codes: np.ndarray,
                                  n_eras: int) -> np.ndarray:
    """``1 - U.E / E.E`` per era, U and E the feature correlations of the predictions and of the
    reference over rows where the reference is present; features without a correlation (constant
    in the era) are left out of both sums."""
    rows = np.flatnonzero(~np.isnan(reference))
    model = feature_correlations_by_era(predictions, features, codes, n_eras, rows)
    ref = feature_correlations_by_era(reference, features, codes, n_eras, rows)
    both = ~np.isnan(model) & ~np.isnan(ref)
    overlap = np.where(both, model * ref, 0.0).sum(axis=1)
    ref_norm = np.where(both, ref * ref, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        dissimilarity = 1.0 - overlap / ref_norm
    dissimilarity[~(ref_norm > 0)] = np.nan
    return dissimilarity


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
