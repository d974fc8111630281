"""The model-independent parts of the comparison scores (a split's benchmark portfolio, the meta
model's ranks and exposure direction) as plain arrays, for a caller that keeps them between runs.

Preparing them costs more than scoring a model against them (one ranking per benchmark model), and
they depend only on the split's rows, targets and references and on the settings. Scoring opens no
file: it is handed a :class:`PartsCache` (the data layer's ``PreparedParts`` keeps ``.npz`` files
beside the release) and converts its parts to and from dicts of arrays here.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import numpy as np

from fxml.scoring.grid import EraGrid

log = logging.getLogger(__name__)
T = TypeVar("T")
_GRID_FIELDS = ("rows", "slots", "counts")


class PartsCache(Protocol):
    """Dicts of arrays kept under a name, between runs."""

    def load(self, name: str) -> dict[str, np.ndarray] | None: ...

    def save(self, name: str, arrays: dict[str, np.ndarray]) -> None: ...


def as_arrays(prepared: Any) -> dict[str, np.ndarray]:
    """A dataclass of arrays, floats, None and EraGrids as named arrays (None fields left out)."""
    arrays: dict[str, np.ndarray] = {}
    for item in dataclasses.fields(prepared):
        value = getattr(prepared, item.name)
        if isinstance(value, EraGrid):
            arrays.update({f"{item.name}.{name}": getattr(value, name) for name in _GRID_FIELDS})
            arrays[f"{item.name}.width"] = np.asarray(value.width)
        elif value is not None:
            arrays[item.name] = np.asarray(value)
    return arrays


def from_arrays(kind: type[T], arrays: dict[str, np.ndarray]) -> T:
    """``as_arrays``' inverse for the dataclass ``kind``."""
    values: dict[str, Any] = {}
    for item in dataclasses.fields(kind):  # type: ignore[arg-type]
        if f"{item.name}.rows" in arrays:
            rows, slots, counts = (arrays[f"{item.name}.{n}"] for n in _GRID_FIELDS)
            values[item.name] = EraGrid(rows, slots, counts, int(arrays[f"{item.name}.width"]))
        elif item.name in arrays:
            array = arrays[item.name]
            values[item.name] = float(array) if array.ndim == 0 else array
        else:
            values[item.name] = None
    return kind(**values)


def prepared(cache: PartsCache | None, name: str, kind: type[T], build: Callable[[], T]) -> T:
    """``build()``'s result, or the one ``cache`` kept under ``name`` (kept there once built)."""
    if cache is None:
        return build()
    arrays = cache.load(name)
    if arrays is not None:
        try:
            return from_arrays(kind, arrays)
        except (KeyError, TypeError, ValueError) as error:
            log.warning("scoring: preparing %s again (%s)", name.split()[0], error)
    value = build()
    cache.save(name, as_arrays(value))
    return value
