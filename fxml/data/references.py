"""What scoring compares a split's predictions with, gathered from the release as arrays.

Scoring (``fxml.scoring``) takes arrays and returns numbers; this module does its reading: the meta
model and a benchmark model (MMC, BMC), the benchmark models, sample weights and neutralisers of
the meta portfolio (MPC), each aligned to the split's rows by id, and the split's features as rows
read an era at a time from the int8 store. It also keeps the model-independent parts scoring
prepares from them (the benchmark portfolio, the meta model's side) as ``.npz`` files beside the
release, so a later run on the same split loads them instead of preparing them again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

import numpy as np

from fxml.data.benchmarks import benchmark_predictions
from fxml.data.layout import BENCHMARK_FILES, META_MODEL
from fxml.data.memory import SCORING_BLOCK_BYTES, StoreRows, read_rows
from fxml.data.split import MAIN_TARGET, DataSplit
from fxml.errors import FxmlError

if TYPE_CHECKING:
    from fxml.data.loader import NumeraiData

log = logging.getLogger(__name__)
T = TypeVar("T")
# the prepared parts of the comparison scores are kept beside the release's files
CACHE_FOLDER = ".fxml-cache"


class ReferenceChoice(Protocol):
    """Which references to gather: the ``scorer`` group's settings (``ScorerSettings``) are one."""

    meta_model: bool
    benchmark: bool
    benchmark_column: str | None
    fnc: bool
    feature_exposure: bool
    mpc: bool
    mpc_benchmark_columns: list[str] | None
    mpc_neutralizers: str | None
    mpc_sample_weights: str | None
    targets: list[str]


@dataclass(frozen=True)
class PortfolioInputs:
    """The release's side of the meta portfolio MPC is measured in."""

    names: list[str]  # benchmark model columns
    predictions: np.ndarray  # (rows, benchmark models), NaN where a model has no prediction
    sample_weights: np.ndarray | None  # per row, or None: uniform
    neutralizers: np.ndarray | StoreRows | None  # (rows, m) columns, or None


