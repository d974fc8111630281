"""Era codes and per-era ranks: the small pieces that models (ensembles, neutralisation),
scoring and submission checks share."""

from __future__ import annotations

import numpy as np

from fxml.scoring.eras import encode_eras, order_within_eras
from fxml.scoring.transforms import tie_kept_rank


def era_codes(eras: np.ndarray | None, n_rows: int) -> tuple[np.ndarray, int]:
    """Dense era codes; ``None`` means every row is in one era (a live round)."""
    if eras is None:
        return np.zeros(n_rows, dtype=np.intp), 1
    encoded = encode_eras(np.asarray(eras))
    return encoded.codes, encoded.n_eras


def rank_by_era(values: np.ndarray, eras: np.ndarray | None = None) -> np.ndarray:
    """``(rank - 0.5) / n`` inside each era, ties sharing their average rank (pandas'
    ``rank(method="average")``), so every value lies strictly inside (0, 1). NaN stays NaN and
    does not count in ``n``."""
    values = np.asarray(values, dtype=np.float64)
    codes, n_eras = era_codes(eras, len(values))
    order = order_within_eras(values, codes, n_eras)
    order = order[~np.isnan(values[order])]
    return tie_kept_rank(values, codes, n_eras, order)
