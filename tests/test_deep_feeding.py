"""How the deep models take their rows: batches from memory or from the int8 store file, the same
either way, a bounded block at a time on the device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fxml.data.memory import (
    StoreRows,
)
from fxml.models.deep import MLPModel
from fxml.models.deep.feeding import BatchFeeder, resident
from tests.helpers import toy_split
from tests.releases import resident_bytes, store_backed


@pytest.mark.parametrize("era_batches", [False, True])
def test_deep_batches_from_the_store_equal_those_from_memory(tmp_path: Path, era_batches: bool) -> None:
    split = toy_split(eras=10, rows=37, features=64)
    stored = store_backed(toy_split(eras=10, rows=37, features=64), tmp_path / "train.int8")
    options = {"batch_size": 64, "era_batches": era_batches, "eras_per_batch": 3, "seed": 5}
    from_memory = BatchFeeder(split.features, split.target, split.eras, **options)
    from_store = BatchFeeder(stored.features, stored.target, stored.eras, **options)
    assert from_store.features is None and from_store.store is not None  # the matrix is not held
    for _ in range(2):  # two epochs, each with its own shuffle
        for expected, got in zip(from_memory, from_store, strict=True):
            for a, b in zip(expected, got, strict=True):
                torch.testing.assert_close(b, a, rtol=0, atol=0)
    assert resident_bytes(tmp_path / "train.int8") == 0

def test_a_store_goes_to_the_device_a_block_at_a_time(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # the path to an accelerator with room for the matrix, taken here on the CPU
    split = toy_split(eras=10, rows=37, features=64)
    stored = store_backed(toy_split(eras=10, rows=37, features=64), tmp_path / "train.int8")
    read: list[int] = []
    reading = StoreRows.read_range

    def read_range(self, start: int, stop: int) -> np.ndarray:  # type: ignore[no-untyped-def]
        read.append(stop - start)
        return reading(self, start, stop)

    monkeypatch.setattr("fxml.models.deep.feeding.HOST_BLOCK_BYTES", 64 * 50)
    monkeypatch.setattr(StoreRows, "read_range", read_range)
    on_device = resident(stored.features, torch.device("cpu"))
    assert on_device.dtype == torch.int8 and torch.equal(on_device, torch.from_numpy(split.features))
    assert read == [50] * 7 + [20] and resident_bytes(tmp_path / "train.int8") == 0

def test_deep_models_learn_the_same_from_the_store_and_hold_none_of_it(tmp_path: Path) -> None:
    train, holdout = toy_split(eras=12, rows=60, features=32), toy_split("validation", eras=4, seed=1,
                                                                          features=32)
    path = tmp_path / "train.int8"
    options = {"widths": [16], "max_epochs": 3, "batch_size": 64, "n_jobs": 1}
    in_memory = MLPModel(**options).fit(train, holdout)
    stored = MLPModel(**options).fit(store_backed(train, path),
                                     store_backed(holdout, tmp_path / "holdout.int8"))
    assert [h["valid_corr"] for h in stored.history] == [h["valid_corr"] for h in in_memory.history]
    np.testing.assert_array_equal(stored.predict(holdout.features), in_memory.predict(holdout.features))
    assert resident_bytes(path) == resident_bytes(tmp_path / "holdout.int8") == 0
