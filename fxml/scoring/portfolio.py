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

All eras are computed at once: per-era dot products are ``bincount`` sums over era codes.
"""

from __future__ import annotations

import numpy as np

from fxml.scoring.eras import era_sum, order_within_eras
from fxml.scoring.transforms import center_by_era, gaussianize, signed_power, tie_kept_rank

# numerai-tools divides the stake gradient by 50, a scale that brings it near CORR's range.
MPC_SCALE = 50.0
# Singular values below this fraction of the largest are dropped when a neutraliser basis is built.
NEUTRALIZER_RCOND = 1e-10


def portfolio_signals(predictions: np.ndarray, codes: np.ndarray, n_eras: int,
                      kept: np.ndarray) -> np.ndarray:
    """Per column, signed 1.5 power of gaussianised tie-kept ranks among the ``kept`` rows of each
    era (NaN elsewhere): each model's position in the portfolio before neutralisation."""
    rows = np.flatnonzero(kept)
    signals = np.full(predictions.shape, np.nan)
    for column in range(predictions.shape[1]):
        values = predictions[:, column]
        order = order_within_eras(values, codes, n_eras, rows)
        signals[:, column] = signed_power(gaussianize(tie_kept_rank(values, codes, n_eras, order)))
    return signals


def stake_weights(stakes: np.ndarray) -> np.ndarray:
    """Stakes scaled to sum to 1 in absolute value, as numerai-tools' ``weight_normalize``."""
    stakes = np.nan_to_num(np.asarray(stakes, dtype=np.float64))
    total = np.abs(stakes).sum()
    if not total > 0:
        raise ValueError("the portfolio's stakes must not all be zero")
    return stakes / total


def neutralizer_basis(columns: np.ndarray) -> np.ndarray:
    """Orthonormal basis of the span of ``columns`` and a constant, for one era's rows.

    numerai-tools' weights subtract ``N N'(q s)``, a projection only when ``N`` has orthonormal
    columns; features become such a basis first (directions without variance are dropped)."""
    block = np.column_stack([np.asarray(columns, dtype=np.float64), np.ones(len(columns))])
    left, singular, _ = np.linalg.svd(block, full_matrices=False)
    return left[:, singular > NEUTRALIZER_RCOND * singular.max()]


def neutral_weights(signals: np.ndarray, sample_weights: np.ndarray,
                    neutralizers: np.ndarray | None, codes: np.ndarray, n_eras: int,
                    kept: np.ndarray) -> np.ndarray:
    """Portfolio weights of each model: signals with the neutralisers' span removed, times the
    sample weights. ``neutralizers`` (rows, m) are raw columns (features), turned into an
    orthonormal basis per era; None neutralises nothing."""
    weighted = signals * sample_weights[:, None]
    if neutralizers is None:
        return weighted
    weights = np.full(signals.shape, np.nan)
    rows = np.flatnonzero(kept)
    by_era = np.split(rows[np.argsort(codes[rows], kind="stable")],
                      np.cumsum(np.bincount(codes[rows], minlength=n_eras))[:-1])
    for era_rows in by_era:
        if era_rows.size == 0:
            continue
        basis = neutralizer_basis(neutralizers[era_rows])
        fitted = basis @ (basis.T @ weighted[era_rows])
        weights[era_rows] = (signals[era_rows] - fitted) * sample_weights[era_rows, None]
    return weights


def meta_portfolio_contribution_by_era(
    predictions: np.ndarray,
    stakes: np.ndarray,
    targets: np.ndarray,
    codes: np.ndarray,
    n_eras: int,
    *,
    sample_weights: np.ndarray | None = None,
    neutralizers: np.ndarray | None = None,
) -> np.ndarray:
    """MPC of every model per era: (n_eras, models); column k is model k's gradient.

    ``predictions`` (rows, models) holds every model of the portfolio; rows with a NaN target,
    prediction or sample weight are left out of their era (numerai-tools drops them too). An era
    without rows, or whose portfolio is flat, is NaN.
    """
    predictions = np.asarray(predictions, dtype=np.float64)
    if predictions.ndim != 2 or predictions.shape[1] != len(stakes):
        raise ValueError(f"predictions must be (rows, {len(stakes)}), got {predictions.shape}")
    n_rows = predictions.shape[0]
    weights_q = np.ones(n_rows) if sample_weights is None else np.asarray(sample_weights, float)
    kept = ~np.isnan(targets) & ~np.isnan(predictions).any(axis=1) & ~np.isnan(weights_q)
    rows = np.flatnonzero(kept)
    kept_codes = codes[rows]

    signals = portfolio_signals(predictions, codes, n_eras, kept)
    weights = neutral_weights(signals, weights_q, neutralizers, codes, n_eras, kept)[rows]
    weights -= _era_means(weights, kept_codes, n_eras)[kept_codes]
    portfolio = weights @ stake_weights(stakes)
    portfolio = center_by_era(portfolio, kept_codes, n_eras)
    centred_targets = center_by_era(targets[rows], kept_codes, n_eras)

    portfolio_norm2 = era_sum(portfolio * portfolio, kept_codes, n_eras)
    portfolio_return = era_sum(portfolio * centred_targets, kept_codes, n_eras)
    contribution = np.empty((n_eras, predictions.shape[1]))
    with np.errstate(invalid="ignore", divide="ignore"):
        for k in range(predictions.shape[1]):
            model_return = era_sum(weights[:, k] * centred_targets, kept_codes, n_eras)
            overlap = era_sum(weights[:, k] * portfolio, kept_codes, n_eras)
            contribution[:, k] = (model_return - portfolio_return * overlap / portfolio_norm2) / (
                np.sqrt(portfolio_norm2) * MPC_SCALE)
    contribution[~(portfolio_norm2 > 0)] = np.nan
    return contribution


def _era_means(matrix: np.ndarray, codes: np.ndarray, n_eras: int) -> np.ndarray:
    counts = np.bincount(codes, minlength=n_eras).astype(np.float64)
    sums = np.stack([era_sum(matrix[:, k], codes, n_eras) for k in range(matrix.shape[1])], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts[:, None]
