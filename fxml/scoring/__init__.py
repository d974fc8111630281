"""Numerai scoring: per-era CORR, MMC, BMC, FNC and feature exposure matching numerai-tools,
vectorised across eras, and their summaries over eras."""

from fxml.scoring.metrics import SCORE_COLUMNS, score_eras
from fxml.scoring.summary import max_drawdown, mean_score, sharpe, std_score, summarize

__all__ = [
    "SCORE_COLUMNS",
    "max_drawdown",
    "mean_score",
    "score_eras",
    "sharpe",
    "std_score",
    "summarize",
]
