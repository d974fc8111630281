"""The model contract, checked for every family (in the spirit of scikit-learn's check_estimator):
typed parameters checked on construction, a declared memory profile, ``fit`` that leaves its inputs
as they were, one finite float per row from ``predict``, a save/load round trip that predicts bit
for bit, and no MLflow call or file written by the family itself.

A new family (docs/adding-a-model.md) is found through ``model_families()`` and checked here too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
from hydra.utils import get_class

from fxml.data.memory import MemoryProfile
from fxml.data.split import DataSplit
from fxml.errors import FxmlError
from fxml.models.base import TabularModel, load_model
from fxml.models.params import ModelParams, model_families
from tests.helpers import toy_split
from tests.releases import store_backed

FAMILIES = model_families()
DEEP = {"mlp", "resnet", "tabnet"}
SMALL: dict[str, dict[str, Any]] = {
    "lgbm": {"n_estimators": 5, "early_stopping_rounds": 2},
    "xgboost": {"n_estimators": 5, "early_stopping_rounds": 2},
    "ridge": {},
    "mlp": {"max_epochs": 2}, "resnet": {"max_epochs": 2}, "tabnet": {"max_epochs": 2},
    "ensemble": {"members": {"linear": {"_target_": "fxml.models.linear.RidgeModel"},
                             "trees": {"_target_": "fxml.models.lightgbm_model.LightGBMModel",
                                       "n_estimators": 5}},
                 "weights": "fit"},
}
# a value each family's checks refuse, and the one line they refuse it with
REFUSED: dict[str, tuple[str, Any, str]] = {
    "lgbm": ("learning_rate", -1.0, "model.learning_rate must be > 0 (got -1.0)"),
    "xgboost": ("max_bin", 1, "model.max_bin must be >= 2 (got 1)"),
    "ridge": ("alpha", -1.0, "model.alpha must be >= 0 (got -1.0)"),
    "mlp": ("batch_size", 0, "model.batch_size must be >= 1 (got 0)"),
    "resnet": ("learning_rate", 0.0, "model.learning_rate must be > 0 (got 0.0)"),
    "tabnet": ("loss", "mae", "model.loss must be one of"),
    "ensemble": ("weights", "best", "model.weights must be one of equal, fit (got 'best')"),
}
MLFLOW_CALLS = ("start_run", "log_metric", "log_metrics", "log_param", "log_params", "set_tag",
                "set_tags", "log_artifact", "log_artifacts", "log_figure", "log_dict")


def test_every_family_is_checked_here() -> None:
    assert set(SMALL) == set(REFUSED) == set(FAMILIES)


@pytest.fixture(params=sorted(FAMILIES))
def family(request: pytest.FixtureRequest) -> str:
    if request.param in DEEP:
        pytest.importorskip("torch")
    return str(request.param)


def new_model(family: str, **params: Any) -> TabularModel:
    model_class = get_class(FAMILIES[family].class_path)
    assert issubclass(model_class, TabularModel) and model_class.params_class is FAMILIES[family]
    return model_class(**{**SMALL[family], **params})


def test_parameters_are_typed_and_checked(family: str) -> None:
    model = new_model(family)
    assert isinstance(model.params, FAMILIES[family])
    assert isinstance(model.memory_profile(), MemoryProfile)
    key, value, message = REFUSED[family]
    with pytest.raises(FxmlError) as refused:
        new_model(family, **{key: value})
    assert str(refused.value).startswith(message)
    with pytest.raises(TypeError, match="learnin_rate"):
        new_model(family, learnin_rate=0.1)


@dataclasses.dataclass
class Written:
    paths: list[str] = dataclasses.field(default_factory=list)
    watching: bool = False


WRITTEN = Written()
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not WRITTEN.watching or event != "open" or len(args) < 3:
        return
    path, mode, flags = args[:3]
    writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & WRITE_FLAGS)
    if writes and path is not None and not isinstance(path, int):
        WRITTEN.paths.append(str(path))


sys.addaudithook(_audit)  # audit hooks cannot be removed: it records only while watching


@contextlib.contextmanager
def on_its_own(monkeypatch: pytest.MonkeyPatch) -> Iterator[Written]:
    """No MLflow call succeeds, and every file opened for writing is recorded."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a model family called MLflow")

    for name in MLFLOW_CALLS:
        monkeypatch.setattr(mlflow, name, refuse)
    WRITTEN.paths.clear()
    WRITTEN.watching = True
    try:
        yield WRITTEN
    finally:
        WRITTEN.watching = False


def frozen_copy(split: DataSplit) -> dict[str, np.ndarray]:
    return {"features": split.features.copy(), "eras": split.eras.copy(),
            "target": np.array(split.target, copy=True)}


