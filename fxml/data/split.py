"""One split's rows as aligned arrays: the shape every model, scorer and runner passes around.

NumPy only, so that a logged model (which needs ``DataSplit`` and nothing of the loader) loads
without Polars or PyArrow.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from fxml.data.memory import StoreRows, read_rows
from fxml.errors import FxmlError

# the target Numerai pays on (``target_ender_20`` in v5.2 and v5.3): every split is scored on it,
# whatever target a model trains on
MAIN_TARGET = "target"

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
    by id: ~90 bytes a row as Python strings, 0.23 GiB of v5.2's full train).

    ``target`` is the column named ``target_name``: the release's main target as loaded, or the
    target a model trains on (:meth:`with_target`); ``extra`` holds the other targets loaded."""

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
    target_name: str = MAIN_TARGET

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
                         None if self.file_rows is None else self.file_rows[index], self.target_name)

    def with_target(self, name: str) -> DataSplit:
        """The same rows with the target ``name`` as ``target`` (a model that trains on an
        auxiliary target); the current target moves to ``extra``. Nothing is copied."""
        if name == self.target_name:
            return self
        if name not in self.extra:
            loaded = ", ".join([self.target_name, *sorted(self.extra)])
            raise FxmlError(f"target {name} is not loaded with the {self.name} split (loaded: {loaded})")
        extra = {key: values for key, values in self.extra.items() if key != name}
        if self.target is not None:
            extra[self.target_name] = self.target
        return replace(self, target=self.extra[name], target_name=name, extra=extra)

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


def labelled_eras(split: DataSplit) -> np.ndarray:
    """The eras of ``split`` with at least one value of its target, ascending (not the unresolved
    eras at the end of validation, nor of a final fit's ``full.parquet``)."""
    eras = split.eras if split.target is None else split.eras[~np.isnan(split.target)]
    return np.unique(eras)


def rows_without_target(split: DataSplit) -> int:
    """How many rows of ``split`` have no value of its target (left out of training)."""
    return 0 if split.target is None else int(np.isnan(split.target).sum())


@dataclass(frozen=True)
class TrainingRows:
    """The rows of a split a model learns from: those whose target is known (Numerai's auxiliary
    targets are NaN in some training rows). The split's feature matrix is never copied for them: a
    family reads them a block at a time (:meth:`block`). ``positions`` are their row numbers in
    ``features``; None when they are all of its rows (then ``features`` may be read in place)."""

    features: np.ndarray
    positions: np.ndarray | None
    target: np.ndarray
    eras: np.ndarray
    extra: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.target)

    @property
    def n_features(self) -> int:
        return int(self.features.shape[1])

    @property
    def whole(self) -> np.ndarray | None:
        """The feature matrix when it holds exactly these rows, for readers that take a matrix."""
        return self.features if self.positions is None else None

    def block(self, start: int, stop: int, into: np.ndarray | None = None) -> np.ndarray:
        """int8 features of rows ``[start, stop)`` of these rows: a view of an in-memory matrix where
        they are consecutive, else read into ``into`` (a buffer reused block after block) or a new
        block; rows of the store file are read from it, never mapped."""
        if self.positions is None:
            return read_rows(self.features, start, stop, into)
        rows = self.positions[start:stop]
        store = StoreRows.of(self.features)
        if store is not None:
            return store.read(rows, into)
        if into is None:
            return self.features[rows]
        out = into[: len(rows)]
        np.take(self.features, rows, axis=0, out=out)
        return out


def training_rows(split: DataSplit) -> TrainingRows:
    """The rows of ``split`` whose target is known, as a family trains on them: every row, or its
    labelled ones by row number (a view when they are one run of rows, as where a long-horizon
    target is unresolved in the last eras)."""
    if split.target is None:
        raise FxmlError(f"the {split.name} split has no target to train on")
    known = ~np.isnan(split.target)
    if not known.any():
        raise FxmlError(f"no row of the {split.name} split has a value of {split.target_name} to train on")
    if known.all():
        return TrainingRows(split.features, None, split.target, split.eras, split.extra)
    positions = np.flatnonzero(known)
    one_run = positions[-1] - positions[0] + 1 == len(positions)
    index: slice | np.ndarray = slice(int(positions[0]), int(positions[-1]) + 1) if one_run else positions
    return TrainingRows(split.features[index] if one_run else split.features,
                        None if one_run else positions, split.target[index], split.eras[index],
                        {name: values[index] for name, values in split.extra.items()})
