"""The era-indexed int8 store and memory plans, on files written by another program than fxml's
synthetic writer: rows out of era order, several row groups, float and int64 feature columns."""

from __future__ import annotations

import dataclasses
import json
import logging
import mmap
import os
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import xgboost as xgb

from fxml.data import memory as memory_module
from fxml.data import references as references_module
from fxml.data import store as store_module
from fxml.data.layout import FEATURES_JSON
from fxml.data.loader import STORE_FOLDER, NumeraiData
from fxml.data.memory import (
    BASE_BYTES,
    BYTES_PER_ROW,
    GIB,
    SCORER_BYTES_PER_VALIDATION_ROW,
    SCORING_BLOCK_BYTES,
    Auto,
    MemoryNeed,
    StoreRows,
    available_memory,
    read_rows,
    release_file_pages,
)
from fxml.data.references import feature_rows, neutralizer_columns
from fxml.data.sources import SyntheticSource
from fxml.data.split import DataSplit
from fxml.data.store import BLOCK_COLUMNS, MissingFeatures, plan_rows
from fxml.errors import FxmlError
from fxml.models.base import labelled_rows, predict_in_era_blocks
from fxml.models.deep import MLPModel
from fxml.models.deep.feeding import BatchFeeder, era_codes, resident
from fxml.models.lightgbm_model import LightGBMModel, _Int8Rows
from fxml.models.linear import RidgeModel
from fxml.models.xgboost_model import XGBoostModel, _Int8Blocks, quantile_matrix
from fxml.scoring import score_eras
from fxml.scoring.diagnostics import prepare_meta_reference
from fxml.scoring.grid import era_grid
from fxml.scoring.portfolio import neutral_weights
from tests.conftest import SMALL_DATA, Workspace
from tests.helpers import toy_split

N_FEATURES = BLOCK_COLUMNS + 44  # more than one block of columns


class FolderSource:
    """A release folder that is simply there (what a user's own download looks like)."""

    def resolve(self, directory: Path, version: str) -> tuple[Path, str]:
        return Path(directory), "v5.2"

    def ensure(self, folder: Path, filename: str) -> Path:
        return folder / filename


def write_release(folder: Path, seed: int = 0, missing: bool = False) -> pd.DataFrame:
    """train.parquet and validation.parquet with eras shuffled, in row groups of 150 rows."""
    rng = np.random.default_rng(seed)
    names = [f"feature_{i:04d}" for i in range(N_FEATURES)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / FEATURES_JSON).write_text(json.dumps(
        {"feature_sets": {"small": names[:10], "all": names}, "targets": ["target"]}))
    frames = {}
    for split, eras, offset in (("train", 12, 0), ("validation", 6, 12)):
        n = eras * 70
        era = rng.integers(1 + offset, eras + 1 + offset, n)
        target = rng.choice([0.0, 0.25, 0.5, 0.75, 1.0], n).astype(np.float32)
        if split == "validation":
            target[era == era.max()] = np.nan  # the newest era is unresolved
        values = rng.integers(0, 5, (n, N_FEATURES))
        frame = pd.DataFrame(values.astype(np.int8), columns=names)
        frame[names[3]] = frame[names[3]].astype(np.int64)
        frame[names[5]] = frame[names[5]].astype(np.float32)
        if missing:
            frame.loc[[4, 77], names[5]] = np.nan
        frame.insert(0, "era", [f"{e:04d}" for e in era])
        frame.insert(0, "id", [f"{split[0]}{i:06d}" for i in range(n)])
        frame["target"] = target
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), folder / f"{split}.parquet",
                       row_group_size=150)
        frames[split] = frame
    return frames["validation"]


def reference(folder: Path, split: str, features: list[str], eras: list[int] | None = None) -> pd.DataFrame:
    frame = pd.read_parquet(folder / f"{split}.parquet")
    frame["era_number"] = frame["era"].astype(int)
    if eras is not None:
        frame = frame[frame["era_number"].isin(eras)]
    return frame.sort_values("era_number", kind="stable")


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("release")
    write_release(folder)
    return folder


