"""Numerai's rules for a Classic submission, checked before anything is written or uploaded.

A valid file has columns ``id,prediction``, every live id exactly once and no other id, no NaN,
values within [0, 1] and a non-zero spread. :func:`validate_submission` checks each rule with a
message naming what broke, then runs ``numerai_tools.submissions.validate_submission_numerai``
(Numerai's own checks) when numerai-tools is installed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from fxml.data.layout import ID, PREDICTION
from fxml.errors import FxmlError
from fxml.scoring.ranks import rank_by_era

ID_COLUMN, PREDICTION_COLUMN = ID, PREDICTION
MIN_STD = 1e-9


def check_raw_predictions(predictions: np.ndarray, what: str = "live rows") -> None:
    """The model's own output: one finite number per row."""
    predictions = np.asarray(predictions, dtype=np.float64)
    bad = ~np.isfinite(predictions)
    if bad.any():
        raise FxmlError(f"the model predicted NaN or infinite values for {int(bad.sum())} of "
                        f"{len(predictions)} {what}")


def ranked_submission(ids: Sequence[str] | np.ndarray, predictions: np.ndarray,
                      eras: np.ndarray | None = None) -> pd.DataFrame:
    """Columns id, prediction: predictions ranked per era into (0, 1), ``(rank - 0.5) / n``."""
    return pd.DataFrame({ID_COLUMN: np.asarray(ids, dtype=str),
                         PREDICTION_COLUMN: rank_by_era(predictions, eras)})


def _examples(values: Sequence[str]) -> str:
    shown = ", ".join(str(v) for v in list(values)[:3])
    return shown + (", ..." if len(values) > 3 else "")


def validate_submission(submission: pd.DataFrame, live_ids: Sequence[str] | np.ndarray) -> None:
    """Raise FxmlError naming the first broken rule; return quietly when the file is valid."""
    columns = list(submission.columns)
    if columns != [ID_COLUMN, PREDICTION_COLUMN]:
        raise FxmlError(f"submission columns must be id,prediction (got {','.join(map(str, columns))})")
    ids = submission[ID_COLUMN]
    if ids.isna().any():
        raise FxmlError(f"{int(ids.isna().sum())} submission row(s) have no id")
    ids = ids.astype(str)
    duplicated = ids[ids.duplicated()].unique()
    if len(duplicated):
        raise FxmlError(f"{len(duplicated)} id(s) appear more than once: {_examples(duplicated)}")
    live = pd.Index(np.asarray(live_ids, dtype=str))
    missing = live.difference(pd.Index(ids))
    if len(missing):
        raise FxmlError(f"{len(missing)} of {len(live)} live id(s) have no prediction: "
                        f"{_examples(missing)}")
    extra = pd.Index(ids).difference(live)
    if len(extra):
        raise FxmlError(f"{len(extra)} id(s) are not in this round's live data: {_examples(extra)}")
    values = pd.to_numeric(submission[PREDICTION_COLUMN], errors="coerce")
    if values.isna().any():
        raise FxmlError(f"{int(values.isna().sum())} of {len(values)} predictions are NaN or not numbers")
    outside = ~values.between(0.0, 1.0)
    if outside.any():
        raise FxmlError(f"{int(outside.sum())} prediction(s) are outside [0, 1] "
                        f"(min {values.min():.4g}, max {values.max():.4g})")
    if not values.std() > MIN_STD:
        raise FxmlError(f"all {len(values)} predictions are equal ({values.iloc[0]:.4g}): "
                        "a submission needs a non-zero spread")
    _numerai_tools_check(submission, live)


def _numerai_tools_check(submission: pd.DataFrame, live: pd.Index) -> None:
    try:
        from numerai_tools.submissions import validate_submission_numerai
    except ImportError:
        return
    try:
        validate_submission_numerai(pd.Series(live, name=ID_COLUMN), submission.copy())
    except AssertionError as error:
        raise FxmlError(f"numerai-tools rejects the submission: {error}") from None
