"""Summaries of per-era scores: Numerai judges a model by the level, the stability and the
worst losing streak of its per-era scores, not by one pooled number."""

from __future__ import annotations

import numpy as np
import pandas as pd


def mean_score(scores: np.ndarray) -> float:
    """Average per-era score: the expected payout driver."""
    return float(np.mean(scores)) if scores.size else float("nan")


def std_score(scores: np.ndarray) -> float:
    """Era-to-era volatility, population std (ddof=0) as numerai-tools' sharpe_ratio uses."""
    return float(np.std(scores)) if scores.size else float("nan")


def sharpe(scores: np.ndarray) -> float:
    """Mean over std: consistency across eras. NaN when std is zero (one era, or a
    constant score), where the ratio says nothing."""
    std = std_score(scores)
    if not std > 0:
        return float("nan")
    return mean_score(scores) / std


def max_drawdown(scores: np.ndarray) -> float:
    """Largest fall of the cumulative score below its running peak, as in Numerai's example
    scripts: ``(cumsum.expanding(min_periods=1).max() - cumsum).max()``. The peak starts at
    the first era's cumulative score, not at zero."""
    if not scores.size:
        return float("nan")
    cumulative = np.cumsum(scores)
    return float(np.max(np.maximum.accumulate(cumulative) - cumulative))


# Per-era levels rather than returns: how exposed to its features, or how similar to the meta
# model, a model is in each era. Their mean and std describe them; a sharpe (mean over std of an
# always-positive exposure) or a drawdown of their cumulative sum (which never falls) measures
# nothing, so neither is computed for them.
LEVELS = frozenset({"feature_exposure", "meta_model_rank_corr", "exposure_dissimilarity"})
# ``score_eras``' flag of the eras whose predictions are constant (1.0; every score there is
# NaN): counted, not summarised as a score.
CONSTANT_PREDICTIONS = "constant_predictions"
SCORE_STATISTICS = ("mean", "std", "sharpe", "max_drawdown")
LEVEL_STATISTICS = ("mean", "std")


def statistics_of(column: str) -> tuple[str, ...]:
    """The summary statistics ``summarize`` gives a per-era column."""
    return LEVEL_STATISTICS if column in LEVELS else SCORE_STATISTICS


def summarize(per_era: pd.DataFrame) -> dict[str, float]:
    """Summary statistics of each column of ``score_eras``' output (and of any column a caller
    added, such as a payout score), each over the eras where that column is not NaN, in era
    order.

    Keys: ``{column}_mean``, ``_std``, ``_sharpe``, ``_max_drawdown`` for each score column,
    only ``_mean`` and ``_std`` for the levels of ``LEVELS``; ``feature_exposure_max`` (mean
    over eras of the per-era maximum feature correlation, Numerai's usual exposure figure; the
    same number as ``feature_exposure_mean``) when exposure was scored; ``n_eras``, the number
    of eras with a CORR score, and ``constant_prediction_eras``, the number of eras left out of
    every score because the predictions were constant there (0.0 without the
    ``constant_predictions`` column, which ``score_eras`` adds only when there are some).
    """
    per_era = per_era.sort_index()
    measures = {"mean": mean_score, "std": std_score, "sharpe": sharpe, "max_drawdown": max_drawdown}
    summary: dict[str, float] = {}
    for column in per_era.columns:
        if column == CONSTANT_PREDICTIONS:
            continue
        values = per_era[column].to_numpy(dtype=np.float64)
        values = values[~np.isnan(values)]
        for statistic in statistics_of(column):
            summary[f"{column}_{statistic}"] = measures[statistic](values)
    if "feature_exposure" in per_era.columns:
        summary["feature_exposure_max"] = summary["feature_exposure_mean"]
    if "corr" in per_era.columns:
        summary["n_eras"] = int(per_era["corr"].notna().sum())
        # NaN where per-era frames without the column were concatenated (folds without such eras)
        flags = per_era.get(CONSTANT_PREDICTIONS)
        summary["constant_prediction_eras"] = (
            float(np.nansum(flags.to_numpy(dtype=np.float64))) if flags is not None else 0.0
        )
    return summary
