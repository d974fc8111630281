"""Permutation importance for any model family: the drop in validation CORR when one feature, or
one named group of features, is shuffled.

Shuffling is *within each era* (a row receives the value of another row of the same era), so a
shuffled column keeps its per-era distribution and only its link to the target is broken; a
group's columns are shuffled with one shared permutation, keeping the group's rows intact. The
score is Numerai's mean per-era CORR over the rows with a known target. A drop near 0 means the
model does not use the feature; a negative drop means shuffling helped (noise, or overfitting).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np
import pandas as pd

from fxml.scoring import score_eras

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from fxml.data.split import DataSplit  # a plain shape; importing it would import its store reader


class Predictor(Protocol):
    """What importance needs of a model (any fxml model is one; scoring does not import models)."""

    def predict(self, features: np.ndarray, eras: np.ndarray | None = None) -> np.ndarray: ...


# feature sets of features.json that are sizes or legacy lists, not groups of related features
NOT_GROUPS = frozenset({"small", "medium", "all"})
COLUMNS = ("name", "kind", "n_features", "corr_drop", "corr_drop_std", "corr_shuffled",
           "corr_baseline")


def feature_groups(feature_sets: dict[str, list[str]], feature_names: list[str]) -> dict[str, list[int]]:
    """Named groups of features.json (intelligence, charisma, ...) as column indices of
    ``feature_names``; size sets (small/medium/all) and legacy ``*_features`` lists are skipped,
    and features in no group form the group ``(ungrouped)``."""
    position = {name: i for i, name in enumerate(feature_names)}
    groups: dict[str, list[int]] = {}
    for name, members in feature_sets.items():
        if name in NOT_GROUPS or name.endswith("_features"):
            continue
        columns = sorted(position[m] for m in members if m in position)
        if columns:
            groups[name] = columns
    grouped = {c for columns in groups.values() for c in columns}
    rest = [c for c in range(len(feature_names)) if c not in grouped]
    if rest:
        groups["(ungrouped)"] = rest
    return groups


def _mean_corr(model: Predictor, features: np.ndarray, split: DataSplit) -> float:
    assert split.target is not None
    predictions = model.predict(features, split.eras)
    return float(score_eras(predictions, split.target, split.eras)["corr"].mean())


def within_era_permutation(eras: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Row indices ``source`` such that ``column[source]`` shuffles ``column`` inside each era."""
    by_era = np.argsort(eras, kind="stable")
    shuffled = np.lexsort((rng.random(len(eras)), eras))
    source = np.empty(len(eras), dtype=np.intp)
    source[by_era] = shuffled
    return source


def permutation_importance(
    model: Predictor,
    split: DataSplit,
    groups: dict[str, list[int]] | None = None,
    repeats: int = 1,
    seed: int = 0,
) -> pd.DataFrame:
    """Drop in mean per-era CORR when each feature (``groups=None``) or each group of feature
    columns is shuffled within eras, averaged over ``repeats`` shuffles.

    Returns one row per feature or group, largest drop first, with columns ``name``, ``kind``
    (feature/group), ``n_features``, ``corr_drop`` (mean over repeats), ``corr_drop_std``,
    ``corr_shuffled`` and ``corr_baseline``.
    """
    assert split.target is not None
    split = split.rows(~np.isnan(split.target))
    baseline = _mean_corr(model, split.features, split)
    if groups is None:
        units = {name: [i] for i, name in enumerate(split.feature_names)}
        kind = "feature"
    else:
        units, kind = groups, "group"
    rng = np.random.default_rng(seed)
    features = split.features.copy()
    rows = []
    for name, columns in units.items():
        original = features[:, columns].copy()
        scores = []
        for _ in range(repeats):
            features[:, columns] = original[within_era_permutation(split.eras, rng)]
            scores.append(_mean_corr(model, features, split))
        features[:, columns] = original
        drops = baseline - np.asarray(scores)
        rows.append((name, kind, len(columns), drops.mean(), drops.std(), float(np.mean(scores)),
                     baseline))
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    return table.sort_values("corr_drop", ascending=False, kind="stable").reset_index(drop=True)


def importance_figure(table: pd.DataFrame, top: int = 30) -> Figure:
    """Horizontal bars of the largest CORR drops (error bars: std over repeats)."""
    shown = table.head(top).iloc[::-1]
    # drawn without pyplot (no backend needed); imported only when a figure is drawn
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 1.5 + 0.28 * len(shown)), dpi=100)
    axis = figure.subplots()
    axis.barh(shown["name"], shown["corr_drop"], xerr=shown["corr_drop_std"], color="#4878a8")
    axis.axvline(0.0, color="grey", linewidth=0.8)
    axis.set_xlabel("drop in validation CORR mean when shuffled within eras")
    kind = "groups" if (table["kind"] == "group").all() else "features"
    more = f" (top {top} of {len(table)})" if len(table) > top else ""
    axis.set_title(f"Permutation importance of {kind}{more}, baseline CORR "
                   f"{table['corr_baseline'].iloc[0]:.4f}")
    axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return figure

