"""The one contract every model family honours, so the runner never special-cases a family.

A family is one class and one parameters dataclass (``fxml.models.params``):

- ``Model(**params)`` builds the family's typed parameters (``self.params``), which run their
  checks; ``memory`` declares what the family holds while it trains (a :class:`MemoryProfile`,
  read by the memory planner);
- ``fit(train, validation, on_step)`` learns ``train.target`` from int8 features (``validation``:
  the inner holdout it may early-stop on), from the rows whose target is known only
  (``training_rows``: Numerai's auxiliary targets are NaN in some rows), and never changes or
  frees what it is given;
- ``predict(features, eras)`` returns one float per row (``eras`` matters only to per-era steps
  such as rank-averaging ensembles or neutralisation; ``None``: all rows are one era, as live);
- ``save(dir)`` / ``load_model(dir)`` round-trip exactly: a reloaded model predicts bit for bit
  what the run logged. A family neither logs to MLflow nor touches files beyond ``save``/``load``.

``docs/adding-a-model.md`` walks through a new family; ``tests/test_model_contract.py`` is the
conformance check every family passes.
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

from fxml.data.memory import SCORING_BLOCK_BYTES, MemoryProfile, read_rows, return_freed_memory
from fxml.data.split import DataSplit
from fxml.data.split import labelled_rows as labelled_rows  # re-exported for the families
from fxml.data.split import training_rows as training_rows
from fxml.models.params import ModelParams
from fxml.steps import StepCallback

MANIFEST = "fxml_model.json"
PREDICT_CHUNK_ROWS = 65_536
# float32 bytes of one prediction chunk: at 2,748 features 65,536 rows would be 720 MB
PREDICT_CHUNK_BYTES = 64 * 2**20


def predict_chunk_rows(n_features: int) -> int:
    return max(1024, min(PREDICT_CHUNK_ROWS, PREDICT_CHUNK_BYTES // (4 * max(n_features, 1))))


class TabularModel(ABC):
    """Base class: subclasses set ``params_class`` (and ``memory`` where they hold more than the
    int8 rows), and implement ``fit``, ``predict_float32`` and the state round-trip."""

    params_class: ClassVar[type[ModelParams]]
    memory: ClassVar[MemoryProfile] = MemoryProfile()

    def __init__(self, **params: Any) -> None:
        self.params = self.params_class(**params)

    def memory_profile(self) -> MemoryProfile:
        """What training this model holds, for the memory planner: the family's ``memory``
        (models made of others, such as ensembles, combine their parts')."""
        return self.memory

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

    def fitted_params(self) -> dict[str, float | str]:
        """Values ``fit`` chose that the runner logs as MLflow params (an ensemble's weights and
        its members' targets); models do not log themselves."""
        return {}

    def targets_read(self) -> dict[str, str]:
        """Targets ``fit`` reads besides the one it is given (auxiliary outputs, an ensemble's
        members' own targets), each with the setting that names it: the runner loads them with
        the training rows."""
        return {}

    @abstractmethod
    def save_state(self, directory: Path) -> None: ...

    @abstractmethod
    def load_state(self, directory: Path) -> None: ...

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        manifest = {"class": f"{type(self).__module__}.{type(self).__qualname__}",
                    "options": dataclasses.asdict(self.params)}
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
    if not split.in_store:
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
    return_freed_memory()  # the blocks read and their float copies, before the caller's next stage
    return out
