"""The one contract every model family honours, so the runner never special-cases a family.

``fit(train, validation, on_step)`` learns from int8 features, ``predict(features, eras)`` returns
one float per row (``eras`` matters only to per-era steps such as rank-averaging ensembles or
neutralisation; ``None`` means all rows are one era, as in a live round), and ``save(dir)`` /
``load(dir)`` round-trip exactly: a model reloaded from MLflow
predicts bit for bit what the run logged.
"""

from __future__ import annotations

import dataclasses
import json
from abc import ABC, abstractmethod
from collections.abc import Iterator
from importlib import import_module
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from fxml.data.memory import SCORING_BLOCK_BYTES, read_rows
from fxml.data.split import DataSplit
from fxml.data.split import labelled_rows as labelled_rows  # re-exported for the families
from fxml.models.params import ModelParams, params_signature
from fxml.steps import StepCallback

MANIFEST = "fxml_model.json"
PREDICT_CHUNK_ROWS = 65_536
# float32 bytes of one prediction chunk: at 2,748 features 65,536 rows would be 720 MB
PREDICT_CHUNK_BYTES = 64 * 2**20


def predict_chunk_rows(n_features: int) -> int:
    return max(1024, min(PREDICT_CHUNK_ROWS, PREDICT_CHUNK_BYTES // (4 * max(n_features, 1))))


class TabularModel(ABC):
    """Base class: subclasses implement ``fit``, ``predict_float32`` and the state round-trip."""

    # bytes per int8 feature value that the family's own training dataset takes (bins,
    # quantiles), for memory plans; 0 for families that train from the int8 matrix itself
    dataset_bytes_per_value: ClassVar[float] = 0.0
    # the same when training from the int8 store on disk (None: as in memory); XGBoost's
    # external-memory pages stay on disk
    streamed_dataset_bytes_per_value: ClassVar[float | None] = None
    # the family reads the training rows a bounded piece at a time (to build that dataset, or
    # batch by batch each epoch): even when a run's plan is in memory, the rows then come from
    # the int8 store file (the kernel's page cache, handed back as they are read) instead of a
    # whole copy held in the process beside the model
    train_rows_from_store: ClassVar[bool] = False
    # what the family holds per training row while it trains, and the libraries imported for it
    # beyond the interpreter's (memory plans count both)
    training_bytes_per_train_row: ClassVar[int] = 0
    library_bytes: ClassVar[int] = 0
    # the family's parameters (fxml.models.params): the constructor takes exactly these and runs
    # their checks; None (wrappers such as NeutralizedModel) keeps the options as given
    params_class: ClassVar[type[ModelParams] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "params_class" in vars(cls) and cls.params_class is not None:
            cls.__signature__ = params_signature(cls.params_class)  # type: ignore[attr-defined]

    def __init__(self, *args: Any, **options: Any) -> None:
        if self.params_class is None:
            assert not args, f"{type(self).__name__} takes keyword options only"
            self.options = options
            return
        given = params_signature(self.params_class).bind(*args, **options).arguments
        self.params = self.params_class(**given)
        # a plain dict, as logged, saved in the manifest and read by the family's fit/predict
        self.options: dict[str, Any] = {f.name: getattr(self.params, f.name)
                                         for f in dataclasses.fields(self.params)}

    @property
    def uses_validation(self) -> bool:
        """Whether ``fit`` reads the validation split (early stopping, per-step scores): if not,
        the runner loads validation only after training."""
        return True

    @abstractmethod
    def fit(
        self,
        train: DataSplit,
        validation: DataSplit | None = None,
        on_step: StepCallback | None = None,
    ) -> TabularModel: ...

    @abstractmethod
    def predict_float32(self, features: np.ndarray) -> np.ndarray:
        """Predict a float32 block of rows (already converted from int8)."""

    def predict(self, features: np.ndarray, eras: np.ndarray | None = None) -> np.ndarray:
        """Predict int8 rows in bounded float32 chunks: no full-size float copy."""
        out = np.empty(len(features), dtype=np.float64)
        for start, block in float32_chunks(features, predict_chunk_rows(features.shape[1])):
            out[start : start + len(block)] = self.predict_float32(block)
        return out

    def fitted_params(self) -> dict[str, float]:
        """Values ``fit`` chose that the runner logs as MLflow params (an ensemble's weights);
        models do not log themselves."""
        return {}

    @abstractmethod
    def save_state(self, directory: Path) -> None: ...

    @abstractmethod
    def load_state(self, directory: Path) -> None: ...

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        manifest = {"class": f"{type(self).__module__}.{type(self).__qualname__}",
                    "options": self.options}
        (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
        self.save_state(directory)


def load_model(directory: Path) -> TabularModel:
    manifest = json.loads((directory / MANIFEST).read_text())
    module, _, name = manifest["class"].rpartition(".")
    model = getattr(import_module(module), name)(**manifest["options"])
    model.load_state(directory)
    return model


def float32_chunks(features: np.ndarray, rows: int) -> Iterator[tuple[int, np.ndarray]]:
    for start in range(0, len(features), rows):
        yield start, np.asarray(features[start : start + rows], dtype=np.float32)


def predict_in_era_blocks(model: TabularModel, split: DataSplit,
                          block_bytes: int = SCORING_BLOCK_BYTES) -> np.ndarray:
    """Predictions for an era-sorted split, whole eras at a time when it lives on disk, so that no
    more than ``block_bytes`` of its features are read at once (every family predicts a row from
    its row and its era alone, so blocks of whole eras give the same values as one call)."""
    if split.storage != "disk":
        return model.predict(split.features, split.eras)
    row_bytes = max(split.features.shape[1], 1)
    boundaries = np.flatnonzero(np.diff(split.eras)) + 1
    starts = np.concatenate([[0], boundaries, [len(split)]])
    out = np.empty(len(split), dtype=np.float64)
    lo = 0
    while lo < len(split):
        # the furthest era boundary within the budget, at least one era
        limit = lo + max(block_bytes // row_bytes, 1)
        candidates = starts[(starts > lo) & (starts <= limit)]
        hi = int(candidates[-1]) if len(candidates) else int(starts[starts > lo][0])
        # read from the store file, so that the blocks already predicted do not stay mapped
        out[lo:hi] = model.predict(read_rows(split.features, lo, hi), split.eras[lo:hi])
        lo = hi
    return out
