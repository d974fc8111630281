"""The Polars loader, memory policies and the numerapi source (through a fake client)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest

from fxml.data.loader import NumeraiData
from fxml.data.memory import EraSubsample, MemoryNeed, MemoryPlan
from fxml.data.sources import NumeraiSource, SyntheticSource
from fxml.errors import FxmlError
from tests.conftest import Workspace
from tests.fakes import OfflineNumerAPI
from tests.releases import FolderSource

SPEC = dict(train_eras=24, validation_eras=10, unresolved_eras=2, rows_per_era=120,
            live_rows=80, n_features=40, seed=3)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


def synthetic(root: Path, **options) -> NumeraiData:
    return NumeraiData(SyntheticSource(**SPEC), root, version="v5.2", **options)


def test_features_int8_targets_float32_eras_int(synthetic_root: Path) -> None:
    data = synthetic(synthetic_root)
    train = data.load("train")
    assert train.features.dtype == np.int8 and train.features.flags.c_contiguous
    assert train.target.dtype == np.float32 and train.eras.dtype == np.int32
    assert train.features.shape == (len(train.ids), len(data.feature_names))
    assert sorted(np.unique(train.eras)) == list(range(1, 25))
    reference = pd.read_parquet(data.folder / "train.parquet", columns=data.feature_names)
    np.testing.assert_array_equal(train.features, reference.loc[train.ids].to_numpy())


def test_train_without_ids_holds_the_same_rows(synthetic_root: Path) -> None:
    # a run without cross-validation never reports train's rows by id, so it does not read them
    data = synthetic(synthetic_root)
    with_ids, without = data.load("train"), data.load("train", with_ids=False)
    assert without.ids is None and len(without) == len(with_ids) == len(with_ids.ids)
    np.testing.assert_array_equal(without.features, with_ids.features)
    np.testing.assert_array_equal(without.target, with_ids.target)
    np.testing.assert_array_equal(without.file_rows, with_ids.file_rows)
    cut = without.era_range(3, 5)  # era selections (folds, the inner holdout) keep working
    assert cut.ids is None and len(cut) == int(np.isin(with_ids.eras, [3, 4, 5]).sum())


def test_only_the_selected_feature_set_is_read(synthetic_root: Path) -> None:
    data = synthetic(synthetic_root, feature_set="medium")
    sets = json.loads((data.folder / "features.json").read_text())["feature_sets"]
    assert data.feature_names == sets["medium"]
    assert data.load("validation").features.shape[1] == len(sets["medium"])
    chosen = sets["all"][-3:]
    assert synthetic(synthetic_root, features=chosen).load("train").feature_names == chosen


def test_every_nth_era_and_era_spans(synthetic_root: Path) -> None:
    train = synthetic(synthetic_root, every_nth_era=4, train_eras=[5, 20]).load("train")
    assert sorted(np.unique(train.eras)) == [5, 9, 13, 17]
    validation = synthetic(synthetic_root, validation_eras=[27, 30]).load("validation")
    assert sorted(np.unique(validation.eras)) == [27, 28, 29, 30]


def test_auxiliary_target_keeps_its_nans_in_validation(synthetic_root: Path) -> None:
    validation = synthetic(synthetic_root, target="target_ender_60").load("validation")
    assert np.isnan(validation.target).any()
    last = validation.eras == validation.eras.max()
    assert np.isnan(validation.target[last]).all(), "unresolved eras have no target"


def test_live_split_has_features_and_the_live_era(synthetic_root: Path) -> None:
    live = synthetic(synthetic_root).load("live")
    assert live.target is None and len(live) == SPEC["live_rows"]
    assert set(np.unique(live.eras)) == {-1}


def test_meta_model_and_benchmark_align_by_id(synthetic_root: Path) -> None:
    data = synthetic(synthetic_root)
    validation = data.load("validation")
    meta = data.meta_model(validation)
    frame = pd.read_parquet(data.folder / "meta_model.parquet")
    expected = frame["numerai_meta_model"].reindex(validation.ids).to_numpy(dtype=np.float64)
    np.testing.assert_array_equal(meta, expected)
    name, bench = data.benchmark(validation, None)
    assert name == "v52_lgbm_ender20" and not np.isnan(bench).all()


def test_bmc_is_against_the_top_benchmark_by_name_never_the_first_column(synthetic_root: Path,
                                                                         tmp_path: Path) -> None:
    data = synthetic(synthetic_root)
    validation = data.load("validation")
    file = data.folder / "validation_benchmark_models.parquet"
    frame = pl.read_parquet(file)
    top = frame["v52_lgbm_ender20"].cast(pl.Float64).to_numpy()
    # another program's file: the top benchmark last, then without it
    moved = tmp_path / "moved"
    shutil.copytree(data.folder, moved)
    frame.select("id", "era", "data_type", "v52_lgbm_cyrusd20", "v52_lgbm_ender20").write_parquet(
        moved / file.name)
    elsewhere = NumeraiData(FolderSource(), moved, version="v5.2")
    name, bench = elsewhere.benchmark(validation, None)
    assert name == "v52_lgbm_ender20"
    np.testing.assert_array_equal(bench, pd.Series(top, index=frame["id"]).reindex(validation.ids))
    frame.select("id", "era", "data_type", "v52_lgbm_cyrusd20").write_parquet(moved / file.name)
    with pytest.raises(FxmlError, match=r"^validation_benchmark_models.parquet has no column "
                                        r"'v52_lgbm_ender20' \(columns: v52_lgbm_cyrusd20\); "
                                        r"set scorer.benchmark_column$"):
        elsewhere.benchmark(validation, None)
    assert elsewhere.benchmark(validation, "v52_lgbm_cyrusd20")[0] == "v52_lgbm_cyrusd20"


def test_era_subsample_policy_fits_the_budget(synthetic_root: Path) -> None:
    need = MemoryNeed(train_features=100 * 1000 * 50, validation_features=0, model_dataset=0,
                      rows=100_000, train_eras=100)
    assert EraSubsample(every=3).plan(need).every == 3
    budget = 100 * 1000 * 50 / 4 / 1024**3  # a quarter of the full matrix
    assert EraSubsample(max_gib=budget).plan(need) == MemoryPlan(
        "memory", 4, f"memory=era_subsample: the training features fit memory.max_gib={budget:g}")
    train = synthetic(synthetic_root).load("train", every_nth_train_era=4)
    assert sorted(np.unique(train.eras)) == list(range(1, 25, 4))


def test_fingerprint_changes_with_content_and_selection(synthetic_root: Path, tmp_path: Path) -> None:
    first = synthetic(synthetic_root)
    assert first.fingerprint() == synthetic(synthetic_root).fingerprint()
    assert first.fingerprint() != synthetic(synthetic_root, feature_set="medium").fingerprint()
    other = NumeraiData(SyntheticSource(**{**SPEC, "seed": 4}), tmp_path, version="v5.2")
    assert other.fingerprint() != first.fingerprint()


@pytest.fixture()
def served(synthetic_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = synthetic(synthetic_root).folder
    monkeypatch.setenv("FXML_DATA_DIR", str(folder))
    monkeypatch.setenv("FXML_FAKE_NUMERAI_DIR", str(folder))
    return folder


def test_latest_resolves_to_the_newest_v5_and_downloads_on_demand(served: Path, tmp_path: Path) -> None:
    source = NumeraiSource({"_target_": "tests.fakes.FakeNumerAPI"})
    folder, version = source.resolve(tmp_path, "latest")
    assert version == "v5.3" and folder == tmp_path / "v5.3"
    path = source.ensure(folder, "train.parquet")
    assert path.read_bytes() == (served / "train.parquet").read_bytes()
    source.ensure(folder, "train.parquet")
    assert source.client.downloads == ["v5.3/train.parquet"], "a cached file is not fetched again"


def test_unknown_version_names_what_is_offered(served: Path, tmp_path: Path) -> None:
    source = NumeraiSource({"_target_": "tests.fakes.FakeNumerAPI"})
    with pytest.raises(FxmlError, match=r"data.version=v5.9 is not offered .*v5.0, v5.1, v5.2, v5.3"):
        source.resolve(tmp_path, "v5.9")


def test_offline_latest_falls_back_to_local_release_or_fails_clearly(tmp_path: Path) -> None:
    source = NumeraiSource({"_target_": "tests.fakes.OfflineNumerAPI"})
    with pytest.raises(FxmlError, match="could not list Numerai datasets .*check the network"):
        source.resolve(tmp_path, "latest")
    (tmp_path / "v5.1").mkdir()
    assert source.resolve(tmp_path, "latest") == (tmp_path / "v5.1", "v5.1")
    with pytest.raises(FxmlError, match="could not download v5.1/features.json"):
        source.ensure(tmp_path / "v5.1", "features.json")
    assert isinstance(source.client, OfflineNumerAPI)


def test_v5_from_the_command_line_with_a_fake_client(workspace: Workspace, served: Path,
                                                     tmp_path: Path) -> None:
    result = workspace.train(
        "data=v5", f"data.directory={tmp_path}", "data.source.api._target_=tests.fakes.FakeNumerAPI",
        "model.n_estimators=20", "tracking.log_model=false", "tracking.run_name=v5-fake",
        small=False, FXML_FAKE_NUMERAI_DIR=str(served),
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "v5.3" / "train.parquet").is_file()
    run = next(r for r in workspace.runs() if r.info.run_name == "v5-fake")
    assert run.data.tags["data_version"] == "v5.3"
    assert run.data.params["data.every_nth_era"] == "4"


def test_extra_targets_ride_along_in_the_split(synthetic_root: Path) -> None:
    data = synthetic(synthetic_root, extra_targets=["target_cyrusd_20", "target_ender_60", "target"])
    assert data.extra_targets == ["target_cyrusd_20", "target_ender_60"], "the main target is not repeated"
    validation = data.load("validation")
    frame = pd.read_parquet(data.folder / "validation.parquet", columns=data.extra_targets)
    for name in data.extra_targets:
        assert validation.extra[name].dtype == np.float32
        np.testing.assert_array_equal(validation.extra[name], frame[name].loc[validation.ids].to_numpy())
    assert data.load("live").extra == {}
    with pytest.raises(FxmlError, match="data.extra_targets=target_nobody_20 is not a target"):
        synthetic(synthetic_root, extra_targets=["target_nobody_20"])
