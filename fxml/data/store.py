"""The era-indexed int8 feature store: parquet row groups streamed into one preallocated matrix.

A split's feature matrix is written once, row group by row group and a few hundred columns at a
time, straight into a C-order int8 array: in memory (``np.empty``) or in a file on disk that is
then memory-mapped. No table of the whole split, no float copy, no second matrix ever exists, so
peak memory is the matrix plus one bounded block. Rows are sorted by era (stable), so an era or a
run of eras is a row range of the matrix: a view, never a copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fxml.data.leftovers import remove_dead_leftovers
from fxml.data.memory import release_file_pages
from fxml.errors import FxmlError, child_failure

log = logging.getLogger(__name__)
# bytes of one decoded block (row group rows x columns read at once)
BLOCK_BYTES = 64 * 2**20
# columns per block when a row group is small enough; 256 measured fastest for the transposing write
BLOCK_COLUMNS = 256
# rows per transposing write: keeps source and destination of one write in cache
WRITE_ROWS = 1024
MISSING_POLICIES = ("error", "fill")
# a store file at least this large is written by a child process: the parquet reader's buffers
# and the heap they leave behind are the child's, not the run's (measured at v5.2 1/16 `all`:
# XGBoost's first run peaked 70 MiB higher than one reusing the store); smaller stores are not
# worth the start of a process
CHILD_WRITER_BYTES = 256 * 2**20


@dataclass(frozen=True)
class MissingFeatures:
    """What a missing (null or NaN) feature value does: stop the run, or become ``fill``."""

    policy: str = "error"
    fill: int = 2

    def __post_init__(self) -> None:
        if self.policy not in MISSING_POLICIES:
            raise FxmlError(f"data.missing_features must be error or fill (got {self.policy!r})")
        if not 0 <= self.fill <= 127:
            raise FxmlError(f"data.missing_fill must be an int8 feature value 0..127 (got {self.fill})")


@dataclass(frozen=True)
class RowPlan:
    """Where the selected rows of a file land: ``source`` file rows (ascending) go to
    ``destination`` rows of the matrix, which orders them by era (stable)."""

    source: np.ndarray
    destination: np.ndarray

    @property
    def n_rows(self) -> int:
        return len(self.source)


@dataclass(frozen=True)
class FilePart:
    """The planned rows of one parquet file; a matrix holds its parts one after the other (v5.2's
    train and validation as one final-fit matrix, in era order)."""

    path: Path
    plan: RowPlan


def plan_rows(file_eras: np.ndarray, keep: np.ndarray) -> RowPlan:
    """The rows whose era is kept (``keep`` a boolean per file row), era-sorted in the matrix."""
    source = np.flatnonzero(keep)
    order = np.argsort(file_eras[source], kind="stable")
    destination = np.empty(len(source), dtype=np.int64)
    destination[order] = np.arange(len(source))
    return RowPlan(source=source.astype(np.int64), destination=destination)


def fill_matrix(path: Path, columns: list[str], plan: RowPlan, out: np.ndarray,
                missing: MissingFeatures) -> int:
    """Write the ``columns`` of the planned rows of ``path`` into ``out`` (rows, len(columns)).

    Returns how many missing values were filled (0 unless ``missing.policy == "fill"``).
    """
    parquet = pq.ParquetFile(path)
    filled = 0
    first_row = 0
    for group in range(parquet.metadata.num_row_groups):
        group_rows = parquet.metadata.row_group(group).num_rows
        lo, hi = np.searchsorted(plan.source, [first_row, first_row + group_rows])
        local = plan.source[lo:hi] - first_row
        destination = plan.destination[lo:hi]
        first_row += group_rows
        if not len(local):
            continue
        step = max(1, min(BLOCK_COLUMNS, BLOCK_BYTES // max(group_rows, 1)))
        for start in range(0, len(columns), step):
            names = columns[start : start + step]
            try:
                table = parquet.read_row_group(group, columns=names)
            except (pa.ArrowException, OSError) as error:
                raise FxmlError(f"cannot read {path}: {str(error).splitlines()[0]}") from None
            block = np.empty((len(names), len(local)), dtype=np.int8)
            every_row = len(local) == group_rows
            for j, name in enumerate(names):
                values, was_missing = int8_column(table.column(j), name, path, missing)
                block[j] = values if every_row else values[local]
                if was_missing is not None:
                    filled += int(was_missing.sum() if every_row else was_missing[local].sum())
            _write_transposed(out, destination, start, block)
    return filled


def _write_transposed(out: np.ndarray, destination: np.ndarray, column: int, block: np.ndarray) -> None:
    """``out[destination, column:column + len(block)] = block.T``, cache-friendly."""
    width = len(block)
    contiguous = destination[-1] - destination[0] + 1 == len(destination) and (
        len(destination) < 2 or bool(np.all(np.diff(destination) == 1)))
    for start in range(0, block.shape[1], WRITE_ROWS):
        part = block[:, start : start + WRITE_ROWS].T
        if contiguous:
            first = int(destination[start])
            out[first : first + len(part), column : column + width] = part
        else:
            out[destination[start : start + WRITE_ROWS], column : column + width] = part


def int8_column(column: pa.ChunkedArray, name: str, path: Path,
                missing: MissingFeatures) -> tuple[np.ndarray, np.ndarray | None]:
    """One feature column as int8, with missing values (null, or NaN in a float column) filled or
    reported by name, and where values were filled (None if none was); a value outside int8 or
    not a whole number is an error."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_floating(array.type):
        array = pc.if_else(pc.is_nan(array), pa.scalar(None, array.type), array)
    n_missing = array.null_count
    was_missing = None
    if n_missing:
        if missing.policy == "error":
            raise FxmlError(
                f"{path.name}: feature column {name} has missing values ({n_missing:,} rows); "
                "data.missing_features=fill fills them with data.missing_fill (default 2)")
        was_missing = array.is_null().to_numpy(zero_copy_only=False)
        array = pc.fill_null(array, pa.scalar(missing.fill).cast(array.type))
    if array.type != pa.int8():
        try:
            array = pc.cast(array, pa.int8(), safe=True)
        except pa.ArrowInvalid:
            raise FxmlError(f"{path.name}: feature column {name} has values that are not int8 "
                            "feature values (0..4)") from None
    return array.to_numpy(zero_copy_only=False), was_missing


