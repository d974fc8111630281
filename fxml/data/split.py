"""One split's rows as aligned arrays: the shape every model, scorer and runner passes around.

NumPy only, so that a logged model (which needs ``DataSplit`` and nothing of the loader) loads
without Polars or PyArrow.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fxml.data.memory import return_freed_memory


@dataclass
class DataSplit:
    """Rows of one split, aligned arrays, sorted by era; ``features`` is int8 (rows, features),
    C order, in memory or memory-mapped from the int8 store (``storage``: where the rows are).
    ``ids`` is None where the split was read without them (train, when nothing reports its rows
    by id: ~90 bytes a row as Python strings, 0.23 GiB of v5.2's full train)."""

    name: str
    ids: np.ndarray | None
    eras: np.ndarray
    features: np.ndarray
    target: np.ndarray | None
    feature_names: list[str]
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    storage: str = "memory"
    # each row's row number in its parquet file, for reading more columns of the same rows
    file_rows: np.ndarray | None = None
    # the runner hands over a split it will not read again: a model may then drop its features
    # once it has built its own training data (see ``release_features``)
    releasable: bool = False
    # the memory plan is on disk: a model that can keep its own dataset on disk too does so
    # (XGBoost's external memory); rows read from the store under an in-memory plan leave it False
    dataset_on_disk: bool = False

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
        return DataSplit(self.name, ids, self.eras[index], self.features[index],
                         None if self.target is None else self.target[index], self.feature_names,
                         {name: values[index] for name, values in self.extra.items()}, self.storage,
                         None if self.file_rows is None else self.file_rows[index],
                         dataset_on_disk=self.dataset_on_disk)

    def era_range(self, first: int, last: int) -> DataSplit:
        """Eras ``first`` to ``last`` (inclusive): a view of the era-sorted rows."""
        lo, hi = np.searchsorted(self.eras, [first, last + 1])
        keep = np.zeros(len(self), dtype=bool)
        keep[lo:hi] = True
        return self.rows(keep)

    def release_features(self) -> None:
        """Drop the feature matrix if the runner said it will not need it again (the model has
        its own binned copy): the int8 train matrix is then freed during training."""
        if self.releasable:
            self.features = np.empty((0, len(self.feature_names)), dtype=np.int8)
            return_freed_memory()


def labelled_rows(split: DataSplit) -> DataSplit:
    """The rows of a split whose target is known: the unresolved eras at the end of an era-sorted
    validation split are cut off as a view, not a copy."""
    assert split.target is not None
    return split.rows(~np.isnan(split.target))
