"""One split's rows as aligned arrays: the shape every model, scorer and runner passes around.

NumPy only, so that a logged model (which needs ``DataSplit`` and nothing of the loader) loads
without Polars or PyArrow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

# where a split's feature rows live, set by the loader from the run's memory plan:
# - memory: an int8 matrix the split holds;
# - store: the int8 store file (np.memmap), read a bounded piece at a time; a model builds its own
#   dataset in memory;
# - disk: the same, and the plan is on disk: a model keeps its own dataset on disk too where it can
#   (XGBoost's external memory).
Storage = Literal["memory", "store", "disk"]


@dataclass(frozen=True)
class DataSplit:
    """Rows of one split, aligned arrays, sorted by era; ``features`` is int8 (rows, features),
    C order (``storage``: where the rows live). Nothing changes a split once it is made: a model
    reads its rows and never frees or alters them; its caller's references decide their lifetime.
    ``ids`` is None where the split was read without them (train, when nothing reports its rows
    by id: ~90 bytes a row as Python strings, 0.23 GiB of v5.2's full train)."""

    name: str
    ids: np.ndarray | None
    eras: np.ndarray
    features: np.ndarray
    target: np.ndarray | None
    feature_names: list[str]
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    storage: Storage = "memory"
    # each row's row number in its parquet file, for reading more columns of the same rows
    file_rows: np.ndarray | None = None

    @property
    def in_store(self) -> bool:
        """Whether the rows are read from the int8 store file (``store`` or ``disk``)."""
        return self.storage != "memory"

    def __len__(self) -> int:
        return len(self.eras)

    @property
    def n_eras(self) -> int:
        return len(np.unique(self.eras))

    def rows(self, keep: np.ndarray) -> DataSplit:
        """The rows where ``keep`` is true: a view when they are one contiguous run (unresolved
        eras at the end of validation, an era range of an era-sorted split), else a copy."""
        where = np.flatnonzero(keep)
        if len(where) == len(self):
            return self
        if len(where) and where[-1] - where[0] + 1 == len(where):
            index: slice | np.ndarray = slice(int(where[0]), int(where[-1]) + 1)
        else:
            index = where
        ids = None if self.ids is None else self.ids[index]
        features = self.features[index]
        # rows picked out of a store file are copied into memory
        storage = self.storage if isinstance(index, slice) else "memory"
        return DataSplit(self.name, ids, self.eras[index], features,
                         None if self.target is None else self.target[index], self.feature_names,
                         {name: values[index] for name, values in self.extra.items()}, storage,
                         None if self.file_rows is None else self.file_rows[index])

    def era_range(self, first: int, last: int) -> DataSplit:
        """Eras ``first`` to ``last`` (inclusive): a view of the era-sorted rows."""
        lo, hi = np.searchsorted(self.eras, [first, last + 1])
        keep = np.zeros(len(self), dtype=bool)
        keep[lo:hi] = True
        return self.rows(keep)


def labelled_rows(split: DataSplit) -> DataSplit:
    """The rows of a split whose target is known: the unresolved eras at the end of an era-sorted
    validation split are cut off as a view, not a copy."""
    assert split.target is not None
    return split.rows(~np.isnan(split.target))