def fill_parts(parts: list[FilePart], columns: list[str], out: np.ndarray,
               missing: MissingFeatures) -> int:
    """Each part's planned rows into its run of ``out``'s rows, one part after the other."""
    filled, start = 0, 0
    for part in parts:
        filled += fill_matrix(part.path, columns, part.plan, out[start : start + part.plan.n_rows], missing)
        start += part.plan.n_rows
    return filled


def store_key(parts: list[FilePart], columns: list[str], missing: MissingFeatures) -> str:
    """Names one store file: its parquet files (size, mtime), the columns, the rows, the fill rule."""
    digest = hashlib.sha256()
    for index, part in enumerate(parts):
        stat = part.path.stat()
        # one file keeps the key it always had; a second file's goes after it
        digest.update(f"{part.path.name}:{stat.st_size}:{stat.st_mtime_ns}:{missing}".encode())
        if index == 0:
            digest.update("\0".join(columns).encode())
        digest.update(part.plan.source.tobytes())
    return digest.hexdigest()[:20]


def disk_matrix(parts: list[FilePart], columns: list[str], missing: MissingFeatures,
                directory: Path, name: str) -> tuple[np.ndarray, int]:
    """The planned rows as a read-only memory-mapped int8 matrix in ``directory`` (its file named
    after ``name``, the split, and a key of its parquet files' names, sizes and times, columns,
    rows and fill rule), written on first use and reused after: a store file is complete once its
    ``.json`` record exists, and whole while its size and sampled content match the record."""
    key = store_key(parts, columns, missing)
    matrix_path = directory / f"{name}-{key}.int8"
    info_path = matrix_path.with_suffix(".json")
    shape = (sum(part.plan.n_rows for part in parts), len(columns))
    if info_path.is_file() and matrix_path.is_file():
        info = _written_info(info_path)
        if info is not None and tuple(info["shape"]) == shape \
                and matrix_path.stat().st_size == shape[0] * shape[1] \
                and info.get("sample") == sample_digest(matrix_path):
            log.info("data: reusing the int8 store %s", matrix_path)
            return np.memmap(matrix_path, dtype=np.int8, mode="r", shape=shape), info["filled"]
        # a store is a cache of the parquet file: a damaged one (cut short, its record
        # unreadable) is written again
        log.warning("data: the int8 store %s is incomplete or damaged; writing it again", matrix_path)
    remove_dead_leftovers(directory)
    partial = matrix_path.with_name(matrix_path.name + f".{os.getpid()}.partial")
    try:
        _allocate(partial, shape[0] * shape[1])
        write = _write_in_child if shape[0] * shape[1] >= CHILD_WRITER_BYTES else write_store_file
        filled = write(parts, columns, missing, partial, shape)
        os.replace(partial, matrix_path)
    finally:
        _remove(partial)
    sources = ", ".join(part.path.name for part in parts)
    record = json.dumps({"shape": list(shape), "filled": filled, "source": sources,
                         "sample": sample_digest(matrix_path)})
    try:
        info_path.write_text(record)
    except OSError as error:  # room for the matrix, none for its record (a full disk)
        _remove(info_path)
        _remove(matrix_path)
        raise StoreUnavailable(f"cannot write the int8 store's record {info_path}: "
                               f"{error.strerror or error}") from None
    # stores of other feature sets and era selections stay beside it: say what the folder holds
    # (files other runs are writing now included)
    stores = sum(file.stat().st_size for file in matrix_path.parent.iterdir() if file.is_file())
    log.info("data: wrote the int8 store %s (%s MiB; the stores in its folder take %s MiB in all, "
             "which deleting the folder reclaims)", matrix_path, f"{shape[0] * shape[1] / 2**20:,.1f}",
             f"{stores / 2**20:,.1f}")
    return np.memmap(matrix_path, dtype=np.int8, mode="r", shape=shape), filled


