"""Batches straight from the int8 feature matrix, a whole batch per indexing operation.

The matrix stays int8 (on the accelerator when it fits, else in host memory); each batch is one
``index_select`` of its rows, moved to the device as int8 and converted to float there. No
per-row ``__getitem__``, no collate step, no float copy of the whole matrix. A matrix in the int8
store on disk that stays on the host is not held at all: each batch's rows are read from the
store file (the kernel's page cache) when the batch is taken.

Two batch plans:

- shuffled: a fresh random permutation of the rows each epoch, cut into ``batch_size`` slices;
- era batches: each batch is ``eras_per_batch`` whole eras (eras shuffled each epoch), the unit
  a per-era correlation loss wants to see.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from fxml.data.memory import StoreRows

log = logging.getLogger(__name__)
# share of the accelerator's free memory the resident int8 matrix may take
DEVICE_MEMORY_SHARE = 0.5
# rows of a store file copied to the accelerator at a time
HOST_BLOCK_BYTES = 64 * 2**20

Batch = tuple[Tensor, Tensor, Tensor]


def fits_on(device: torch.device, nbytes: int) -> bool:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return nbytes <= DEVICE_MEMORY_SHARE * free
    if device.type == "mps":
        recommended = torch.mps.recommended_max_memory()
        return nbytes <= DEVICE_MEMORY_SHARE * (recommended - torch.mps.current_allocated_memory())
    return True


def era_codes(eras: np.ndarray) -> tuple[np.ndarray, int]:
    """Era labels to codes 0..n-1 (in sorted era order) and the number of eras."""
    labels, codes = np.unique(eras, return_inverse=True)
    return codes.astype(np.int64), len(labels)


class BatchFeeder:
    """An iterable of ``(features, targets, era_codes)`` batches on ``device``.

    ``features`` float32 (rows, n_features) with the raw 0..4 values, ``targets`` float32
    (rows, n_targets), ``era_codes`` int64 (rows,). Each ``iter()`` is one epoch.
    """

    def __init__(
        self,
        features: np.ndarray,
        targets: np.ndarray,
        eras: np.ndarray,
        batch_size: int,
        device: torch.device | str = "cpu",
        era_batches: bool = False,
        eras_per_batch: int = 1,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        positions: np.ndarray | None = None,
    ) -> None:
        if features.dtype != np.int8:
            raise TypeError(f"features must be int8, got {features.dtype}")
        self.device = torch.device(device)
        self.batch_size, self.dtype = batch_size, dtype
        self.era_batches, self.eras_per_batch = era_batches, eras_per_batch
        codes, self.n_eras = era_codes(eras)
        home = self.device if fits_on(self.device, features.nbytes) else torch.device("cpu")
        if home != self.device:
            log.info("data: int8 features (%.0f MiB) stay in host memory, batches copied to %s",
                     features.nbytes / 2**20, self.device)
        self.home = home
        self.store = StoreRows.of(features) if home.type == "cpu" else None
        if self.store is not None:
            log.info("data: batches read from the int8 store %s", self.store.path)
        self.features = None if self.store is not None else resident(features, home)
        if targets.ndim == 1:
            targets = targets[:, None]
        self.targets = torch.from_numpy(np.ascontiguousarray(targets, dtype=np.float32)).to(home)
        self.codes = torch.from_numpy(codes).to(home)
        self.n_rows = len(targets)
        self.positions = None if positions is None else torch.from_numpy(
            np.asarray(positions, dtype=np.int64)).to(home)
        self.generator = torch.Generator().manual_seed(seed)
        # rows grouped by era, for era batches
        order = np.argsort(codes, kind="stable")
        counts = np.bincount(codes, minlength=self.n_eras)
        self.era_rows = [torch.from_numpy(rows).to(home)
                         for rows in np.split(order, np.cumsum(counts)[:-1])]

    def __len__(self) -> int:
        if self.era_batches:
            return -(-self.n_eras // self.eras_per_batch)
        # the last partial batch is dropped (each epoch drops different rows), unless it is
        # the only one
        return max(self.n_rows // self.batch_size, 1)

    def _row_batches(self) -> Iterator[Tensor]:
        if self.era_batches:
            eras = torch.randperm(self.n_eras, generator=self.generator).tolist()
            for start in range(0, self.n_eras, self.eras_per_batch):
                group = eras[start : start + self.eras_per_batch]
                yield torch.cat([self.era_rows[e] for e in group])
            return
        permutation = torch.randperm(self.n_rows, generator=self.generator).to(self.home)
        for batch in range(len(self)):
            yield permutation[batch * self.batch_size : (batch + 1) * self.batch_size]

    def take(self, rows: Tensor) -> Batch:
        """One batch: gather the rows where the matrix lives, convert on the device."""
        non_blocking = self.device.type == "cuda"
        matrix_rows = rows if self.positions is None else self.positions.index_select(0, rows)
        if self.store is not None:
            taken = torch.from_numpy(self.store.read(matrix_rows.numpy()))
        else:
            assert self.features is not None
            taken = self.features.index_select(0, matrix_rows)
        features = taken.to(self.device, non_blocking=non_blocking)
        targets = self.targets.index_select(0, rows).to(self.device, non_blocking=non_blocking)
        codes = self.codes.index_select(0, rows).to(self.device, non_blocking=non_blocking)
        return features.to(self.dtype), targets.to(self.dtype), codes

    def __iter__(self) -> Iterator[Batch]:
        for rows in self._row_batches():
            yield self.take(rows)


def resident(features: np.ndarray, home: torch.device) -> Tensor:
    """The int8 matrix on ``home``; a memory-mapped store goes there a block of rows at a time,
    so that no whole copy of it is ever held in host memory on the way to an accelerator."""
    store = StoreRows.of(features)
    if store is None:
        with warnings.catch_warnings():
            # a memory-mapped array that is not a store file (read-only); batches only read it
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(np.ascontiguousarray(features)).to(home)
    out = torch.empty(features.shape, dtype=torch.int8, device=home)
    step = max(1, HOST_BLOCK_BYTES // max(features.shape[1], 1))
    for start in range(0, len(features), step):
        stop = min(start + step, len(features))
        out[start:stop] = torch.from_numpy(store.read_range(start, stop)).to(home)
    return out