@dataclass(frozen=True)
class PreparedParts:
    """Prepared scoring parts of one split as ``.npz`` files in ``folder``, each a dict of arrays
    under a name scoring gives (what it prepared, with which settings). ``identity`` tells the split's
    rows, targets and reference files apart, so a changed release or era selection prepares anew."""

    folder: Path
    identity: str

    def path(self, name: str) -> Path:
        digest = hashlib.sha256(f"{self.identity}\n{name}".encode()).hexdigest()[:32]
        return self.folder / f"{digest}.npz"

    def load(self, name: str) -> dict[str, np.ndarray] | None:
        """The arrays saved under ``name``; None when there are none or they cannot be read."""
        path = self.path(name)
        if not path.is_file():
            return None
        try:
            with np.load(path) as stored:
                return {key: stored[key] for key in stored.files}
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            log.warning("scoring: rebuilding %s (%s)", path.name, error)
            return None

    def save(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        """Written atomically; a folder that cannot be written (read-only data) keeps nothing."""
        path = self.path(name)
        partial = path.with_name(f".{path.stem}.{os.getpid()}.npz")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(partial, allow_pickle=False, **arrays)
            os.replace(partial, path)
        except OSError as error:
            log.warning("scoring: cannot keep %s (%s)", path, error)


@dataclass(frozen=True)
class ScoringInputs:
    """One split's rows and what scoring compares its predictions with, as arrays: what
    ``NumeraiScorer.score`` takes. ``features`` is the int8 matrix in memory, or its rows read from
    the store file an era at a time (``fxml.scoring.rows.FeatureRows``)."""

    name: str
    target: np.ndarray | None
    eras: np.ndarray
    features: np.ndarray | StoreRows
    feature_names: list[str]
    meta_model: np.ndarray | None = None
    benchmark: np.ndarray | None = None
    benchmark_name: str | None = None
    portfolio: PortfolioInputs | None = None
    prepared: PreparedParts | None = None
    # other targets the predictions' per-era CORR is reported against too, by name (``target``
    # above is the one scored: the release's main target)
    other_targets: dict[str, np.ndarray] = field(default_factory=dict)


def feature_rows(matrix: np.ndarray) -> np.ndarray | StoreRows:
    """The rows of a split's feature matrix as scoring reads them: from the store file when it is
    memory-mapped (one era at a time, nothing stays mapped), else the matrix itself."""
    return StoreRows.of(matrix) or matrix


def scoring_inputs(data: NumeraiData, split: DataSplit, choice: ReferenceChoice) -> ScoringInputs:
    """Everything scoring ``split`` needs, read from ``data``'s release. A reference file that is
    missing or unreadable leaves its metric out with a warning."""
    meta_model = benchmark = None
    benchmark_name = None
    if split.ids is None:
        log.warning("scoring: no MMC, BMC or MPC (the %s split was read without ids)", split.name)
    else:
        if choice.meta_model:
            meta_model = optional(lambda: data.meta_model(split), "MMC")
        if choice.benchmark:
            found = optional(lambda: data.benchmark(split, choice.benchmark_column), "BMC")
            if found is not None:
                benchmark_name, benchmark = found
    portfolio = portfolio_inputs(data, split, choice) if choice.mpc and split.ids is not None else None
    return ScoringInputs(split.name, split.target, split.eras, feature_rows(split.features),
                         list(split.feature_names), meta_model, benchmark, benchmark_name, portfolio,
                         prepared_parts(data, split, choice, portfolio),
                         other_targets(split, [getattr(data, "target", MAIN_TARGET), *choice.targets]))


def other_targets(split: DataSplit, names: list[str]) -> dict[str, np.ndarray]:
    """The columns of the targets ``names`` other than the one ``split`` is scored on (the
    training target, ``scorer.targets``), by name."""
    columns = {}
    for name in dict.fromkeys(names):
        if name != split.target_name:
            column = split.with_target(name).target
            assert column is not None, "a loaded target is a column"
            columns[name] = column
    return columns


def optional(load: Callable[[], T], metric: str) -> T | None:
    """``load()``, or None with a warning for a user error (a missing or malformed file)."""
    try:
        return load()
    except FxmlError as error:
        log.warning("scoring: no %s (%s)", metric, error)
        return None


def portfolio_inputs(data: NumeraiData, split: DataSplit,
                     choice: ReferenceChoice) -> PortfolioInputs | None:
    """The benchmark models of the split's benchmark file (None, with a warning, without one),
    and the sample weights and neutralisers the settings name (errors there are the user's)."""
    assert split.ids is not None
    ids = split.ids
    found = optional(lambda: benchmark_predictions(data.path(BENCHMARK_FILES[split.name]), ids,
                                                   choice.mpc_benchmark_columns), "MPC")
    if found is None:
        return None
    names, predictions = found
    sample_weights = (None if choice.mpc_sample_weights is None
                      else sample_weight_column(choice.mpc_sample_weights, split.ids))
    neutralizers = (None if choice.mpc_neutralizers is None
                    else neutralizer_columns(split, data, choice.mpc_neutralizers))
    return PortfolioInputs(names, predictions, sample_weights, neutralizers)


def sample_weight_column(path: str, ids: np.ndarray) -> np.ndarray:
    """Per-row sample weights from a parquet file with ``id`` and one numeric column."""
    names, matrix = benchmark_predictions(Path(path), ids)
    if len(names) != 1:
        raise FxmlError(f"scorer.mpc_sample_weights: {path} must hold id and one weight column "
                        f"(found {', '.join(names)})")
    missing = int(np.isnan(matrix[:, 0]).sum())
    if missing:
        raise FxmlError(f"scorer.mpc_sample_weights: {path} has no weight for {missing} row(s)")
    return matrix[:, 0]


def neutralizer_columns(split: DataSplit, data: NumeraiData,
                        feature_set: str) -> np.ndarray | StoreRows:
    """The columns of a features.json set (or ``features``: the run's own) as MPC's neutralisers."""
    if feature_set == "features":
        return feature_rows(split.features)
    sets = data.metadata["feature_sets"]
    if feature_set not in sets:
        raise FxmlError(f"scorer.mpc_neutralizers={feature_set} is not a feature set of the release "
                        f"(available: features, {', '.join(sorted(sets))})")
    position = {name: i for i, name in enumerate(split.feature_names)}
    wanted = list(sets[feature_set])
    if all(name in position for name in wanted):
        # a block of rows at a time: validation is read from its store file, not held
        columns = [position[name] for name in wanted]
        chosen = np.empty((len(split), len(columns)), dtype=split.features.dtype)
        step = max(SCORING_BLOCK_BYTES // max(split.features.shape[1], 1), 1)
        for start in range(0, len(split), step):
            chosen[start : start + step] = read_rows(split.features, start, start + step)[:, columns]
        return chosen
    # neutralisers the run did not load come from the split's file, for the same rows
    return data.read_features(split, wanted)


def prepared_parts(data: NumeraiData, split: DataSplit, choice: ReferenceChoice,
                   portfolio: PortfolioInputs | None) -> PreparedParts | None:
    """Where scoring keeps the prepared parts of ``split``: beside the release, under the identity
    of the split's rows and targets, the features and the reference files read. None for a split
    without ids or a release without a folder; None too with neutralisers, which are not kept."""
    folder = getattr(data, "folder", None)
    neutralized = portfolio is not None and portfolio.neutralizers is not None
    if folder is None or split.ids is None or not len(split.ids) or split.target is None or neutralized:
        return None
    sources = [BENCHMARK_FILES[split.name], META_MODEL]
    files = [Path(folder) / name for name in sources]
    if choice.mpc_sample_weights is not None:
        files.append(Path(choice.mpc_sample_weights))
    stamps = [(str(path.resolve()), path.stat().st_mtime_ns, path.stat().st_size)
              for path in files if path.is_file()]
    target = np.nan_to_num(np.asarray(split.target, dtype=np.float64))
    identity = repr((split.name, len(split.ids), str(split.ids[0]), str(split.ids[-1]),
                     tuple(split.feature_names), int(split.eras.astype(np.int64).sum()),
                     float(target.sum()), float(target @ np.arange(target.size, dtype=np.float64)),
                     stamps, choice.mpc_benchmark_columns))
    return PreparedParts(Path(folder).parent / CACHE_FOLDER, identity)
