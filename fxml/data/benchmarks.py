"""Every prediction column of a release's ``{split}_benchmark_models.parquet``, aligned to a split.

The loader reads one reference column at a time (BMC); a portfolio of models (MPC) needs them all.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from fxml.data.layout import DATA_TYPE, ERA, ID, check_parquet
from fxml.errors import FxmlError

NOT_PREDICTIONS = (ID, ERA, DATA_TYPE, "__index_level_0__")


def prediction_columns(path: Path) -> list[str]:
    """The model columns of a benchmark file: every numeric column but id, era and data_type."""
    check_parquet(path)
    schema = pl.read_parquet_schema(path)
    return [name for name, dtype in schema.items()
            if name not in NOT_PREDICTIONS and dtype.is_numeric()]


def benchmark_predictions(path: Path, ids: np.ndarray,
                          columns: list[str] | None = None) -> tuple[list[str], np.ndarray]:
    """(column names, float64 matrix rows x columns) of the benchmark models in ``path`` for the
    rows ``ids`` in their order; an id absent from the file gets NaN. ``columns=None``: all."""
    available = prediction_columns(path)
    wanted = available if columns is None else list(columns)
    missing = [name for name in wanted if name not in available]
    if missing or not wanted:
        raise FxmlError(f"{path.name} has no prediction column {missing[0] if missing else ''!s}"
                        f" (columns: {', '.join(available) or 'none'})")
    try:
        frame = pl.read_parquet(path, columns=[ID, *wanted])
    except Exception as error:
        raise FxmlError(f"cannot read {path}: {str(error).splitlines()[0]}") from None
    frame = frame.select(pl.col(ID).cast(pl.String), pl.col(wanted).cast(pl.Float64))
    aligned = pl.DataFrame({ID: np.asarray(ids).astype(str)}).join(
        frame, on=ID, how="left", maintain_order="left")
    matrix = aligned.select(wanted).fill_nan(None).to_numpy().astype(np.float64)
    return wanted, matrix
