"""How LightGBM and XGBoost take their rows: from memory or a block at a time from the int8 store
file, learning the same either way and leaving none of the store mapped."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb

from fxml.models.lightgbm_model import LightGBMModel, _Int8Rows
from fxml.models.xgboost_model import XGBoostModel, _Int8Blocks, quantile_matrix
from tests.helpers import toy_split
from tests.releases import load_split, resident_bytes, store_backed


def test_lightgbm_trains_column_wise_unless_its_params_choose() -> None:
    # row-wise (LightGBM's own choice at Numerai's widths) keeps a second copy of the bins
    default = LightGBMModel(n_estimators=2).fit(toy_split())
    assert default.booster.params["force_col_wise"] is True
    chosen = LightGBMModel(n_estimators=2, params={"force_row_wise": True}).fit(toy_split())
    assert chosen.booster.params["force_row_wise"] is True
    assert "force_col_wise" not in chosen.booster.params
    assert np.abs(default.predict(toy_split("validation", seed=1).features)
                  - chosen.predict(toy_split("validation", seed=1).features)).max() < 1e-6

def test_xgboost_default_bins_lose_nothing_on_five_valued_features() -> None:
    # the default max_bin is small to keep XGBoost's quantised matrix lean while it is built
    train, validation = toy_split(), toy_split("validation", seed=1)
    default = XGBoostModel(n_estimators=20, colsample_bytree=0.5, subsample=0.7)
    assert default.params.max_bin < 64
    wide = XGBoostModel(n_estimators=20, colsample_bytree=0.5, subsample=0.7, max_bin=256)
    np.testing.assert_array_equal(default.fit(train).predict(validation.features),
                                  wide.fit(toy_split()).predict(validation.features))

@pytest.mark.parametrize(("storage", "matrix"), [
    ("memory", xgb.QuantileDMatrix),
    ("store", xgb.QuantileDMatrix),  # an in-memory plan: rows from the store file
    ("disk", xgb.ExtMemQuantileDMatrix),  # a disk plan: external memory
])
def test_xgboost_learns_the_same_from_the_store_on_disk(
        release: Path, storage: str, matrix: type,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # from the store XGBoost reads the blocks in several passes, each into the same buffer: many
    # blocks, the last one short
    monkeypatch.setattr("fxml.models.xgboost_model.predict_chunk_rows", lambda _: 97)
    _, expected_train = load_split(release, "train")
    _, validation = load_split(release, "validation")
    expected = XGBoostModel(n_estimators=10, colsample_bytree=0.5).fit(expected_train)
    _, train = load_split(release, "train", storage)
    assert type(quantile_matrix(train, 8)) is matrix
    model = XGBoostModel(n_estimators=10, colsample_bytree=0.5).fit(train)
    np.testing.assert_array_equal(model.predict(validation.features), expected.predict(validation.features))

def test_xgboost_reads_its_blocks_from_the_store_file_and_maps_none(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "train.int8"
    train = store_backed(toy_split(eras=10, rows=1000, features=64), path)
    block = 4 * mmap.PAGESIZE // 64  # blocks of four pages
    monkeypatch.setattr("fxml.models.xgboost_model.IN_MEMORY_BLOCK_BYTES", 4 * mmap.PAGESIZE)
    seen = []
    handing = _Int8Blocks.next

    def next_block(self, input_data):  # type: ignore[no-untyped-def]
        seen.append(resident_bytes(path))  # while XGBoost asks for a block, after the one before
        return handing(self, input_data)

    monkeypatch.setattr(_Int8Blocks, "next", next_block)
    matrix = quantile_matrix(train, 8)
    assert matrix.num_row() == len(train) and len(seen) > 2 * len(train) / block  # several passes
    # each block is read from the file into memory of the iterator's: no page of the store is
    # mapped, while XGBoost reads (up to 204 KiB stayed when blocks were views of the mapping)
    assert max(seen) == 0 and resident_bytes(path) == 0
    np.testing.assert_array_equal(matrix.get_label(), train.target)


def test_lightgbm_reads_its_sample_and_batches_from_the_store_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # rows of one page each: a sampled row read through the mapping would map a page and the
    # kernel's 64 KiB around it (about 270 MiB stayed for a 5,251-row sample at full width)
    monkeypatch.setattr("fxml.models.lightgbm_model.predict_chunk_rows", lambda _: 64)
    path = tmp_path / "train.int8"
    train = store_backed(toy_split(eras=10, rows=200, features=mmap.PAGESIZE), path)
    seen: list[int] = []
    calls = {"rows": 0, "batches": 0}
    reading = _Int8Rows.__getitem__

    def read(self, index):  # type: ignore[no-untyped-def]
        kind = "batches" if isinstance(index, slice) else "rows"
        calls[kind] += 1
        if kind == "batches" or calls["rows"] % 50 == 0:
            seen.append(resident_bytes(path))
        return reading(self, index)

    monkeypatch.setattr(_Int8Rows, "__getitem__", read)
    LightGBMModel(n_estimators=2).fit(train)
    assert calls["rows"] > 100 and calls["batches"] >= 2000 / 64
    assert max(seen) == 0 and resident_bytes(path) == 0

def test_lightgbm_learns_the_same_from_the_store(tmp_path: Path) -> None:
    validation = toy_split("validation", seed=1, features=64).features
    in_memory = LightGBMModel(n_estimators=5).fit(toy_split(rows=400, features=64))
    stored = LightGBMModel(n_estimators=5).fit(store_backed(toy_split(rows=400, features=64),
                                                            tmp_path / "train.int8"))
    np.testing.assert_array_equal(stored.predict(validation), in_memory.predict(validation))