def test_fit_predict_save_load(family: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    train = toy_split(eras=12, rows=150, features=8, used=2)
    holdout = toy_split("validation", eras=3, rows=150, features=8, seed=1, used=2)
    test = toy_split("validation", eras=4, rows=100, features=8, seed=2, used=2)
    before = frozen_copy(train), frozen_copy(holdout)
    model = new_model(family)
    with on_its_own(monkeypatch) as written:
        assert model.fit(train, holdout) is model
        predictions = model.predict(test.features, test.eras)
    assert written.paths == []
    for split, copy in zip((train, holdout), before, strict=True):
        for name, values in copy.items():
            np.testing.assert_array_equal(getattr(split, name), values, err_msg=f"fit changed {name}")
    assert predictions.shape == (len(test),) and predictions.dtype == np.float64
    assert np.isfinite(predictions).all() and predictions.std() > 0
    if family in ("lgbm", "xgboost", "ridge"):  # the families that learn a signal in 5 rounds
        assert np.corrcoef(predictions, test.target)[0, 1] > 0.1

    model.save(tmp_path / "saved")
    reloaded = load_model(tmp_path / "saved")
    assert type(reloaded) is type(model)
    assert dataclasses.asdict(reloaded.params) == dataclasses.asdict(model.params)
    np.testing.assert_array_equal(reloaded.predict(test.features, test.eras), predictions)
    reloaded.save(tmp_path / "again")
    assert (tmp_path / "again" / "fxml_model.json").read_text() == \
        (tmp_path / "saved" / "fxml_model.json").read_text()


@pytest.mark.parametrize("storage", ["memory", "store"])
def test_rows_without_a_target_are_left_out_of_training(family: str, storage: str,
                                                        tmp_path: Path) -> None:
    """A model learns from the rows whose target is known as if the others were not there, reading
    them from the one matrix (in memory or the store file) it is given (Numerai's auxiliary
    targets are NaN in some training rows)."""
    train = toy_split(eras=12, rows=150, features=8, used=2)
    holdout = toy_split("validation", eras=3, rows=150, features=8, seed=1, used=2)
    test = toy_split("validation", eras=4, rows=100, features=8, seed=2, used=2)
    assert train.target is not None
    # scattered rows and a whole era: not one run of rows
    missing = (np.arange(len(train)) % 5 == 3) | (train.eras == 4)
    with_gaps = dataclasses.replace(train, target=np.where(missing, np.nan, train.target))
    if storage == "store":
        with_gaps = store_backed(with_gaps, tmp_path / "train.int8")
    labelled_copy = train.rows(~missing)
    assert not np.shares_memory(labelled_copy.features, train.features)
    predictions = new_model(family).fit(with_gaps, holdout).predict(test.features, test.eras)
    expected = new_model(family).fit(labelled_copy, holdout).predict(test.features, test.eras)
    np.testing.assert_array_equal(predictions, expected)


def test_a_family_defined_outside_fxml_is_checked_the_same_way(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The worked example of docs/adding-a-model.md, as a user writes it in a module of their own."""
    example = Path(__file__).parents[1] / "docs" / "examples" / "feature_mean.py"
    spec = importlib.util.spec_from_file_location("feature_mean", example)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "feature_mean", module)
    spec.loader.exec_module(module)
    assert issubclass(module.FeatureMeanModel.params_class, ModelParams)
    train, test = toy_split(used=1), toy_split("validation", seed=3, used=1)
    with on_its_own(monkeypatch) as written:
        model = module.FeatureMeanModel(feature="feature_1").fit(train)
        predictions = model.predict(test.features, test.eras)
    assert written.paths == []
    assert np.corrcoef(predictions, test.target)[0, 1] > 0.3
    model.save(tmp_path / "saved")
    np.testing.assert_array_equal(load_model(tmp_path / "saved").predict(test.features), predictions)
    # rows without a target are left out, as by fxml's own families
    assert train.target is not None
    missing = np.arange(len(train)) % 4 == 1
    with_gaps = dataclasses.replace(train, target=np.where(missing, np.nan, train.target))
    np.testing.assert_array_equal(
        module.FeatureMeanModel(feature="feature_1").fit(with_gaps).predict(test.features),
        module.FeatureMeanModel(feature="feature_1").fit(train.rows(~missing)).predict(test.features))
    with pytest.raises(FxmlError, match="model.feature must name a training feature"):
        module.FeatureMeanModel(feature="feature_99").fit(train)
    with pytest.raises(FxmlError, match="model.shrinkage must be >= 0"):
        module.FeatureMeanModel(shrinkage=-1)
