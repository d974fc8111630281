"""Memory policies: where the splits live and how many training eras are read.

A policy sees what a run will hold (the int8 payload of the training eras and of validation, and
the bytes the model's own training dataset takes) and returns a :class:`MemoryPlan`: the training
split and the model's dataset in memory or in the int8 store on disk (memory-mapped, streamed by
the models), and a stride over the training eras. ``memory=auto`` prefers, in order: everything in
memory; the store on disk; the store on disk with fewer training eras. Whatever the plan,
validation is read from its int8 store file a block of eras at a time (to predict) and an era at a
time (to score): it is read once per pass and never held whole.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import mmap
import os
import resource
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from fxml.errors import FxmlError, require

if TYPE_CHECKING:
    from fxml.data.split import Storage

log = logging.getLogger(__name__)
GIB = 1024**3
# what a run holds besides features and the model's dataset, per row (ids, eras, targets,
# predictions, scores) and in all (interpreter, libraries)
BYTES_PER_ROW = 160
BASE_BYTES = 512 * 2**20
# int8 bytes of the block of whole eras predicted at a time (at least one era): small against the
# split, large enough that a block is one read of the store file and a few model calls
SCORING_BLOCK_BYTES = 64 * 2**20
# what scoring holds per validation row beyond the above, while validation is scored: its per-era
# grids of predictions, targets, the meta model and the benchmark models (MMC, BMC, MPC); traced
# at ~1.0 GiB over what was held before scoring for v5.2's 3.6M validation rows
SCORER_BYTES_PER_VALIDATION_ROW = 300


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
        return trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to hand back this way
        return None


def return_freed_memory() -> None:
    """Hand the whole free pages of the C heap back to the operating system.

    glibc keeps freed blocks below its mmap threshold (which grows to 32 MiB as large arrays are
    freed) for reuse: after a model has built its dataset from the int8 rows, or validation has
    been predicted in blocks, that is memory nothing uses which would add to the next stage's
    peak. The runner calls this between its stages; a no-op where the C library is not glibc.
    Arrow's own allocator keeps the parquet blocks it decoded, so it gives back its unused pages too.
    """
    arrow = sys.modules.get("pyarrow")  # imported by the loader, not by a logged model
    if arrow is not None:
        arrow.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def release_file_pages(matrix: np.ndarray) -> None:
    """Drop the pages of a memory-mapped store file (``np.memmap``) from this process's resident
    memory: they stay in the kernel's page cache and are read again from the file if needed. A
    no-op for any other array."""
    if not isinstance(matrix, np.memmap):
        return
    pages: object = matrix.base
    if not isinstance(pages, mmap.mmap):
        return
    size = matrix.nbytes // mmap.PAGESIZE * mmap.PAGESIZE
    if size and matrix.offset % mmap.PAGESIZE == 0:
        pages.madvise(mmap.MADV_DONTNEED, 0, size)


def _owner(matrix: np.ndarray) -> tuple[np.ndarray, int]:
    """The array whose buffer ``matrix`` views (itself if none), and the byte of that buffer
    where ``matrix`` starts."""
    root = matrix
    while isinstance(root.base, np.ndarray):
        root = root.base
    return root, matrix.__array_interface__["data"][0] - root.__array_interface__["data"][0]


@dataclass(frozen=True)
class StoreRows:
    """Rows of an int8 store matrix read from its file (a seek and a read), into memory of the
    caller's: nothing of the file is mapped into the process, so rows read again and again (a
    deep model's batches, every epoch) stay in the kernel's page cache, not in the process's
    resident set or address space. Consecutive rows are one read. (Unbuffered ``readinto`` was
    measured faster than ``os.preadv`` per row, and runs everywhere.)"""

    path: str
    offset: int  # byte of the file where row 0 starts
    shape: tuple[int, int]

    @classmethod
    def of(cls, matrix: np.ndarray) -> StoreRows | None:
        """The file behind ``matrix`` when it is a C-order row range of a memory-mapped store
        (``np.memmap``); None for any other array."""
        root, start = _owner(matrix)
        if not isinstance(root, np.memmap) or root.filename is None or not matrix.flags.c_contiguous \
                or matrix.dtype != np.int8 or matrix.ndim != 2:
            return None
        return cls(root.filename, int(root.offset) + start, matrix.shape)

    def read(self, rows: np.ndarray, into: np.ndarray | None = None) -> np.ndarray:
        """Rows ``rows`` (row numbers, in the order given) as an in-memory int8 matrix: a new one,
        or the first ``len(rows)`` rows of ``into`` (C order, as wide as the store), reused."""
        rows = np.asarray(rows, dtype=np.int64)
        width = self.shape[1]
        out: np.ndarray = np.empty((len(rows), width), dtype=np.int8) if into is None else into[: len(rows)]
        if out.shape != (len(rows), width) or out.dtype != np.int8 or not out.flags.c_contiguous:
            raise ValueError(f"cannot read {len(rows)} rows of {width} int8 values into {out.shape}")
        if not len(rows) or not width:
            return out
        if rows.min() < 0 or rows.max() >= self.shape[0]:
            raise IndexError(f"row numbers outside 0..{self.shape[0] - 1}")
        buffer = memoryview(out.data).cast("B")
        starts = np.flatnonzero(np.diff(rows, prepend=rows[0] - 2) != 1)
        stops = np.append(starts[1:], len(rows))
        with open(self.path, "rb", buffering=0) as file:
            for first, last, row in zip(starts.tolist(), stops.tolist(), rows[starts].tolist(), strict=True):
                done, size = first * width, (last - first) * width
                at = self.offset + row * width
                file.seek(at)
                while size:
                    got = file.readinto(buffer[done : done + size]) or 0
                    if got <= 0:
                        raise FxmlError(f"{self.path}: the int8 store file is shorter than its "
                                        f"{self.shape[0]:,} rows; delete it to have it written again")
                    done, size = done + got, size - got
        return out

    def read_range(self, start: int, stop: int, into: np.ndarray | None = None) -> np.ndarray:
        return self.read(np.arange(start, stop), into)


def read_rows(matrix: np.ndarray, start: int, stop: int, into: np.ndarray | None = None) -> np.ndarray:
    """Rows ``[start, stop)`` of ``matrix`` for a reader that will read them again later: read
    from the store file when ``matrix`` is memory-mapped (nothing stays mapped; into ``into``
    when given, a buffer the reader reuses block after block), else a view."""
    store = StoreRows.of(matrix)
    if store is None:
        return matrix[start:stop]
    return store.read_range(start, min(stop, len(matrix)), into)


@dataclass(frozen=True)
class MemoryProfile:
    """What a model family holds while it trains, for memory plans: each family declares one.

    ``dataset_bytes_per_value``: bytes of the family's own training dataset (bins, quantiles) per
    int8 feature value, 0 for a family that trains from the int8 matrix itself;
    ``streamed_dataset_bytes_per_value``: the same when the plan puts the dataset on disk (None:
    as in memory; XGBoost's external-memory pages stay on disk);
    ``reads_rows_from_store``: the family reads its training rows a bounded piece at a time, so
    they come from the int8 store file even under an in-memory plan, never held whole;
    ``bytes_per_train_row`` and ``library_bytes``: what it holds per training row while it trains
    and the libraries imported for it.
    """

    dataset_bytes_per_value: float = 0.0
    streamed_dataset_bytes_per_value: float | None = None
    reads_rows_from_store: bool = False
    bytes_per_train_row: int = 0
    library_bytes: int = 0

    @property
    def streamed_bytes_per_value(self) -> float:
        if self.streamed_dataset_bytes_per_value is None:
            return self.dataset_bytes_per_value
        return self.streamed_dataset_bytes_per_value

    @classmethod
    def one_after_another(cls, profiles: list[MemoryProfile]) -> MemoryProfile:
        """The profile of models trained one after the other on the same rows (an ensemble's
        members): the largest of each need; rows from the store only if every one reads them so."""
        if not profiles:
            return cls()
        return cls(max(p.dataset_bytes_per_value for p in profiles),
                   max(p.streamed_bytes_per_value for p in profiles),
                   all(p.reads_rows_from_store for p in profiles),
                   max(p.bytes_per_train_row for p in profiles),
                   max(p.library_bytes for p in profiles))


@dataclass(frozen=True)
class MemoryNeed:
    """What a run would hold, in bytes, with every selected training era.

    A run holds its stages one after the other: the train matrix and the model's dataset while
    it trains (both freed after, with the family's per-row training arrays), then a block of
    validation eras while it is predicted and one era while it is scored, beside the scorer's
    per-era grids (validation is read from its store file, never held whole). The need is the
    larger stage, plus ids, targets and scores per row, the interpreter and the family's
    libraries. A model that reads its training rows a piece at a time (into its own dataset, or
    batch by batch) reads them from the int8 store file instead (``train_rows_from_store``): the
    train matrix is then not held beside the model.
    """

    train_features: int
    validation_features: int
    model_dataset: int
    rows: int
    train_eras: int
    streamed_model_dataset: int | None = None  # the model's dataset when trained from disk
    train_rows_from_store: bool = False
    validation_rows: int = 0  # scored rows: the scorer's grids while validation is scored
    # the model family's own: arrays per training row while it trains (a deep model's batch
    # feeder) and libraries imported for it (PyTorch and Lightning)
    training_bytes_per_train_row: int = 0
    library_bytes: int = 0

    def in_memory(self, every: int = 1) -> int:
        # LightGBM allocates all its bins before the first row and XGBoost reads every row in
        # several passes: an in-memory train matrix is whole beside their dataset at its peak
        rows = 0 if self.train_rows_from_store else self.train_features
        return max(self._training(rows + self.model_dataset, every), self._scoring()) + self._fixed()

    def with_beside_dataset(self, extra: int) -> MemoryNeed:
        """This need with ``extra`` bytes held in memory beside the model's dataset, whether that
        dataset is in memory or streamed (era_kfold's copy of a fold's training eras)."""
        streamed = None if self.streamed_model_dataset is None else self.streamed_model_dataset + extra
        return replace(self, model_dataset=self.model_dataset + extra, streamed_model_dataset=streamed)

    def on_disk(self, every: int = 1) -> int:
        dataset = self.model_dataset if self.streamed_model_dataset is None else self.streamed_model_dataset
        return max(self._training(dataset, every), self._scoring()) + self._fixed()

    def _training(self, held: int, every: int) -> int:
        train_rows = self.rows - self.validation_rows
        return (held + train_rows * self.training_bytes_per_train_row) // every

    def _scoring(self) -> int:
        return min(SCORING_BLOCK_BYTES, self.validation_features) \
            + self.validation_rows * SCORER_BYTES_PER_VALIDATION_ROW

    def _fixed(self) -> int:
        return self.rows * BYTES_PER_ROW + BASE_BYTES + self.library_bytes


@dataclass(frozen=True)
class MemoryPlan:
    storage: str  # "memory" or "disk": where the training rows and the model's dataset live
    every: int  # keep every nth training era
    reason: str

    def train_storage(self, profile: MemoryProfile) -> Storage:
        """Where the loader puts the training rows for a family (DataSplit.storage): ``disk`` under
        a disk plan, ``store`` for a family that reads them from the store file a piece at a time
        while its own dataset stays in memory, else ``memory``."""
        if self.storage == "disk":
            return "disk"
        return "store" if profile.reads_rows_from_store else "memory"

    def describe(self) -> str:
        """What was chosen and why, for the run's one memory line."""
        where = "in memory" if self.storage == "memory" else "streamed from the int8 store on disk"
        eras = "every training era" if self.every == 1 else f"1 training era in {self.every}"
        return f"training rows {where}, {eras} ({self.reason})"


class MemoryPolicy(Protocol):
    def plan(self, need: MemoryNeed) -> MemoryPlan: ...


# The policies' fields are the ``memory`` group's settings, defaults and checks, written once: the
# config schemas are derived from these classes (fxml.config.schema).


@dataclass
class InMemory:
    """Every selected training era, fully in memory (features stay int8)."""

    def plan(self, need: MemoryNeed) -> MemoryPlan:
        return MemoryPlan("memory", 1, "memory=in_memory")


@dataclass
class OnDisk:
    """Every selected training era in the int8 store on disk, memory-mapped and streamed."""

    def plan(self, need: MemoryNeed) -> MemoryPlan:
        return MemoryPlan("disk", 1, "memory=disk")


@dataclass
class EraSubsample:
    """Every nth era; with ``every=None`` the smallest stride whose feature matrix fits ``max_gib``."""

    every: int | None = None  # keep every nth training era; None: the smallest that fits max_gib
    max_gib: float = 4.0

    def __post_init__(self) -> None:
        if self.every is not None:
            require(self.every >= 1, "memory.every", "must be >= 1 or null", self.every)
        require(self.max_gib > 0, "memory.max_gib", "must be > 0", self.max_gib)

    def plan(self, need: MemoryNeed) -> MemoryPlan:
        if self.every:
            return MemoryPlan("memory", self.every, f"memory=era_subsample, memory.every={self.every}")
        every = max(1, math.ceil(need.train_features / (self.max_gib * GIB)))
        return MemoryPlan("memory", every, f"memory=era_subsample: the training features fit "
                                           f"memory.max_gib={self.max_gib:g}")


@dataclass
class Auto:
    """The cheapest plan that fits the memory actually available (or ``max_gib``, if smaller)."""

    max_gib: float | None = None  # plan for at most this much even if more is available
    headroom: float = 0.85  # share of the available memory a plan may use

    def __post_init__(self) -> None:
        if self.max_gib is not None:
            require(self.max_gib > 0, "memory.max_gib", "must be > 0 or null", self.max_gib)
        require(0 < self.headroom <= 1, "memory.headroom", "must be in (0, 1]", self.headroom)

    def plan(self, need: MemoryNeed) -> MemoryPlan:
        limit, source = available_memory()
        if self.max_gib is not None and self.max_gib * GIB < limit:
            limit, source = int(self.max_gib * GIB), "memory.max_gib"
        budget = int(limit * self.headroom)
        have = f"{_gib(budget)} usable of {_gib(limit)} ({source})"
        # under an address-space limit a memory-mapped store counts in full
        mapped = source.startswith("address-space")

        def in_memory(every: int) -> int:
            store_rows = need.train_features // every if need.train_rows_from_store else 0
            return need.in_memory(every) + (store_rows + need.validation_features if mapped else 0)

        if in_memory(1) <= budget:
            return MemoryPlan("memory", 1, f"memory=auto: needs {_gib(in_memory(1))} in memory, {have}")

        def streamed(every: int) -> int:
            files = need.train_features // every + need.validation_features if mapped else 0
            return need.on_disk(every) + files

        if streamed(1) <= budget:
            return MemoryPlan("disk", 1, f"memory=auto: in memory needs {_gib(in_memory(1))}, streamed from "
                                         f"the int8 store {_gib(streamed(1))}, {have}")
        for every in range(2, max(need.train_eras, 2) + 1):
            if in_memory(every) <= budget:
                return MemoryPlan("memory", every, f"memory=auto: all training eras need {_gib(streamed(1))} "
                                                   f"even streamed, {have}")
            if streamed(every) <= budget:
                return MemoryPlan("disk", every, f"memory=auto: all training eras need {_gib(streamed(1))} "
                                                 f"even streamed, {have}")
        # what does not fit is the run's fixed part (the scoring block, per-row arrays, the
        # interpreter), which fewer training eras barely change: stream them all and try
        log.warning("memory: even streamed from the int8 store with fewer training eras the run is "
                    "estimated at %s, more than %s; streaming every training era anyway",
                    _gib(streamed(need.train_eras)), have)
        return MemoryPlan("disk", 1, f"memory=auto: even streamed the run needs {_gib(streamed(1))} (over "
                                     f"{_gib(budget)}): every era streamed anyway, {have}")


def available_memory() -> tuple[int, str]:
    """Bytes the run may hold in all, and what limits it: the least of the system's available
    memory, a cgroup limit and an address-space limit. What this process holds already (the
    interpreter and its libraries) counts as available, since a plan's need includes it."""
    held = _proc_kib("/proc/self/status", "VmRSS") or 0
    candidates = [(_meminfo_available() + held, "available system memory")]
    cgroup = _cgroup_room(held)
    if cgroup is not None:
        candidates.append((cgroup, "cgroup memory limit"))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        candidates.append((max(soft - _own_virtual_bytes(), 0), "address-space limit (ulimit -v)"))
    return min(candidates)


def _meminfo_available() -> int:
    found = _proc_kib("/proc/meminfo", "MemAvailable")
    return found if found is not None else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _proc_kib(path: str, key: str) -> int | None:
    """A ``key: <n> kB`` line of a /proc file, in bytes; None where there is none."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cgroup_room(held: int) -> int | None:
    """Room under the tightest memory limit of this process's cgroup and its ancestors (cgroup
    v2 ``memory.max``, v1 ``memory.limit_in_bytes``) for a run that holds ``held`` already, at
    most the limit; None when nothing limits it. The group's usage counts the page cache of the
    files it read (the parquet files, the store); the inactive part of it is given back under
    pressure, so it is not counted as used."""
    rooms = []
    for folder, limit_name, usage_name in _cgroup_folders():
        try:
            limit = (folder / limit_name).read_text().strip()
            usage = int((folder / usage_name).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:
            room = max(int(limit) - usage + _inactive_file_bytes(folder), 0) + held
            rooms.append(min(room, int(limit)))
    return min(rooms) if rooms else None


def _inactive_file_bytes(folder: Path) -> int:
    """The group's inactive file pages, its descendants' included as its usage includes them
    (v2 ``inactive_file``; v1 ``total_inactive_file``, beside the group's own ``inactive_file``)."""
    try:
        pairs = (line.split() for line in (folder / "memory.stat").read_text().splitlines())
        stat = {pair[0]: int(pair[1]) for pair in pairs if len(pair) == 2 and pair[1].isdigit()}
    except OSError:
        return 0
    return stat.get("total_inactive_file", stat.get("inactive_file", 0))


def _cgroup_folders() -> list[tuple[Path, str, str]]:
    root = Path("/sys/fs/cgroup")
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2, mounted at the root or under unified/
            bases, names = [root, root / "unified"], ("memory.max", "memory.current")
        elif "memory" in controllers.split(","):
            bases, names = [root / "memory"], ("memory.limit_in_bytes", "memory.usage_in_bytes")
        else:
            continue
        parts = [part for part in path.split("/") if part]
        for base in bases:
            for depth in range(len(parts), -1, -1):
                found.append((base.joinpath(*parts[:depth]), *names))
    return found


def _own_virtual_bytes() -> int:
    return _proc_kib("/proc/self/status", "VmSize") or 0


def _gib(nbytes: int) -> str:
    return f"{nbytes / GIB:.1f} GiB"
