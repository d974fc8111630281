"""The synthetic dataset: real v5 layout, NaN pattern, determinism, atomic writes, real signal."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest

from fxml.data import layout, synthetic
from fxml.data.synthetic import SYNTHETIC_FILES, SyntheticSpec, write_synthetic
from fxml.errors import FxmlError

SMALL = SyntheticSpec(
    train_eras=12,
    validation_eras=8,
    unresolved_eras=2,
    rows_per_era=200,
    live_rows=50,
    n_features=30,
    seed=3,
)
TARGET_BINS = {0.0: 0.05, 0.25: 0.20, 0.5: 0.50, 0.75: 0.20, 1.0: 0.05}
MAIN_FILES = ("train", "validation", "live")
ID_PATTERN = re.compile(r"^n[0-9a-f]{15}$")


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("small"), SMALL)


@pytest.fixture(scope="module")
def default_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("default"))


def read(directory: Path, name: str) -> pl.DataFrame:
    return pl.read_parquet(directory / f"{name}.parquet")


def features_json(directory: Path) -> dict:
    return json.loads((directory / "features.json").read_text())


def validation_eras(spec: SyntheticSpec) -> list[str]:
    first = spec.train_eras + 1
    return [f"{e:04d}" for e in range(first, first + spec.validation_eras)]


# ---------------------------------------------------------------------------------------------
# Layout


def test_writes_every_real_file_and_nothing_half_written(small_dir: Path) -> None:
    assert set(SYNTHETIC_FILES) == {
        "features.json",
        "train.parquet",
        "validation.parquet",
        "live.parquet",
        "meta_model.parquet",
        "live_example_preds.parquet",
        "validation_example_preds.parquet",
        "train_benchmark_models.parquet",
        "validation_benchmark_models.parquet",
        "live_benchmark_models.parquet",
        "full.parquet",  # v5.3's train and validation in one file
        "full_benchmark_models.parquet",
    }
    names = {p.name for p in small_dir.iterdir()}
    assert names == set(SYNTHETIC_FILES) | {".synthetic.json"}


def test_feature_sets_are_consistent(small_dir: Path) -> None:
    meta = features_json(small_dir)
    sets = meta["feature_sets"]
    small, medium, all_ = sets["small"], sets["medium"], sets["all"]
    assert len(all_) == SMALL.n_features == len(set(all_))
    assert 1 <= len(small) <= len(medium) < len(all_)
    assert len(small) <= 42
    assert medium[: len(small)] == small and all_[: len(medium)] == medium
    assert all(re.fullmatch(r"feature_[a-z]+_[a-z]+_[a-z]+", n) for n in all_)
    # v5.3's quantum features: the newest, outside small and medium
    quantum = sets["quantum"]
    assert quantum == all_[-len(quantum):] and len(quantum) == round(807 / 3555 * len(all_))
    assert not set(quantum) & set(medium)
    groups = [k for k in sets if k not in ("small", "medium", "all", "quantum")]
    assert {"intelligence", "charisma", "strength"} <= set(groups)
    grouped = [n for g in groups for n in sets[g]]
    assert sorted(grouped) == sorted(all_)  # the named groups partition the features
    targets = meta["targets"]
    assert targets[0] == "target" and "target_ender_20" in targets
    assert all(re.fullmatch(r"target_[a-z0-9]+_(20|60)", t) for t in targets[1:])
    assert len(targets) == len(set(targets)) >= 9

    for name in MAIN_FILES:
        columns = read(small_dir, name).columns
        assert columns == ["id", "era", "data_type", *all_, *targets]


def test_feature_set_sizes_scale_with_the_feature_count() -> None:
    assert synthetic.feature_set_sizes(120) == (18, 36)
    assert synthetic.feature_set_sizes(2748) == (42, 824)
    for n in (10, 37, 500, 5000):
        small, medium = synthetic.feature_set_sizes(n)
        assert 1 <= small <= medium <= n and small <= 42


def test_dtypes_values_eras_and_order(small_dir: Path) -> None:
    features = features_json(small_dir)["feature_sets"]["all"]
    targets = features_json(small_dir)["targets"]
    expected_eras = {
        "train": [f"{e:04d}" for e in range(1, SMALL.train_eras + 1)],
        "validation": validation_eras(SMALL),
        "live": ["X"],
    }
    all_ids: list[str] = []
    for name in MAIN_FILES:
        df = read(small_dir, name)
        assert df.schema["id"] == pl.String and df.schema["era"] == pl.String
        assert all(df.schema[f] == pl.Int8 for f in features)
        assert all(df.schema[t] == pl.Float32 for t in targets)
        assert df["data_type"].unique().to_list() == [name]
        assert df["era"].unique(maintain_order=True).to_list() == expected_eras[name]
        values = df.select(pl.concat_list(features).explode().unique().sort()).to_series()
        assert values.to_list() == [0, 1, 2, 3, 4]
        assert df.select(pl.col(features).is_null().any()).sum_horizontal().item() == 0
        # sorted by era, then id
        assert df.select(["era", "id"]).equals(df.select(["era", "id"]).sort(["era", "id"]))
        assert all(ID_PATTERN.match(i) for i in df["id"].to_list())
        all_ids += df["id"].to_list()
    assert len(all_ids) == len(set(all_ids))
    assert read(small_dir, "live").height == SMALL.live_rows


def test_era_sizes_vary_around_rows_per_era(small_dir: Path) -> None:
    sizes = read(small_dir, "train").group_by("era").len()["len"].to_numpy()
    assert sizes.min() >= 0.8 * SMALL.rows_per_era - 1
    assert sizes.max() <= 1.2 * SMALL.rows_per_era + 1
    assert sizes.std() > 0
    assert abs(sizes.mean() - SMALL.rows_per_era) < 0.1 * SMALL.rows_per_era


def test_pandas_reads_id_as_the_index(small_dir: Path) -> None:
    for name in SYNTHETIC_FILES:
        if not name.endswith(".parquet"):
            continue
        df = pd.read_parquet(small_dir / name)
        assert df.index.name == "id", name
        assert "id" not in df.columns
        assert df.index.is_unique
        assert pd.api.types.is_string_dtype(df.index.dtype)
    train = pd.read_parquet(small_dir / "train.parquet")
    feature = features_json(small_dir)["feature_sets"]["small"][0]
    assert train[feature].dtype == np.int8 and train["target"].dtype == np.float32
    assert pd.api.types.is_string_dtype(train["era"].dtype)


# ---------------------------------------------------------------------------------------------
# Targets


def test_target_bins_and_proportions_per_era(small_dir: Path) -> None:
    targets = features_json(small_dir)["targets"]
    for name in ("train", "validation"):
        df = read(small_dir, name)
        for t in targets:
            assert set(df[t].drop_nulls().unique().to_list()) <= set(TARGET_BINS)
        resolved = df.filter(pl.col("target").is_not_null())
        for (_era,), era_df in resolved.group_by("era"):
            n = era_df.height
            counts = era_df["target"].value_counts()
            shares = dict(zip(counts["target"], counts["count"] / n, strict=True))
            assert set(shares) == set(TARGET_BINS)
            for value, share in TARGET_BINS.items():
                assert abs(shares[value] - share) <= 1.0 / n + 1e-9


def test_target_is_target_ender_20(small_dir: Path) -> None:
    for name in MAIN_FILES:
        df = read(small_dir, name)
        assert df["target"].equals(df["target_ender_20"], check_names=False)
        assert df["target"].null_count() == df["target_ender_20"].null_count()


def test_nan_pattern(small_dir: Path) -> None:
    targets = features_json(small_dir)["targets"]
    aux = [t for t in targets if t not in ("target", "target_ender_20")]
    train = read(small_dir, "train")
    assert train["target"].null_count() == 0
    aux_nan_share = train.select(pl.col(aux).is_null().mean()).to_numpy()
    assert np.all(aux_nan_share > 0) and np.all(aux_nan_share < 0.1)

    validation = read(small_dir, "validation")
    eras = validation_eras(SMALL)
    unresolved = eras[-SMALL.unresolved_eras :]
    nulls = validation.group_by("era").agg(pl.col(targets).is_null().mean()).sort("era")
    for row in nulls.iter_rows(named=True):
        if row["era"] in unresolved:
            assert all(row[t] == 1.0 for t in targets), row["era"]
        else:
            assert row["target"] == 0.0
            assert all(row[t] < 0.2 for t in targets if t.endswith("_20"))
    # 60-day targets resolve later: recent resolved eras have them all NaN
    lagging = nulls.filter(pl.col("era") == eras[-SMALL.unresolved_eras - 1])
    assert all(lagging[t].item() == 1.0 for t in targets if t.endswith("_60"))
    assert all(nulls[t][0] < 0.2 for t in targets)

    live = read(small_dir, "live")
    assert live.select(pl.col(targets).is_null().all()).to_numpy().all()
    assert live["era"].unique().to_list() == ["X"]


# ---------------------------------------------------------------------------------------------
# Meta model, benchmarks, example predictions


def _in_unit_interval(series: pl.Series) -> bool:
    return (
        series.dtype == pl.Float32
        and series.null_count() == 0
        and (series.min() > 0 and series.max() < 1)
    )


def test_meta_model_covers_resolved_validation_eras(small_dir: Path) -> None:
    validation = read(small_dir, "validation")
    meta = read(small_dir, "meta_model")
    assert meta.columns == ["id", "era", "data_type", "numerai_meta_model"]
    assert _in_unit_interval(meta["numerai_meta_model"])
    covered = validation_eras(SMALL)[: -SMALL.unresolved_eras]
    assert meta["era"].unique(maintain_order=True).to_list() == covered
    expected = validation.filter(pl.col("era").is_in(covered)).select("id", "era", "data_type")
    assert meta.select("id", "era", "data_type").equals(expected)
    assert meta.height < validation.height


def test_benchmarks_and_example_preds_align_with_their_split(small_dir: Path) -> None:
    columns = [f"v53_lgbm_{n}{h}" for n in ("ender", "cyrusd", "teager2b") for h in (20, 60)]
    for name in MAIN_FILES:
        main = read(small_dir, name)
        bench = read(small_dir, f"{name}_benchmark_models")
        assert bench.columns == ["id", "era", "data_type", *columns]
        assert bench.select("id", "era", "data_type").equals(main.select("id", "era", "data_type"))
        assert all(_in_unit_interval(bench[c]) for c in columns)
        if name != "train":
            example = read(small_dir, f"{name}_example_preds")
            assert example.columns == ["id", "prediction"]
            assert example["id"].equals(main["id"])
            assert _in_unit_interval(example["prediction"])


def test_benchmark_prefix_follows_the_version(tmp_path: Path) -> None:
    assert layout.version_prefix("v5.2") == "v52"
    assert layout.version_prefix("v5.0") == "v50"
    assert layout.version_prefix("5.1") == "v51"
    spec = SyntheticSpec(
        version="v5.0",
        train_eras=2,
        validation_eras=2,
        unresolved_eras=1,
        rows_per_era=40,
        live_rows=10,
        n_features=12,
    )
    write_synthetic(tmp_path, spec)
    assert read(tmp_path, "live_benchmark_models").columns[3] == "v50_lgbm_ender20"


# ---------------------------------------------------------------------------------------------
# Determinism, idempotency, atomic writes


def test_same_spec_gives_identical_data(small_dir: Path, tmp_path: Path) -> None:
    again = write_synthetic(tmp_path / "again", SMALL)
    for name in SYNTHETIC_FILES:
        assert (again / name).read_bytes() == (small_dir / name).read_bytes(), name
    for name in MAIN_FILES:
        assert read(again, name).equals(read(small_dir, name))

    other = write_synthetic(tmp_path / "other", replace(SMALL, seed=4))
    assert not read(other, "train").equals(read(small_dir, "train"))


def _mtimes(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}


def test_second_call_does_not_rewrite(tmp_path: Path) -> None:
    write_synthetic(tmp_path, SMALL)
    before = _mtimes(tmp_path)
    assert write_synthetic(tmp_path, SMALL) == tmp_path
    assert _mtimes(tmp_path) == before


def test_interrupted_write_is_regenerated(small_dir: Path, tmp_path: Path) -> None:
    write_synthetic(tmp_path, SMALL)
    (tmp_path / ".synthetic.json").unlink()  # as if killed before the marker was written
    (tmp_path / "validation.parquet").write_bytes(b"half written")
    (tmp_path / "live.parquet").unlink()
    write_synthetic(tmp_path, SMALL)
    assert (tmp_path / ".synthetic.json").is_file()
    for name in SYNTHETIC_FILES:
        assert (tmp_path / name).read_bytes() == (small_dir / name).read_bytes(), name


def test_other_spec_in_the_same_directory_is_regenerated(tmp_path: Path) -> None:
    write_synthetic(tmp_path, SMALL)
    bigger = replace(SMALL, live_rows=70)
    write_synthetic(tmp_path, bigger)
    assert read(tmp_path, "live").height == 70
    marker = json.loads((tmp_path / ".synthetic.json").read_text())
    assert marker["spec"]["live_rows"] == 70


def test_failed_write_leaves_no_file_under_a_real_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    original = synthetic._Generator._write_chunk

    def failing(self, sinks, chunk):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if self.data_type(chunk[0].number) == "validation":
            raise RuntimeError("disk full")
        return original(self, sinks, chunk)

    monkeypatch.setattr(synthetic._Generator, "_write_chunk", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        write_synthetic(tmp_path, SMALL)
    names = {p.name for p in tmp_path.iterdir()}
    assert calls["n"] >= 2
    assert ".synthetic.json" not in names
    assert "validation.parquet" not in names and "meta_model.parquet" not in names
    assert not [n for n in names if n.endswith(".tmp")]
    monkeypatch.undo()
    write_synthetic(tmp_path, SMALL)
    assert read(tmp_path, "validation").height > 0


@pytest.mark.parametrize(
    "change",
    [
        {"train_eras": 0},
        {"unresolved_eras": 8},
        {"rows_per_era": 5},
        {"n_features": 3},
        {"seed": -1},
        {"signal_strength": -1.0},
        {"version": "latest"},
        {"live_rows": 2.5},
    ],
)
def test_invalid_spec_is_a_user_error(tmp_path: Path, change: dict) -> None:
    with pytest.raises(FxmlError):
        write_synthetic(tmp_path, replace(SMALL, **change))
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# Signal


def _era_corr_mean(df: pd.DataFrame, prediction: np.ndarray) -> float:
    from numerai_tools.scoring import numerai_corr

    scored = df.assign(prediction=prediction)
    scored = scored[scored["target"].notna()]
    scores = [
        numerai_corr(era_df[["prediction"]], era_df["target"]).iloc[0]
        for _, era_df in scored.groupby("era")
    ]
    return float(np.mean(scores))


def test_lightgbm_finds_numerai_sized_signal(default_dir: Path) -> None:
    import lightgbm

    features = features_json(default_dir)["feature_sets"]["small"]
    train = pd.read_parquet(default_dir / "train.parquet", columns=[*features, "target"])
    validation = pd.read_parquet(
        default_dir / "validation.parquet", columns=["era", *features, "target"]
    )
    model = lightgbm.LGBMRegressor(
        n_estimators=150,
        learning_rate=0.05,
        max_depth=5,
        num_leaves=31,
        colsample_bytree=0.5,
        n_jobs=1,  # deterministic and fast on a busy host
        verbose=-1,
    )
    model.fit(train[features], train["target"])
    corr = _era_corr_mean(validation, model.predict(validation[features]))
    assert 0.005 <= corr <= 0.08, corr


def test_meta_model_is_informative_and_the_signal_knob_works(
    default_dir: Path, tmp_path: Path
) -> None:
    def meta_corr(directory: Path) -> float:
        validation = pd.read_parquet(directory / "validation.parquet", columns=["era", "target"])
        meta = pd.read_parquet(directory / "meta_model.parquet", columns=["numerai_meta_model"])
        joined = validation.join(meta, how="inner")
        return _era_corr_mean(joined, joined["numerai_meta_model"].to_numpy())

    assert 0.02 <= meta_corr(default_dir) <= 0.12
    no_signal = write_synthetic(tmp_path, SyntheticSpec(signal_strength=0.0))
    assert abs(meta_corr(no_signal)) < 0.015


def test_full_file_holds_train_then_validation_as_they_are(small_dir: Path) -> None:
    """v5.3's full.parquet: every labelled and unresolved era of train and validation, once, in era
    order, row for row what the two files hold (its benchmarks likewise)."""
    full = read(small_dir, "full")
    both = pl.concat([read(small_dir, "train"), read(small_dir, "validation")])
    assert full.equals(both)
    assert full["data_type"].unique().sort().to_list() == ["train", "validation"]
    bench = read(small_dir, "full_benchmark_models")
    assert bench.equals(pl.concat([read(small_dir, "train_benchmark_models"),
                                   read(small_dir, "validation_benchmark_models")]))


def test_a_v52_release_has_no_full_file(tmp_path: Path) -> None:
    write_synthetic(tmp_path, replace(SMALL, version="v5.2"))
    names = {p.name for p in tmp_path.iterdir()}
    assert "full.parquet" not in names and "train.parquet" in names
    assert "quantum" not in features_json(tmp_path)["feature_sets"]
    assert read(tmp_path, "validation_benchmark_models").columns[3] == "v52_lgbm_ender20"
