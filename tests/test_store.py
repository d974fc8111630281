"""The era-indexed int8 store and its loader, on files written by another program than fxml's
synthetic writer: rows out of era order, several row groups, float and int64 feature columns."""

from __future__ import annotations

import logging
import mmap
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from fxml.data import store as store_module
from fxml.data.layout import FEATURES_JSON
from fxml.data.loader import STORE_FOLDER, NumeraiData
from fxml.data.memory import (
    StoreRows,
    read_rows,
    release_file_pages,
)
from fxml.data.store import FilePart, MissingFeatures, plan_rows
from fxml.errors import FxmlError
from fxml.models.base import labelled_rows, predict_in_era_blocks
from fxml.models.linear import RidgeModel
from tests.helpers import toy_split
from tests.releases import (
    N_FEATURES,
    FolderSource,
    load_split,
    reference,
    resident_bytes,
    store_backed,
    write_release,
)


@pytest.mark.parametrize("storage", ["memory", "disk"])
def test_rows_sorted_by_era_and_equal_to_the_file(release: Path, storage: str) -> None:
    data, split = load_split(release, "train", storage)
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
    data, split = load_split(folder, "validation", "disk")
    expected = np.array(split.features)
    (matrix,) = (folder / STORE_FOLDER).glob("validation-*.int8")
    del split
    for damage in ("cut short", "record unreadable", "same size, other bytes"):
        if damage == "cut short":
            os.truncate(matrix, 1000)
        elif damage == "record unreadable":
            matrix.with_suffix(".json").write_text("{not json")
        else:
            with open(matrix, "r+b") as file:  # as a disk error or another program would
                file.write(b"\x07" * 100)  # no feature value is 7
        caplog.clear()
        _, again = load_split(folder, "validation", "disk")
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
        _, split = load_split(folder, split_name, "disk")
        written += split.features.size
        del split
        line = next(r.getMessage() for r in caplog.records if "wrote the int8 store" in r.getMessage())
        assert f"the stores in its folder take {written / 2**20:,.1f} MiB in all" in line, line
    assert sum(f.stat().st_size for f in (folder / STORE_FOLDER).glob("*.int8")) == written

