"""Era bookkeeping: every Numerai metric is computed within an era, so rows are
mapped to dense era codes once and per-era reductions become ``np.bincount`` calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Era numbers spanning more than this (or twice the row count) use np.unique instead of a
# lookup table, which would cost 8 bytes per possible era number.
_MAX_LOOKUP_SPAN = 1 << 16


@dataclass(frozen=True)
class EraCodes:
    """Dense era codes: per-era arrays can then be indexed by ``codes`` directly."""

    labels: np.ndarray  # sorted distinct era numbers; labels[code] is the era number
    codes: np.ndarray  # per row, an index into labels (intp)

    @property
    def n_eras(self) -> int:
        return int(self.labels.size)


def encode_eras(eras: np.ndarray) -> EraCodes:
    """Map era numbers to 0..n_eras-1 in ascending era order.

    Era numbers are small dense integers in practice, so a lookup table gives the codes in
    one linear pass instead of the sort that ``np.unique`` needs.
    """
    eras = np.asarray(eras)
    if eras.ndim != 1:
        raise ValueError(f"eras must be 1-D, got shape {eras.shape}")
    if not np.issubdtype(eras.dtype, np.integer):
        raise ValueError(
            f"eras must hold integer era numbers, got dtype {eras.dtype} "
            "(convert strings such as '0001' with .astype(int) first)"
        )
    if eras.size == 0:
        return EraCodes(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.intp))
    low, high = int(eras.min()), int(eras.max())
    span = high - low + 1
    if span <= max(_MAX_LOOKUP_SPAN, 2 * eras.size):
        offsets = (eras - low).astype(np.intp, copy=False)
        present = np.bincount(offsets, minlength=span) > 0
        lookup = np.cumsum(present) - 1
        labels = np.flatnonzero(present).astype(np.int64) + low
        return EraCodes(labels, lookup[offsets].astype(np.intp, copy=False))
    labels, codes = np.unique(eras, return_inverse=True)
    return EraCodes(labels.astype(np.int64), codes.astype(np.intp, copy=False))


def era_count(codes: np.ndarray, n_eras: int) -> np.ndarray:
    """Rows per era: the N of every per-era mean and of the rank denominator."""
    return np.bincount(codes, minlength=n_eras)


def era_sum(values: np.ndarray, codes: np.ndarray, n_eras: int) -> np.ndarray:
    """Per-era sum; bincount is one linear pass, unlike a groupby."""
    return np.bincount(codes, weights=values, minlength=n_eras)


def era_mean(values: np.ndarray, codes: np.ndarray, n_eras: int) -> np.ndarray:
    """Per-era mean (NaN for an era without rows, which callers never score)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return era_sum(values, codes, n_eras) / era_count(codes, n_eras)


def era_starts(counts: np.ndarray) -> np.ndarray:
    """Offset of each era's first row once rows are sorted by era."""
    starts = np.zeros(counts.size, dtype=np.intp)
    np.cumsum(counts[:-1], out=starts[1:])
    return starts


def _sortable_codes(codes: np.ndarray, n_eras: int) -> np.ndarray:
    # numpy's stable sort is a radix sort for 16-bit integers: much faster than on intp.
    return codes.astype(np.uint16) if n_eras <= np.iinfo(np.uint16).max + 1 else codes


def era_order(codes: np.ndarray, n_eras: int) -> np.ndarray:
    """Row order that makes each era contiguous while keeping the input order inside an era,
    so feature rows of an era sorted on disk are read sequentially."""
    return np.argsort(_sortable_codes(codes, n_eras), kind="stable")


def order_within_eras(
    values: np.ndarray, codes: np.ndarray, n_eras: int, rows: np.ndarray | None = None
) -> np.ndarray:
    """Indices of ``rows`` (all rows if None) sorted by era, then by value.

    One global value sort followed by a stable era sort is cheaper than ``np.lexsort`` and
    yields the per-era sorted runs that tie-kept ranking needs.
    """
    by_value = np.argsort(values) if rows is None else rows[np.argsort(values[rows])]
    by_era = np.argsort(_sortable_codes(codes[by_value], n_eras), kind="stable")
    return by_value[by_era]