def write_store_file(parts: list[FilePart], columns: list[str], missing: MissingFeatures,
                     destination: Path, shape: tuple[int, int]) -> int:
    """Fill the allocated store file ``destination`` with the planned rows; the filled count."""
    writable = np.memmap(destination, dtype=np.int8, mode="r+", shape=shape)
    filled = fill_parts(parts, columns, writable, missing)
    writable.flush()
    # the written pages stay in the page cache; out of this process's resident set before the
    # model reads them again through the read-only map
    release_file_pages(writable)
    return filled


def _write_in_child(parts: list[FilePart], columns: list[str], missing: MissingFeatures,
                    destination: Path, shape: tuple[int, int]) -> int:
    """``write_store_file`` in a new interpreter that imports only this module (a fork would copy
    the run's threads and their locks mid-use; multiprocessing's spawn would import the run's own
    entry point again). The task goes in on stdin and the result comes back on stdout, both
    pickled; an interrupted run kills the child, and a killed one leaves it to end by itself."""
    package_root = str(Path(__file__).resolve().parents[2])
    search_path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": search_path}
    task = (parts, columns, missing, destination, shape)
    done = subprocess.run([sys.executable, "-m", "fxml.data.store"], input=pickle.dumps(task),
                          capture_output=True, env=env, check=False)
    try:
        outcome, value = pickle.loads(done.stdout)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError):
        why = child_failure(done.stderr.decode(errors="replace"), done.returncode)
        raise FxmlError(f"writing the int8 store {destination} failed: {why}") from None
    if outcome == "error":
        raise FxmlError(value)
    return value


def _end_with_the_parent(every: float = 0.5) -> None:
    """The child writer ends once the run that started it is gone (SIGKILL, an OOM kill), instead
    of writing on for nobody: a thread watches for the child being handed to another parent."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, name="fxml-parent-watch", daemon=True).start()


def _child_writes_a_store() -> None:
    from fxml.data.store import write_store_file  # the importable module: the task's classes live there

    _end_with_the_parent()
    result: tuple[str, int | str]
    try:
        result = ("filled", write_store_file(*pickle.loads(sys.stdin.buffer.read())))
    except FxmlError as error:
        result = ("error", str(error))
    sys.stdout.buffer.write(pickle.dumps(result))


SAMPLED_BLOCKS, SAMPLED_BYTES = 64, 1 << 16


def sample_digest(path: Path) -> str:
    """A digest of 64 blocks of 64 KiB spread over the store file, its first and last included:
    4 MiB read whatever the store's size, so a store changed on disk since it was written (same
    size, other bytes) is seen as damaged before it is reused."""
    size = path.stat().st_size
    starts = sorted({size * block // SAMPLED_BLOCKS for block in range(SAMPLED_BLOCKS)}
                    | {max(size - SAMPLED_BYTES, 0)})
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for start in starts:
            file.seek(start)
            digest.update(file.read(SAMPLED_BYTES))
    return digest.hexdigest()[:32]


def _written_info(info_path: Path) -> dict[str, Any] | None:
    """A store's record (its shape and filled count), or None when it cannot be read."""
    try:
        info = json.loads(info_path.read_text())
        return info if isinstance(info, dict) and {"shape", "filled"} <= info.keys() else None
    except (OSError, ValueError):
        return None


class StoreUnavailable(FxmlError):
    """The int8 store file cannot be written (no space, a read-only folder)."""


def _allocate(path: Path, nbytes: int) -> None:
    """Reserve the store file's blocks before it is memory-mapped: a full disk is then an error
    here, not a SIGBUS when a written page is flushed to a block the file system cannot give."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as file:
            os.posix_fallocate(file.fileno(), 0, max(nbytes, 1))
    except OSError as error:
        _remove(path)
        raise StoreUnavailable(f"cannot write the int8 store {path.parent} ({nbytes / 2**30:.2f} GiB): "
                               f"{error.strerror or error}") from None


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):  # nothing there, or a folder that never was one
        path.unlink(missing_ok=True)


def memory_matrix(parts: list[FilePart], columns: list[str],
                  missing: MissingFeatures) -> tuple[np.ndarray, int]:
    out = np.empty((sum(part.plan.n_rows for part in parts), len(columns)), dtype=np.int8)
    return out, fill_parts(parts, columns, out, missing)


if __name__ == "__main__":
    _child_writes_a_store()