def test_no_room_for_the_stores_record_falls_back_to_memory(release: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """Room for the matrix but not for its small JSON record (a disk that just filled up): the
    documented fallback, rows in memory with a warning, or one line under a disk plan."""
    folder = tmp_path / "release"
    folder.mkdir()
    for name in ("validation.parquet", FEATURES_JSON):
        (folder / name).symlink_to(release / name)
    write_text = Path.write_text

    def full_disk(path: Path, text: str, *args, **kwargs) -> int:  # type: ignore[no-untyped-def]
        if path.suffix == ".json" and path.parent.name == STORE_FOLDER:
            raise OSError(28, "No space left on device")
        return write_text(path, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk)
    _, expected = load_split(folder, "validation", "memory")
    _, split = load_split(folder, "validation", "store")
    assert split.storage == "memory" and "reading validation into memory instead" in caplog.text
    np.testing.assert_array_equal(split.features, expected.features)
    assert not list((folder / STORE_FOLDER).iterdir()), "nothing half-written is left"
    with pytest.raises(FxmlError, match="cannot write the int8 store's record .*No space left on device"):
        load_split(folder, "validation", "disk")


def gone_process_id() -> int:
    """The id of a process that has ended (as one killed mid-write has)."""
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    return int(finished.stdout)


def test_files_a_killed_writer_left_are_removed_and_a_live_ones_kept(
        release: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """SIGKILL (an OOM kill) mid-write leaves the temporary file; the next run writing there
    removes it when its process is gone, keeps a live run's, and its size line counts the folder."""
    folder = tmp_path / "release"
    (folder / STORE_FOLDER).mkdir(parents=True)
    for name in ("validation.parquet", FEATURES_JSON):
        (folder / name).symlink_to(release / name)
    dead, alive = gone_process_id(), os.getppid()  # this test's parent: surely alive
    stale = folder / STORE_FOLDER / f"train-0123.int8.{dead}.partial"
    stale.write_bytes(b"\0" * 3_000_000)
    writing = folder / STORE_FOLDER / f"train-4567.int8.{alive}.partial"
    writing.write_bytes(b"\0" * 1_000_000)
    caplog.set_level(logging.INFO, logger="fxml.data")
    _, split = load_split(folder, "validation", "disk")
    assert not stale.exists() and writing.exists()
    assert f"removed {stale} (2.9 MiB), left by process {dead}, which is gone" in caplog.text
    line = next(r.getMessage() for r in caplog.records if "wrote the int8 store" in r.getMessage())
    assert f"take {(split.features.size + 1_000_000) / 2**20:,.1f} MiB in all" in line, line


def test_the_synthetic_writer_removes_a_killed_writers_temporary_files(tmp_path: Path) -> None:
    from fxml.data.synthetic import SyntheticSpec, write_synthetic

    dead = gone_process_id()
    tmp_path.joinpath(f".train.parquet.{dead}.tmp").write_bytes(b"half a file")
    tmp_path.joinpath(f".train.parquet.{os.getppid()}.tmp").write_bytes(b"a live run's")
    write_synthetic(tmp_path, SyntheticSpec(n_features=10, train_eras=4, validation_eras=6,
                                            rows_per_era=20, live_rows=10))
    assert sorted(p.name for p in tmp_path.glob(".*.tmp")) == [f".train.parquet.{os.getppid()}.tmp"]
    assert (tmp_path / "train.parquet").is_file() or (tmp_path / "full.parquet").is_file()


def ended(pid: int) -> bool:
    """Gone, or a zombie waiting to be reaped by whichever process adopted it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_the_child_store_writer_ends_when_its_run_is_killed(tmp_path: Path) -> None:
    """A run killed with SIGKILL while its child writes the store: the child ends too, though its
    input is still open (held here), instead of writing on for nobody."""
    read_end, write_end = os.pipe()
    starter = ("import subprocess, sys, time\n"
               "child = subprocess.Popen([sys.executable, '-m', 'fxml.data.store'], stdin=int(sys.argv[1]))\n"
               "print(child.pid, flush=True)\n"
               "time.sleep(120)\n")
    run = subprocess.Popen([sys.executable, "-c", starter, str(read_end)], pass_fds=(read_end,),
                           stdout=subprocess.PIPE, text=True,
                           env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    try:
        child = int(run.stdout.readline())  # type: ignore[union-attr]
        time.sleep(2)  # the child is waiting for its task
        assert not ended(child)
        run.kill()
        run.wait()
        deadline = time.monotonic() + 20
        while not ended(child) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ended(child), "the child writer outlived the run that started it"
    finally:
        os.close(write_end)
        os.close(read_end)


def test_era_selection_reads_only_the_chosen_eras(release: Path) -> None:
    data, split = load_split(release, "train", every_nth_era=2, train_eras=[3, 12])
    eras = list(range(3, 13, 2))
    assert sorted(np.unique(split.eras)) == eras
    expected = reference(release, "train", data.feature_names, eras)
    np.testing.assert_array_equal(split.features, expected[data.feature_names].to_numpy(np.int8))

def test_disk_store_is_written_once_and_reused(release: Path) -> None:
    _, first = load_split(release, "validation", "disk")
    files = sorted((release / ".fxml-store").glob("validation-*.int8"))
    assert len(files) == 1
    written = files[0].stat().st_mtime_ns
    _, again = load_split(release, "validation", "disk")
    assert files[0].stat().st_mtime_ns == written
    np.testing.assert_array_equal(np.asarray(first.features), np.asarray(again.features))
    _, fewer = load_split(release, "validation", "disk", feature_set="small")
    assert fewer.features.shape[1] == 10
    assert len(list((release / ".fxml-store").glob("validation-*.int8"))) == 2

def test_unresolved_eras_and_era_ranges_are_views(release: Path) -> None:
    _, validation = load_split(release, "validation")
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
        load_split(tmp_path, "validation")
    data, split = load_split(tmp_path, "validation", missing_features="fill", missing_fill=3)
    assert data.filled == {"validation": 2}
    column = split.features[:, 5]
    filled_ids = validation["id"].iloc[[4, 77]].to_numpy()
    assert (column[np.isin(split.ids, filled_ids)] == 3).all()
    era = int(validation["era"].iloc[4])
    in_era = int((validation["era"].iloc[[4, 77]].astype(int) == era).sum())
    data, _ = load_split(tmp_path, "validation", missing_features="fill", validation_eras=[era, era])
    assert data.filled == {"validation": in_era}, "only the rows read count"
    with pytest.raises(FxmlError, match="data.missing_features must be error or fill"):
        load_split(tmp_path, "validation", missing_features="zero")

def test_a_large_store_is_written_by_a_child_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    validation = write_release(tmp_path / "release", missing=True)
    monkeypatch.setattr(store_module, "CHILD_WRITER_BYTES", 0)

    def written_here(*args: object) -> None:
        raise AssertionError("the store was written in the run's own process")

    monkeypatch.setattr(store_module, "write_store_file", written_here)
    with pytest.raises(FxmlError, match="validation.parquet: feature column feature_0005 has missing "
                                        r"values \(2 rows\); data.missing_features=fill"):
        load_split(tmp_path / "release", "validation", "disk")
    assert not list((tmp_path / "release" / STORE_FOLDER).glob("*.partial")), "a failed write leaves no file"
    data, split = load_split(tmp_path / "release", "validation", "disk", missing_features="fill",
                             missing_fill=3)
    assert data.filled == {"validation": 2}
    _, in_memory = load_split(tmp_path / "release", "validation", missing_features="fill", missing_fill=3)
    np.testing.assert_array_equal(split.features, in_memory.features)
    assert (split.features[np.isin(split.ids, validation["id"].iloc[[4, 77]]), 5] == 3).all()
    # a child that fails outside fxml's own checks is one line too
    plan = plan_rows(np.zeros(3, dtype=np.int64), np.ones(3, dtype=bool))
    with pytest.raises(FxmlError, match=r"writing the int8 store .*missing\.int8 failed: FileNotFoundError"):
        store_module._write_in_child([FilePart(tmp_path / "release" / "validation.parquet", plan)],
                                     ["feature_0000"], MissingFeatures(), tmp_path / "missing.int8", (3, 1))

def test_more_columns_for_the_same_rows(release: Path) -> None:
    data, split = load_split(release, "validation", feature_set="small")
    labelled = labelled_rows(split)
    names = [f"feature_{i:04d}" for i in (5, 100, N_FEATURES - 1)]
    more = data.read_features(labelled, names)
    expected = reference(release, "validation", names).set_index("id").loc[labelled.ids, names]
    np.testing.assert_array_equal(more, expected.to_numpy(np.int8))
    with pytest.raises(FxmlError, match=f"validation.parquet is missing column.s. feature_{N_FEATURES:04d}"):
        data.read_features(labelled, [f"feature_{N_FEATURES:04d}"])

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
    _, expected = load_split(release, "train")
    np.testing.assert_array_equal(fallback.features, expected.features)

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

def test_predicting_from_the_store_leaves_no_blocks_mapped(tmp_path: Path) -> None:
    train, validation = toy_split(features=16), toy_split("validation", eras=30, features=16, seed=2)
    model = RidgeModel().fit(train)
    path = tmp_path / "validation.int8"
    stored = store_backed(validation, path)
    row_bytes = 16
    predicted = predict_in_era_blocks(model, stored, block_bytes=450 * row_bytes)  # 2 eras a block
    np.testing.assert_array_equal(predicted, model.predict(validation.features))
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
