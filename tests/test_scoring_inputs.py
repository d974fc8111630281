"""Scoring takes arrays and returns numbers: it imports no file reader, keeps no state between
scorings and starts no thread; the data layer hands it feature rows read an era at a time from the
int8 store and keeps the prepared parts it asks to keep."""

from __future__ import annotations

import dataclasses
import importlib
import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from fxml.data import references as references_module
from fxml.data.memory import StoreRows
from fxml.data.references import (
    PortfolioInputs,
    PreparedParts,
    ScoringInputs,
    feature_rows,
    neutralizer_columns,
)
from fxml.models.deep.feeding import era_codes
from fxml.scoring import score_eras
from fxml.scoring.diagnostics import prepare_meta_reference
from fxml.scoring.eras import encode_eras
from fxml.scoring.grid import era_grid
from fxml.scoring.portfolio import meta_portfolio_contribution_by_era, neutral_weights
from fxml.scoring.scorer import NumeraiScorer
from tests.helpers import toy_split
from tests.releases import resident_bytes, store_backed

REPO = Path(__file__).resolve().parents[1]
SCORING_MODULES = sorted(f"fxml.scoring.{path.stem}" for path in (REPO / "fxml" / "scoring").glob("*.py")
                         if path.stem != "__init__")

IMPORT_SCORING = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(sorted(name for name in sys.modules
             if name.split(".")[0] == "polars" or name.startswith("fxml.data")))
"""


def test_importing_scoring_imports_no_file_reader() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", IMPORT_SCORING, *SCORING_MODULES], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "fxml.scoring.scorer" in SCORING_MODULES and "fxml.scoring.prepared" in SCORING_MODULES
    assert result.stdout.strip() == "[]"


def inputs(seed: int, benchmarks: int = 3, prepared: PreparedParts | None = None) -> ScoringInputs:
    split = toy_split("validation", eras=8, rows=120, features=6, seed=0)
    rng = np.random.default_rng(seed)
    rows = len(split)
    meta = rng.random(rows)
    meta[:5] = np.nan  # rows the meta model does not cover
    return ScoringInputs(split.name, split.target, split.eras, split.features, split.feature_names,
                         meta_model=meta, benchmark=rng.random(rows), benchmark_name="bench_0",
                         portfolio=PortfolioInputs([f"bench_{k}" for k in range(benchmarks)],
                                                   rng.random((rows, benchmarks)), None, None),
                         prepared=prepared)


def mutable_module_state() -> dict[str, object]:
    """Every dict, list and set held at module level by a scoring module, as copies."""
    state: dict[str, object] = {}
    for name in SCORING_MODULES:
        module = importlib.import_module(name)
        for attribute, value in vars(module).items():
            if isinstance(value, dict | list | set) and not attribute.startswith("__"):
                state[f"{name}.{attribute}"] = repr(value)
    return state


def test_two_scorings_in_one_process_share_no_state(monkeypatch: pytest.MonkeyPatch) -> None:
    predictions = np.random.default_rng(9).random(960)
    first, second = inputs(seed=1), inputs(seed=2)  # same rows and targets, other references
    NumeraiScorer().score(predictions, first)  # any probe (torch's int8 product) has run
    before = mutable_module_state()

    def no_thread(self: threading.Thread) -> None:
        raise AssertionError(f"scoring started a thread: {self.name}")

    monkeypatch.setattr(threading.Thread, "start", no_thread)
    scored_first = NumeraiScorer().score(predictions, first)
    scored_second = NumeraiScorer().score(predictions, second)
    scored_first_again = NumeraiScorer().score(predictions, first)
    assert mutable_module_state() == before
    pd.testing.assert_frame_equal(scored_first_again.per_era, scored_first.per_era, rtol=0, atol=0)
    # the second split's MPC is its own portfolio's, not the first's prepared again
    codes = encode_eras(second.eras)
    assert second.portfolio is not None and second.target is not None
    expected = meta_portfolio_contribution_by_era(
        np.column_stack([predictions, second.portfolio.predictions]), np.ones(4), second.target,
        codes.codes, codes.n_eras)
    np.testing.assert_allclose(scored_second.per_era["mpc"].to_numpy(), expected, rtol=0, atol=1e-12)
    assert not np.allclose(scored_second.per_era["mpc"], scored_first.per_era["mpc"])


def test_prepared_parts_are_kept_and_loaded_as_they_were(tmp_path: Path) -> None:
    predictions = np.random.default_rng(9).random(960)
    parts = PreparedParts(tmp_path / "cache", identity="toy validation")
    built = NumeraiScorer().score(predictions, inputs(seed=1, prepared=parts))
    kept = sorted((tmp_path / "cache").glob("*.npz"))
    assert len(kept) == 2  # the benchmark portfolio and the meta model's side
    stamps = [path.stat().st_mtime_ns for path in kept]
    loaded = NumeraiScorer().score(predictions, inputs(seed=1, prepared=parts))
    assert [path.stat().st_mtime_ns for path in kept] == stamps
    pd.testing.assert_frame_equal(loaded.per_era, built.per_era, rtol=0, atol=0)
    unkept = NumeraiScorer().score(predictions, inputs(seed=1))
    pd.testing.assert_frame_equal(unkept.per_era, built.per_era, rtol=0, atol=0)
    # a file cut short is prepared again, with the same scores
    kept[0].write_bytes(kept[0].read_bytes()[:40])
    rebuilt = NumeraiScorer().score(predictions, inputs(seed=1, prepared=parts))
    pd.testing.assert_frame_equal(rebuilt.per_era, built.per_era, rtol=0, atol=0)
    assert kept[0].stat().st_size > 40




@pytest.mark.skipif(not Path("/proc/self/smaps").is_file(), reason="reads /proc")
def test_store_backed_features_are_read_an_era_at_a_time_and_none_stays_mapped(tmp_path: Path) -> None:
    split = toy_split("validation", eras=20, rows=150, features=40, seed=3)
    path = tmp_path / "validation.int8"
    written = np.memmap(path, dtype=np.int8, mode="w+", shape=split.features.shape)
    written[:] = split.features
    written.flush()
    del written
    stored = np.memmap(path, dtype=np.int8, mode="r", shape=split.features.shape)
    rows = feature_rows(stored)
    assert isinstance(rows, StoreRows) and feature_rows(split.features) is split.features
    predictions = np.random.default_rng(1).random(len(split))
    in_memory = dataclasses.replace(inputs(seed=1), eras=split.eras, target=split.target,
                                    features=split.features, meta_model=None, benchmark=None,
                                    portfolio=None)
    from_store = dataclasses.replace(in_memory, features=rows)
    expected = NumeraiScorer().score(predictions, in_memory).per_era
    got = NumeraiScorer().score(predictions, from_store).per_era
    pd.testing.assert_frame_equal(got, expected, rtol=0, atol=0)
    assert {"fnc", "feature_exposure"} <= set(got.columns)
    pd.testing.assert_frame_equal(score_eras(predictions, split.target, split.eras, features=rows),
                                  score_eras(predictions, split.target, split.eras,
                                             features=split.features), rtol=0, atol=0)
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
