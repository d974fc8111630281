"""Feature rows, one era at a time: how scoring reads features without holding them whole.

The feature-heavy metrics (FNC, feature exposure, the meta model's exposure direction, MPC's
neutralisers) need one era's feature rows at a time. Scoring takes either a plain in-memory
matrix or any object that hands over the rows of given row numbers (:class:`FeatureRows`). The
data layer passes the latter for a split kept in its int8 store file, so validation is read an era
at a time and never held whole, while scoring itself opens no file. A protocol rather than eras fed
by the caller keeps each metric one function of arrays, with its own order of eras.
"""

from __future__ import annotations

from typing import Protocol, TypeAlias, runtime_checkable

import numpy as np


@runtime_checkable
class FeatureRows(Protocol):
    """A (rows, features) matrix that is read by row numbers, not held."""

    @property
    def shape(self) -> tuple[int, int]: ...

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (row numbers, in the order given) as an in-memory matrix."""
        ...


Features: TypeAlias = "np.ndarray | FeatureRows"


def rows_of(features: Features, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` of ``features``: read from a :class:`FeatureRows`; of a matrix, a view when
    they are one ascending run (an era of an era-sorted split), else a copy."""
    if not isinstance(features, np.ndarray):
        return features.read(rows)
    if len(rows) and (np.diff(rows) == 1).all():
        return features[int(rows[0]) : int(rows[-1]) + 1]
    return features[rows]
