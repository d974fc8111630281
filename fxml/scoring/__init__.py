"""Numerai scoring: per-era CORR, MMC, BMC, FNC and feature exposure matching numerai-tools,
vectorised across eras, and their summaries over eras.

The names below load on first use, so light modules of this package (``fxml.scoring.settings``,
read by the config schemas) import without pandas and SciPy.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_HOMES = {
    "SCORE_COLUMNS": "metrics",
    "corr_by_era": "metrics",
    "score_eras": "metrics",
    "max_drawdown": "summary",
    "mean_score": "summary",
    "sharpe": "summary",
    "std_score": "summary",
    "summarize": "summary",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(f"fxml.scoring.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
