"""The one contract every model family honours, so the runner never special-cases a family.

``fit(train, validation, on_step)`` learns from int8 features, ``predict(features, eras)`` returns
one float per row (``eras`` matters only to per-era steps such as rank-averaging ensembles or
neutralisation; ``None`` means all rows are one era, as in a live round), and ``save(dir)`` /
``load(dir)`` round-trip exactly: a model reloaded from MLflow
predicts bit for bit what the run logged.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np

from fxml.data.loader import DataSplit

# on_step(step, total_steps, metrics): progress bars and, later, pruning hooks listen here
StepCallback = Callable[[int, int, dict[str, float]], None]
MANIFEST = "fxml_model.json"
PREDICT_CHUNK_ROWS = 65_536


class TabularModel(ABC):
    """Base class: subclasses implement ``fit``, ``predict_float32`` and the state round-trip."""

    def __init__(self, **options: Any) -> None:
        self.options = options

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
        for start, block in float32_chunks(features, PREDICT_CHUNK_ROWS):
            out[start : start + len(block)] = self.predict_float32(block)
        return out

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


def labelled_rows(split: DataSplit) -> DataSplit:
    """The rows of a split whose target is known (recent validation eras are unresolved)."""
    assert split.target is not None
    keep = ~np.isnan(split.target)
    if keep.all():
        return split
    return DataSplit(split.name, split.ids[keep], split.eras[keep], split.features[keep],
                     split.target[keep], split.feature_names,
                     {name: values[keep] for name, values in split.extra.items()})
