"""The model-independent parts of the comparison scores (a split's benchmark portfolio, the meta
model's ranks and exposure direction), kept between runs.

Preparing them costs more than scoring a model against them (one ranking per benchmark model), and
they depend only on the release files, the split's rows and targets, and the settings. They are
kept in memory for the process (an in-process sweep) and as ``.npz`` files beside the release, so a
later ``fxml.run`` on the same split loads them instead of preparing them again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from fxml.scoring.grid import EraGrid

log = logging.getLogger(__name__)
T = TypeVar("T")
_MEMORY: dict[tuple, Any] = {}
_MEMORY_ENTRIES = 6
_GRID_FIELDS = ("rows", "slots", "counts")


def cache_file(folder: Path, key: tuple) -> Path:
    return folder / f"{hashlib.sha256(repr(key).encode()).hexdigest()[:32]}.npz"


def save_prepared(path: Path, prepared: Any) -> None:
    """A dataclass of arrays, floats, None and EraGrids as one ``.npz`` (written atomically)."""
    arrays: dict[str, np.ndarray] = {}
    for item in dataclasses.fields(prepared):
        value = getattr(prepared, item.name)
        if isinstance(value, EraGrid):
            arrays.update({f"{item.name}.{name}": getattr(value, name) for name in _GRID_FIELDS})
            arrays[f"{item.name}.width"] = np.asarray(value.width)
        elif value is not None:
            arrays[item.name] = np.asarray(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.{os.getpid()}.npz")
    np.savez(partial, **arrays)
    os.replace(partial, path)


def load_prepared(path: Path, kind: type[T]) -> T:
    with np.load(path) as stored:
        values: dict[str, Any] = {}
        for item in dataclasses.fields(kind):  # type: ignore[arg-type]
            if f"{item.name}.rows" in stored:
                values[item.name] = EraGrid(*(stored[f"{item.name}.{n}"] for n in _GRID_FIELDS),
                                            int(stored[f"{item.name}.width"]))
            elif item.name in stored:
                array = stored[item.name]
                values[item.name] = float(array) if array.ndim == 0 else array
            else:
                values[item.name] = None
    return kind(**values)


def prepared(key: tuple, kind: type[T], build: Callable[[], T | None],
             folder: Path | None = None) -> T | None:
    """``build()``'s result for ``key``: from memory, else from ``folder``, else built (and kept in
    both). A file that cannot be read is rebuilt."""
    if key in _MEMORY:
        return _MEMORY[key]
    path = cache_file(folder, key) if folder is not None else None
    value: T | None = None
    if path is not None and path.is_file():
        try:
            value = load_prepared(path, kind)
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("scoring: rebuilding %s (%s)", path.name, error)
    if value is None:
        value = build()
        if value is not None and path is not None:
            try:
                save_prepared(path, value)
            except OSError as error:  # a read-only data folder: keep it in memory only
                log.warning("scoring: cannot keep %s (%s)", path, error)
    if len(_MEMORY) >= _MEMORY_ENTRIES:
        _MEMORY.clear()
    _MEMORY[key] = value
    return value
