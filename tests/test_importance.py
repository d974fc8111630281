"""Permutation importance: the drop in validation CORR when a feature or a group is shuffled."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fxml.data.loader import DataSplit
from fxml.models.base import StepCallback, TabularModel
from fxml.models.params import ModelParams
from fxml.scoring.importance import feature_groups, permutation_importance, within_era_permutation
from tests.conftest import Workspace
from tests.helpers import toy_split


@dataclass
class OneFeatureParams(ModelParams):
    column: int = 0


class OneFeature(TabularModel):
    """Predicts feature ``column`` itself: uses no other feature."""

    params_class = OneFeatureParams
    params: OneFeatureParams

    def __init__(self, column: int) -> None:
        super().__init__(column=column)

    def fit(self, train: DataSplit, validation: DataSplit | None = None,
            on_step: StepCallback | None = None) -> OneFeature:
        return self

    def predict_float32(self, features: np.ndarray) -> np.ndarray:
        return features[:, self.params.column].astype(np.float64)

    def save_state(self, directory: Path) -> None: ...

    def load_state(self, directory: Path) -> None: ...


def test_the_used_feature_and_its_group_drop_most_and_unused_ones_not_at_all() -> None:
    split = toy_split("validation", eras=10, rows=300, used=3)
    model = OneFeature(3)
    by_feature = permutation_importance(model, split, repeats=2, seed=1)
    assert list(by_feature.columns) == ["name", "kind", "n_features", "corr_drop", "corr_drop_std",
                                        "corr_shuffled", "corr_baseline"]
    assert by_feature["name"].iloc[0] == "feature_3"
    top = by_feature.iloc[0]
    assert top["corr_baseline"] > 0.3 and top["corr_drop"] > 0.8 * top["corr_baseline"]
    assert (by_feature["corr_drop"].iloc[1:] == 0).all()  # predictions do not change at all

    groups = {"first": [0, 1], "second": [2, 3], "rest": [4, 5, 6, 7]}
    by_group = permutation_importance(model, split, groups, seed=1)
    assert by_group["name"].tolist()[0] == "second" and (by_group["kind"] == "group").all()
    assert by_group.set_index("name").loc[["first", "rest"], "corr_drop"].abs().max() == 0


def test_shuffles_stay_inside_eras_and_groups_come_from_feature_sets() -> None:
    eras = np.repeat([3, 1, 2], [5, 7, 4])
    source = within_era_permutation(eras, np.random.default_rng(0))
    assert sorted(source) == list(range(16)) and (eras[source] == eras).all()
    assert (source != np.arange(16)).any()

    sets = {"small": ["f_a", "f_b"], "all": ["f_a", "f_b", "f_c", "f_d"], "v2_equivalent_features": ["f_a"],
            "strength": ["f_b", "f_d", "f_zzz"], "wisdom": ["f_a"]}
    groups = feature_groups(sets, ["f_a", "f_b", "f_c", "f_d"])
    assert groups == {"strength": [1, 3], "wisdom": [0], "(ungrouped)": [2]}


def test_run_logs_importance_table_and_plot(workspace: Workspace) -> None:
    name = "importance-groups"
    result = workspace.train("model=ridge", "scorer.importance=groups", "scorer.importance_repeats=2",
                             f"tracking.run_name={name}", "tracking.log_model=false")
    assert result.returncode == 0, result.stderr[-3000:]
    run = next(r for r in workspace.runs() if r.info.run_name == name)
    paths = {a.path for a in workspace.client().list_artifacts(run.info.run_id, "importance")}
    assert paths == {"importance/permutation.csv", "importance/permutation.png"}
    table: pd.DataFrame = workspace.artifact_frame(run, "importance/permutation.csv")
    assert (table["kind"] == "group").all() and table["n_features"].sum() >= 1
    assert table["corr_baseline"].iloc[0] == pytest.approx(run.data.metrics["corr_mean"], abs=1e-9)
    assert table["corr_drop"].is_monotonic_decreasing