def load(folder: Path, split: str, storage: str = "memory", **options):  # type: ignore[no-untyped-def]
    data = NumeraiData(FolderSource(), folder, feature_set=options.pop("feature_set", "all"), **options)
    return data, data.load(split, storage=storage, every_nth_train_era=options.pop("every", 1))


@pytest.mark.parametrize("storage", ["memory", "disk"])
def test_rows_sorted_by_era_and_equal_to_the_file(release: Path, storage: str) -> None:
    data, split = load(release, "train", storage)
    expected = reference(release, "train", data.feature_names)
    assert split.features.dtype == np.int8 and split.features.flags.c_contiguous
    assert isinstance(split.features, np.memmap) == (storage == "disk")
    np.testing.assert_array_equal(split.ids, expected["id"].to_numpy())
    np.testing.assert_array_equal(split.eras, expected["era_number"].to_numpy())
    np.testing.assert_array_equal(split.features, expected[data.feature_names].to_numpy(np.int8))
    np.testing.assert_array_equal(split.target, expected["target"].to_numpy(np.float32))
    assert np.all(np.diff(split.eras) >= 0)


def test_a_damaged_store_is_written_again(release: Path, tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "release"
    folder.mkdir()
    for name in ("validation.parquet", FEATURES_JSON):
        (folder / name).symlink_to(release / name)
    data, split = load(folder, "validation", "disk")
    expected = np.array(split.features)
    (matrix,) = (folder / STORE_FOLDER).glob("validation-*.int8")
    del split
    for damage in ("cut short", "record unreadable"):
        if damage == "cut short":
            os.truncate(matrix, 1000)
        else:
            matrix.with_suffix(".json").write_text("{not json")
        caplog.clear()
        _, again = load(folder, "validation", "disk")
        assert "is incomplete or damaged; writing it again" in caplog.text, damage
        np.testing.assert_array_equal(again.features, expected)
        assert matrix.stat().st_size == expected.size
        del again


def test_a_new_store_says_what_the_stores_beside_it_take(release: Path, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "release"
    folder.mkdir()
    for name in ("train.parquet", "validation.parquet", FEATURES_JSON):
        (folder / name).symlink_to(release / name)
    caplog.set_level(logging.INFO, logger="fxml.data.store")
    written = 0
    for split_name in ("validation", "train"):
        caplog.clear()
        _, split = load(folder, split_name, "disk")
        written += split.features.size
        del split
        line = next(r.getMessage() for r in caplog.records if "wrote the int8 store" in r.getMessage())
        assert f"the stores in its folder take {written / 2**20:,.1f} MiB in all" in line, line
    assert sum(f.stat().st_size for f in (folder / STORE_FOLDER).glob("*.int8")) == written


def test_era_selection_reads_only_the_chosen_eras(release: Path) -> None:
    data, split = load(release, "train", every_nth_era=2, train_eras=[3, 12])
    eras = list(range(3, 13, 2))
    assert sorted(np.unique(split.eras)) == eras
    expected = reference(release, "train", data.feature_names, eras)
    np.testing.assert_array_equal(split.features, expected[data.feature_names].to_numpy(np.int8))


def test_disk_store_is_written_once_and_reused(release: Path) -> None:
    _, first = load(release, "validation", "disk")
    files = sorted((release / ".fxml-store").glob("validation-*.int8"))
    assert len(files) == 1
    written = files[0].stat().st_mtime_ns
    _, again = load(release, "validation", "disk")
    assert files[0].stat().st_mtime_ns == written
    np.testing.assert_array_equal(np.asarray(first.features), np.asarray(again.features))
    _, fewer = load(release, "validation", "disk", feature_set="small")
    assert fewer.features.shape[1] == 10
    assert len(list((release / ".fxml-store").glob("validation-*.int8"))) == 2


def test_unresolved_eras_and_era_ranges_are_views(release: Path) -> None:
    _, validation = load(release, "validation")
    labelled = labelled_rows(validation)
    assert len(labelled) < len(validation) and not np.isnan(labelled.target).any()
    assert np.shares_memory(labelled.features, validation.features)
    middle = validation.era_range(14, 15)
    assert set(np.unique(middle.eras)) == {14, 15}
    assert np.shares_memory(middle.features, validation.features)
    scattered = validation.rows(np.isin(validation.eras, [13, 16]))
    assert set(np.unique(scattered.eras)) == {13, 16}
    assert not np.shares_memory(scattered.features, validation.features)


def test_loading_holds_the_matrix_and_one_bounded_block(release: Path) -> None:
    data = NumeraiData(FolderSource(), release, feature_set="all")
    tracemalloc.start()
    split = data.load("train")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # NumPy reports its arrays to tracemalloc: the matrix, and what loading held beside it
    assert peak < 1.3 * split.features.nbytes + 2 * 2**20, (peak, split.features.nbytes)


def test_missing_feature_values_error_or_fill(tmp_path: Path) -> None:
    validation = write_release(tmp_path, missing=True)
    with pytest.raises(FxmlError, match="validation.parquet: feature column feature_0005 has missing "
                                        r"values \(2 rows\); data.missing_features=fill"):
        load(tmp_path, "validation")
    data, split = load(tmp_path, "validation", missing_features="fill", missing_fill=3)
    assert data.filled == {"validation": 2}
    column = split.features[:, 5]
    filled_ids = validation["id"].iloc[[4, 77]].to_numpy()
    assert (column[np.isin(split.ids, filled_ids)] == 3).all()
    era = int(validation["era"].iloc[4])
    in_era = int((validation["era"].iloc[[4, 77]].astype(int) == era).sum())
    data, _ = load(tmp_path, "validation", missing_features="fill", validation_eras=[era, era])
    assert data.filled == {"validation": in_era}, "only the rows read count"
    with pytest.raises(FxmlError, match="data.missing_features must be error or fill"):
        load(tmp_path, "validation", missing_features="zero")


def test_a_large_store_is_written_by_a_child_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    validation = write_release(tmp_path / "release", missing=True)
    monkeypatch.setattr(store_module, "CHILD_WRITER_BYTES", 0)

    def written_here(*args: object) -> None:
        raise AssertionError("the store was written in the run's own process")

    monkeypatch.setattr(store_module, "write_store_file", written_here)
    with pytest.raises(FxmlError, match="validation.parquet: feature column feature_0005 has missing "
                                        r"values \(2 rows\); data.missing_features=fill"):
        load(tmp_path / "release", "validation", "disk")
    assert not list((tmp_path / "release" / STORE_FOLDER).glob("*.partial")), "a failed write leaves no file"
    data, split = load(tmp_path / "release", "validation", "disk", missing_features="fill", missing_fill=3)
    assert data.filled == {"validation": 2}
    _, in_memory = load(tmp_path / "release", "validation", missing_features="fill", missing_fill=3)
    np.testing.assert_array_equal(split.features, in_memory.features)
    assert (split.features[np.isin(split.ids, validation["id"].iloc[[4, 77]]), 5] == 3).all()
    # a child that fails outside fxml's own checks is one line too
    plan = plan_rows(np.zeros(3, dtype=np.int64), np.ones(3, dtype=bool))
    with pytest.raises(FxmlError, match=r"writing the int8 store .*missing\.int8 failed: FileNotFoundError"):
        store_module._write_in_child(tmp_path / "release" / "validation.parquet", ["feature_0000"], plan,
                                     MissingFeatures(), tmp_path / "missing.int8", (3, 1))


def test_auto_prefers_memory_then_disk_then_fewer_eras(monkeypatch: pytest.MonkeyPatch) -> None:
    # the plans below are bounded by max_gib, not by what this (possibly busy) machine has free
    monkeypatch.setattr(memory_module, "available_memory", lambda: (64 * GIB, "available system memory"))
    need = MemoryNeed(train_features=4 * GIB, validation_features=5 * GIB, model_dataset=4 * GIB,
                      rows=2_000_000, train_eras=100)
    assert Auto(max_gib=40).plan(need).storage == "memory"
    on_disk = Auto(max_gib=9).plan(need)
    assert (on_disk.storage, on_disk.every) == ("disk", 1)
    assert "streamed from the int8 store" in on_disk.reason and "memory.max_gib" in on_disk.reason
    fewer = Auto(max_gib=4).plan(need)
    assert fewer.every > 1 and need.on_disk(fewer.every) <= 4 * GIB * 0.85
    assert need.on_disk(fewer.every - 1) > 4 * GIB * 0.85 or need.in_memory(fewer.every - 1) > 4 * GIB
    limit, source = available_memory()
    assert limit > 0 and source


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_cgroup_limit_leaves_out_what_the_run_holds_and_the_inactive_page_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    group = tmp_path / "group"
    group.mkdir()
    names = {"v2": ("memory.max", "memory.current"),
             "v1": ("memory.limit_in_bytes", "memory.usage_in_bytes")}[version]
    (group / names[0]).write_text(f"{2 * GIB}\n")
    (group / names[1]).write_text(f"{GIB}\n")
    # v1 lists the group's own counters before the totals over its descendants
    stat = f"anon {GIB // 4}\ninactive_file {GIB // 2}\nactive_file {GIB // 4}\n"
    if version == "v1":
        stat = f"inactive_file {GIB // 8}\n" + stat.replace("inactive_file", "total_inactive_file", 1)
    (group / "memory.stat").write_text(stat)
    held = 300 * 2**20
    monkeypatch.setattr(memory_module, "_cgroup_folders", lambda: [(group, *names)])
    monkeypatch.setattr(memory_module, "_meminfo_available", lambda: 64 * GIB)
    monkeypatch.setattr(memory_module, "_proc_kib", lambda path, key: held if key == "VmRSS" else None)
    # the limit, less what the group uses, plus its page cache that is given back under pressure,
    # plus what this process holds already, which a plan's need counts in its interpreter part
    assert available_memory() == (2 * GIB - GIB + GIB // 2 + held, "cgroup memory limit")
    (group / "memory.stat").write_text(stat.replace(str(GIB // 2), str(GIB)))  # counted twice
    assert available_memory() == (2 * GIB, "cgroup memory limit"), "never more than the limit"
    (group / names[0]).write_text("max\n" if version == "v2" else f"{2**63 - 4096}\n")
    assert available_memory() == (64 * GIB + held, "available system memory")


def test_auto_counts_the_stages_a_run_holds_one_after_the_other(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory_module, "available_memory", lambda: (64 * GIB, "available system memory"))
    # training holds the train matrix and the model's dataset, then both are freed before
    # validation is predicted a block of eras at a time from its store file and scored an era at
    # a time: the larger stage is what the run needs, and validation's size is not held
    shape = {"validation_features": 5 * GIB, "rows": 2_000_000, "train_eras": 100}
    fixed = 2_000_000 * BYTES_PER_ROW + BASE_BYTES
    ridge_like = MemoryNeed(train_features=3 * GIB, model_dataset=0, **shape)
    lightgbm = MemoryNeed(train_features=3 * GIB, model_dataset=3 * GIB, **shape)
    assert ridge_like.in_memory() == 3 * GIB + fixed
    assert lightgbm.in_memory() == 6 * GIB + fixed
    small_train = MemoryNeed(train_features=GIB // 64, model_dataset=0, **shape)
    assert small_train.in_memory() == SCORING_BLOCK_BYTES + fixed
    assert Auto(max_gib=8).plan(lightgbm).storage == "memory"  # 6.8 GiB, not the 11.8 of all three
    # a model that copies its rows reads them from the store file: only its dataset is held
    copied = MemoryNeed(train_features=3 * GIB, model_dataset=6 * GIB, train_rows_from_store=True, **shape)
    assert copied.in_memory() == MemoryNeed(train_features=0, model_dataset=6 * GIB, **shape).in_memory()
    assert copied.in_memory() < MemoryNeed(train_features=3 * GIB, model_dataset=6 * GIB, **shape).in_memory()


def test_auto_counts_the_scorer_per_validation_row_and_a_deep_family_s_own_memory() -> None:
    # v5.2 at full size, all features: 2.75M training and 3.6M validation rows
    n_train, n_validation, k = 2_750_000, 3_600_000, 2748
    shape = dict(train_features=n_train * k, validation_features=n_validation * k,
                 rows=n_train + n_validation, train_eras=574, validation_rows=n_validation)
    fixed = (n_train + n_validation) * BYTES_PER_ROW + BASE_BYTES
    scoring = SCORING_BLOCK_BYTES + n_validation * SCORER_BYTES_PER_VALIDATION_ROW
    ridge_like = MemoryNeed(model_dataset=0, **shape)
    assert ridge_like.in_memory() == shape["train_features"] + fixed  # training is the larger stage
    deep = MemoryNeed(model_dataset=0, train_rows_from_store=True, **shape,
                      training_bytes_per_train_row=MLPModel.memory.bytes_per_train_row,
                      library_bytes=MLPModel.memory.library_bytes)
    assert deep.in_memory() == scoring + fixed + MLPModel.memory.library_bytes  # scoring is the larger
    assert deep.in_memory() == deep.on_disk()
    # measured (scripts/bench_scale.py, full size, auto): the mlp's peak was 2.73 GiB, which the
    # estimate without the scorer's grids and PyTorch (1.5 GiB) was under; LightGBM's 8.08 GiB
    assert deep.in_memory() >= 2.73 * GIB
    lightgbm = MemoryNeed(model_dataset=shape["train_features"], train_rows_from_store=True, **shape)
    assert 8.08 * GIB <= lightgbm.in_memory() <= 9 * GIB
    # a deep model's per-row arrays shrink with the training eras kept
    few_rows = MemoryNeed(**{**shape, "rows": n_train, "validation_rows": 0, "validation_features": 0},
                          model_dataset=0, train_rows_from_store=True, training_bytes_per_train_row=200)
    assert few_rows.in_memory(every=4) - few_rows.in_memory(every=1) == -(3 * n_train * 200) // 4


def test_auto_counts_a_model_dataset_kept_on_disk_when_streamed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory_module, "available_memory", lambda: (64 * GIB, "available system memory"))
    shape = dict(train_features=4 * GIB, validation_features=5 * GIB, rows=2_000_000, train_eras=100)
    in_memory_bytes = int(4 * GIB * XGBoostModel.memory.dataset_bytes_per_value)
    # XGBoost: a QuantileDMatrix in memory, external-memory pages on disk when streamed
    xgboost = MemoryNeed(**shape, model_dataset=in_memory_bytes,
                         streamed_model_dataset=int(4 * GIB * XGBoostModel.memory.streamed_bytes_per_value))
    # the same bytes kept in memory either way (how LightGBM's bins behave)
    kept = MemoryNeed(**shape, model_dataset=in_memory_bytes)
    assert xgboost.in_memory() == kept.in_memory() > 14 * GIB
    plan = Auto(max_gib=8).plan(xgboost)
    assert (plan.storage, plan.every) == ("disk", 1)
    assert Auto(max_gib=8).plan(kept).every > 1


def test_auto_streams_from_disk_with_the_same_scores(workspace: Workspace) -> None:
    spec = {key.split(".")[-1]: int(value) for key, value in (o.split("=") for o in SMALL_DATA)}
    data = NumeraiData(SyntheticSource(**spec), workspace.root / "data" / "synthetic", version="v5.2")
    # ridge holds the train matrix itself in memory, and only a scoring block when streamed
    need = data.memory_need(RidgeModel.memory)
    # a limit between what streaming and what everything in memory needs
    limit = (need.on_disk() + need.in_memory()) / 2 / 0.85 / GIB
    result = workspace.train("model=ridge", "memory=auto", f"memory.max_gib={limit}",
                             "tracking.run_name=auto-low", "tracking.log_model=false")
    assert result.returncode == 0, result.stderr
    memory = workspace.train("model=ridge", "tracking.run_name=in-memory", "tracking.log_model=false")
    assert memory.returncode == 0, memory.stderr
    runs = {run.info.run_name: run for run in workspace.runs()}
    streamed, in_memory = runs["auto-low"], runs["in-memory"]
    assert streamed.data.tags["memory_plan"] == "disk, every 1 training era(s)"
    assert streamed.data.tags["train_storage"] == "disk"
    assert "memory.max_gib" in streamed.data.tags["memory_reason"]
    assert in_memory.data.tags["memory_plan"] == "memory, every 1 training era(s)"
    assert in_memory.data.tags["train_storage"] == "memory"
    for name in ("corr_mean", "mmc_mean", "fnc_mean", "feature_exposure_mean"):
        assert streamed.data.metrics[name] == pytest.approx(in_memory.data.metrics[name], rel=0, abs=1e-12)


def test_models_in_memory_read_their_training_rows_from_the_store(workspace: Workspace) -> None:
    # the GBDTs' own dataset holds what they train on, and a deep model reads a batch at a time:
    # the rows come from the store file, not a copy held in memory
    short = {"lgbm": "model.n_estimators=5", "xgboost": "model.n_estimators=5", "mlp": "trainer.max_epochs=1"}
    for model, option in short.items():
        result = workspace.train(f"model={model}", option,
                                 f"tracking.run_name=copied-{model}", "tracking.log_model=false")
        assert result.returncode == 0, result.stderr
        run = {run.info.run_name: run for run in workspace.runs()}[f"copied-{model}"]
        assert run.data.tags["memory_plan"] == "memory, every 1 training era(s)"
        assert run.data.tags["train_storage"] == "store"  # its own dataset in memory, not external
    stores = list((workspace.root / "data" / "synthetic").glob(f"*/{STORE_FOLDER}/train-*.int8"))
    assert [store.stat().st_size for store in stores if store.stat().st_size == 9_760 * 9]


def test_more_columns_for_the_same_rows(release: Path) -> None:
    data, split = load(release, "validation", feature_set="small")
    labelled = labelled_rows(split)
    names = [f"feature_{i:04d}" for i in (5, 100, N_FEATURES - 1)]
    more = data.read_features(labelled, names)
    expected = reference(release, "validation", names).set_index("id").loc[labelled.ids, names]
    np.testing.assert_array_equal(more, expected.to_numpy(np.int8))
    with pytest.raises(FxmlError, match=f"validation.parquet is missing column.s. feature_{N_FEATURES:04d}"):
        data.read_features(labelled, [f"feature_{N_FEATURES:04d}"])


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


def test_released_store_rows_are_read_again_from_the_file(tmp_path: Path) -> None:
    page_rows = mmap.PAGESIZE // 64
    path = tmp_path / "store.int8"
    written = np.memmap(path, dtype=np.int8, mode="w+", shape=(8 * page_rows, 64))
    written[:] = np.arange(8 * page_rows, dtype=np.int64)[:, None] % 5
    written.flush()
    store = np.memmap(path, dtype=np.int8, mode="r", shape=(8 * page_rows, 64))
    before = np.array(store)
    del written
    assert resident_bytes(path) == store.nbytes
    release_file_pages(store)
    assert resident_bytes(path) == 0
    np.testing.assert_array_equal(store, before)
    release_file_pages(before)  # not a store file's pages: left as they are


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
    _, expected_train = load(release, "train")
    _, validation = load(release, "validation")
    expected = XGBoostModel(n_estimators=10, colsample_bytree=0.5).fit(expected_train)
    _, train = load(release, "train", storage)
    assert type(quantile_matrix(train, 8)) is matrix
    model = XGBoostModel(n_estimators=10, colsample_bytree=0.5).fit(train)
    np.testing.assert_array_equal(model.predict(validation.features), expected.predict(validation.features))


def resident_bytes(path: Path) -> int:
    """This process's resident bytes of its memory maps of ``path`` (from /proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):  # a mapping's first line ends with its file
            inside = line.endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1]) * 1024
    return total


def test_xgboost_reads_its_blocks_from_the_store_file_and_maps_none(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "train.int8"
    train = store_backed(toy_split(eras=40, rows=1000, features=64), path)
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


def store_backed(source: DataSplit, path: Path) -> DataSplit:
    """``source`` with its features in a store-like file, memory-mapped read-only."""
    written = np.memmap(path, dtype=np.int8, mode="w+", shape=source.features.shape)
    written[:] = source.features
    written.flush()
    del written  # unmapped: only the reader's pages are counted
    stored = np.memmap(path, dtype=np.int8, mode="r", shape=source.features.shape)
    return dataclasses.replace(source, features=stored, storage="store")


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


def test_an_unwritable_store_is_one_line_under_a_disk_plan_else_memory(release: Path, tmp_path: Path) -> None:
    folder = tmp_path / "release"
    folder.mkdir()
    for name in ("train.parquet", FEATURES_JSON):
        (folder / name).symlink_to(release / name)
    (folder / STORE_FOLDER).write_text("a file where the store's folder would go\n")
    data = NumeraiData(FolderSource(), folder, feature_set="all")
    with pytest.raises(FxmlError, match=r"^cannot write the int8 store .*\.fxml-store \(0\.00 GiB\): "):
        data.load("train", storage="disk")
    fallback = data.load("train", storage="store")
    assert fallback.storage == "memory"
    _, expected = load(release, "train")
    np.testing.assert_array_equal(fallback.features, expected.features)


def test_auto_streams_every_era_when_only_the_fixed_part_is_too_large(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # ridge and the deep models keep no dataset of their own: fewer eras would not help
    monkeypatch.setattr(memory_module, "available_memory", lambda: (64 * GIB, "available system memory"))
    need = MemoryNeed(train_features=GIB, validation_features=GIB, model_dataset=0, rows=300_000,
                      train_eras=574)
    plan = Auto(max_gib=0.5).plan(need)
    assert (plan.storage, plan.every) == ("disk", 1)
    assert "every era streamed anyway" in plan.reason
    assert "streaming every training era anyway" in caplog.text


def test_store_rows_are_read_from_the_file_in_any_order(tmp_path: Path) -> None:
    source = toy_split(eras=10, rows=50, features=37).features
    stored = store_backed(toy_split(eras=10, rows=50, features=37), tmp_path / "train.int8").features
    part = stored[120:410]  # a row range of the store: reads start at its first row
    reader = StoreRows.of(part)
    assert reader is not None and reader.shape == (290, 37) and reader.offset == 120 * 37
    order = np.random.default_rng(0).permutation(290)
    runs = np.r_[np.arange(5, 60), 3, np.arange(200, 290), 0]  # consecutive runs are one read each
    for rows in (order, runs, order[:1], order[:0]):
        np.testing.assert_array_equal(reader.read(rows), source[120:410][rows])
    np.testing.assert_array_equal(read_rows(stored, 480, 600), source[480:])
    buffer = np.empty((64, 37), dtype=np.int8)  # a reader's block buffer, reused
    for start in (0, 64, 448):
        block = read_rows(stored, start, start + 64, buffer)
        assert block.base is buffer or block is buffer
        np.testing.assert_array_equal(block, source[start : start + 64])
    with pytest.raises(ValueError, match="cannot read 290 rows of 37 int8 values"):
        reader.read(order, buffer)
    assert resident_bytes(tmp_path / "train.int8") == 0  # nothing of the file was mapped in
    with pytest.raises(IndexError):
        reader.read(np.array([290]))
    # arrays that are not a store file: in memory, a column slice
    for other in (source, stored[:, :5]):
        assert StoreRows.of(other) is None
    assert read_rows(source, 3, 9).base is source  # a view, as before
    with open(tmp_path / "train.int8", "r+b") as file:
        file.truncate(300 * 37)
    with pytest.raises(FxmlError, match="shorter than its 500 rows; delete it"):
        StoreRows.of(stored).read(np.array([499]))


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


def test_predicting_from_the_store_leaves_no_blocks_mapped(tmp_path: Path) -> None:
    train, validation = toy_split(features=16), toy_split("validation", eras=30, features=16, seed=2)
    model = RidgeModel().fit(train)
    path = tmp_path / "validation.int8"
    stored = store_backed(validation, path)
    row_bytes = 16
    predicted = predict_in_era_blocks(model, stored, block_bytes=450 * row_bytes)  # 2 eras a block
    np.testing.assert_array_equal(predicted, model.predict(validation.features))
    assert resident_bytes(path) == 0


def test_scoring_reads_each_era_from_the_store_and_keeps_none_mapped(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    validation = toy_split("validation", eras=20, rows=150, features=40, seed=3)
    path = tmp_path / "validation.int8"
    stored = store_backed(validation, path)
    rng = np.random.default_rng(1)
    predictions, meta = rng.random(len(validation)), rng.random(len(validation))
    expected = score_eras(predictions, validation.target, validation.eras, features=validation.features)
    got = score_eras(predictions, stored.target, stored.eras, features=feature_rows(stored.features))
    pd.testing.assert_frame_equal(got, expected, rtol=0, atol=0)
    assert {"fnc", "feature_exposure"} <= set(got.columns) and resident_bytes(path) == 0
    codes, n_eras = era_codes(validation.eras)
    grid = era_grid(codes, n_eras, np.ones(len(validation), dtype=bool))
    in_memory = prepare_meta_reference(grid, meta, validation.features)
    from_store = prepare_meta_reference(grid, meta, feature_rows(stored.features))
    np.testing.assert_array_equal(from_store.exposure_direction, in_memory.exposure_direction)
    np.testing.assert_array_equal(from_store.exposure_scale, in_memory.exposure_scale)
    assert resident_bytes(path) == 0
    # MPC's neutralisers: the run's features, or some of them, read an era or a block at a time
    signals = grid.place(predictions)
    weights = grid.place(np.ones(len(validation)))
    expected_weights = neutral_weights(signals, weights, validation.features, grid)
    np.testing.assert_array_equal(neutral_weights(signals, weights, feature_rows(stored.features), grid),
                                  expected_weights)
    data = SimpleNamespace(metadata={"feature_sets": {"some": validation.feature_names[::3]}})
    monkeypatch.setattr(references_module, "SCORING_BLOCK_BYTES", 7 * validation.features.shape[1])
    some = neutralizer_columns(stored, data, "some")  # type: ignore[arg-type]
    np.testing.assert_array_equal(some, validation.features[:, ::3])
    assert resident_bytes(path) == 0


POLARS_FREES = """
import sys
import fxml.run  # the entry point, as `python -m fxml.run` loads it before configuring the process
assert "polars" not in sys.modules, "Polars loads with the job, after the process is configured"
from fxml.cli import configure_process
configure_process()
import polars as pl

def anonymous_mib():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon"):
            return int(line.split()[1]) // 1024

before = anonymous_mib()
column = pl.Series("ids", range(30_000_000), dtype=pl.Int64) * 2
held = anonymous_mib()
del column
print(before, held, anonymous_mib())
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads /proc")
def test_polars_hands_freed_memory_back_at_once() -> None:
    # jemalloc's default keeps freed pages for 10 s: 480 MiB here, still resident when read
    environment = {key: value for key, value in os.environ.items() if key != "_RJEM_MALLOC_CONF"}
    result = subprocess.run([sys.executable, "-c", POLARS_FREES], capture_output=True, text=True,
                            env=environment)
    assert result.returncode == 0, result.stderr
    before, held, after = map(int, result.stdout.split())
    assert held - before > 200 and after - before < 64, (before, held, after)
