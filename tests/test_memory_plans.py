"""Memory plans: what a run would hold at each stage, what the machine (or its cgroup) has, and
the plan ``memory=auto`` picks from them; runs under each plan score the same."""

from __future__ import annotations

from pathlib import Path

import pytest

from fxml.data import memory as memory_module
from fxml.data.loader import STORE_FOLDER, NumeraiData
from fxml.data.memory import (
    BASE_BYTES,
    BYTES_PER_ROW,
    GIB,
    SCORER_BYTES_PER_VALIDATION_ROW,
    SCORING_BLOCK_BYTES,
    Auto,
    MemoryNeed,
    available_memory,
)
from fxml.data.sources import SyntheticSource
from fxml.models.deep import MLPModel
from fxml.models.linear import RidgeModel
from fxml.models.xgboost_model import XGBoostModel
from tests.conftest import SMALL_DATA, Workspace


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

def test_auto_streams_from_disk_with_the_same_scores(workspace: Workspace) -> None:
    spec = {key.split(".")[-1]: int(value) for key, value in (o.split("=") for o in SMALL_DATA)
            if key.startswith("data.source.")}
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
