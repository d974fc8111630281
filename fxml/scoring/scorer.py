"""The ``scorer=numerai`` group: gathers the reference columns a split needs and scores per era."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from fxml.data.benchmarks import benchmark_predictions
from fxml.data.layout import BENCHMARK_FILES
from fxml.data.loader import DataSplit, NumeraiData
from fxml.data.memory import SCORING_BLOCK_BYTES, read_rows
from fxml.errors import FxmlError
from fxml.scoring import score_eras, summarize
from fxml.scoring.comparison import comparison_scores, meta_reference, scored_grid
from fxml.scoring.diagnostics import MetaReference, calmar_ratio, compounded_annual_return
from fxml.scoring.eras import EraCodes, encode_eras
from fxml.scoring.grid import EraGrid
from fxml.scoring.importance import Predictor, feature_groups, permutation_importance
from fxml.scoring.portfolio import BenchmarkPortfolio, prepare_portfolio
from fxml.scoring.prepared import prepared
from fxml.scoring.settings import SCORER_SIGNATURE, ScorerSettings

log = logging.getLogger(__name__)
T = TypeVar("T")
U = TypeVar("U")
# the prepared parts of the comparison scores are kept beside the release's files
CACHE_FOLDER = ".fxml-cache"


def split_key(split: DataSplit) -> tuple:
    """Cheap identity of a split's rows and targets: enough to tell two era selections, feature
    sets or targets of a release apart (the prepared parts hold centred targets)."""
    target = np.nan_to_num(np.asarray(split.target, dtype=np.float64))
    return (split.name, len(split.ids), str(split.ids[0]), str(split.ids[-1]),
            tuple(split.feature_names), int(split.eras.astype(np.int64).sum()),
            float(target.sum()), float(target @ np.arange(target.size, dtype=np.float64)))


def scored_rows(split: DataSplit) -> tuple[EraCodes, EraGrid]:
    assert split.target is not None
    codes = encode_eras(split.eras)
    return codes, scored_grid(codes, split.target)


def beside(main: Callable[[], T], side: Callable[[], U]) -> tuple[T, U]:
    """``main()`` on this thread while ``side()`` runs on another; both results, or the first
    error. The other thread is a daemon, so an error or interrupt in ``main`` is not held up."""
    outcome: dict[str, Any] = {}

    def run_side() -> None:
        try:
            outcome["value"] = side()
        except BaseException as error:  # handed to the caller's thread below
            outcome["error"] = error

    thread = threading.Thread(target=run_side, name="fxml-scoring-beside", daemon=True)
    thread.start()
    value = main()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return value, outcome["value"]


def _cached(key: tuple, build: Callable[[], Any]) -> Any:
    """In-memory only: cheap to rebuild (the scored grid)."""
    return prepared(key, object, build)  # type: ignore[arg-type]


@dataclass
class Scores:
    per_era: pd.DataFrame
    summary: dict[str, float]
    references: dict[str, np.ndarray] = field(default_factory=dict)
    benchmark_column: str | None = None


def payout_score(per_era: pd.DataFrame, corr_weight: float, mmc_weight: float, clip: float) -> pd.Series:
    """Numerai's per-round payout factor before stake: clip(c_corr CORR + c_mmc MMC)."""
    return (corr_weight * per_era["corr"] + mmc_weight * per_era["mmc"]).clip(-clip, clip)


class NumeraiScorer:
    # the settings, defaults and checks: ScorerSettings (fxml.scoring.settings)
    __signature__ = SCORER_SIGNATURE

    def __init__(self, *args: Any, **settings: Any) -> None:
        s = ScorerSettings(*args, **settings)
        self.settings = s
        self.use_meta_model, self.use_benchmark = s.meta_model, s.benchmark
        self.benchmark_column = s.benchmark_column
        self.use_features = s.fnc or s.feature_exposure
        self.keep = {"fnc": s.fnc, "feature_exposure": s.feature_exposure}
        self.payout = (s.payout_corr_weight, s.payout_mmc_weight, s.payout_clip)
        self.importance_of = s.importance
        self.importance_repeats, self.importance_seed = s.importance_repeats, s.importance_seed
        self.portfolio = PortfolioSettings(s.mpc, s.mpc_own_stake, s.mpc_benchmark_stake,
                                           dict(s.mpc_stakes), s.mpc_benchmark_columns,
                                           s.mpc_neutralizers, s.mpc_sample_weights)
        self.diagnostics, self.top_bottom = s.diagnostics, s.top_bottom

    def importance(self, model: Predictor, split: DataSplit, data: NumeraiData) -> pd.DataFrame | None:
        """Permutation importance of features or feature groups; None when not asked for."""
        if self.importance_of == "none":
            return None
        groups = None
        if self.importance_of == "groups":
            groups = feature_groups(data.metadata["feature_sets"], split.feature_names)
        return permutation_importance(model, split, groups, self.importance_repeats, self.importance_seed)

    def score(self, predictions: np.ndarray, split: DataSplit, data: NumeraiData) -> Scores:
        if split.target is None:
            raise FxmlError(f"the {split.name} split has no targets to score against")
        if np.isnan(predictions).any():
            raise FxmlError(f"the model predicted NaN for {np.isnan(predictions).sum()} row(s)")
        references: dict[str, np.ndarray] = {}
        benchmark_name = None
        if self.use_meta_model:
            references["meta_model"] = self._optional(lambda: data.meta_model(split), "MMC")
        if self.use_benchmark:
            found = self._optional(lambda: data.benchmark(split, self.benchmark_column), "BMC")
            if found is not None:
                benchmark_name, references["benchmark"] = found
        references = {k: v for k, v in references.items() if v is not None}
        # The comparison scores share nothing with the core metrics but their inputs, and the
        # core metrics leave a core idle below THREADED_MIN_FEATURES: numpy's sorts, gathers and
        # ufuncs release the GIL, so preparing the benchmark portfolio and the meta model's side
        # beside them takes little of the scoring's wall-clock time.
        per_era, extra = beside(
            lambda: score_eras(predictions, split.target, split.eras,
                               meta_model=references.get("meta_model"),
                               benchmark=references.get("benchmark"),
                               features=split.features if self.use_features else None),
            lambda: self._comparison_scores(predictions, split, data, references.get("meta_model")))
        per_era = per_era.drop(columns=[c for c, keep in self.keep.items() if not keep and c in per_era])
        if "mmc" in per_era:
            per_era["payout"] = payout_score(per_era, *self.payout)
        per_era = per_era.join(extra.reindex(per_era.index))
        return Scores(per_era, with_payout_summaries(summarize(per_era), per_era), references,
                      benchmark_name)

    def _comparison_scores(self, predictions: np.ndarray, split: DataSplit, data: NumeraiData,
                           meta_model: np.ndarray | None) -> pd.DataFrame:
        """MPC and the diagnostics, per era (see ``comparison_scores``)."""
        codes, grid = _cached(("grid", split_key(split)), lambda: scored_rows(split))
        portfolio = self._portfolio(split, data, codes, grid) if self.portfolio.enabled else None
        meta = None
        if self.diagnostics and meta_model is not None:
            filled = np.nan_to_num(meta_model)
            key = ("meta", split_key(split), int(np.isnan(meta_model).sum()), float(filled.sum()),
                   float(filled @ np.arange(filled.size, dtype=np.float64)))
            meta = prepared(key, MetaReference,
                            lambda: meta_reference(codes, grid, meta_model, split.features),
                            self._cache_folder(data))
        return comparison_scores(
            predictions, split.target, codes, grid, portfolio=portfolio,
            own_stake=self.portfolio.own_stake, meta=meta,
            top_bottom=self.top_bottom if self.diagnostics else None)

    def _portfolio(self, split: DataSplit, data: NumeraiData, codes: EraCodes,
                   grid: EraGrid) -> BenchmarkPortfolio | None:
        """The benchmark models' side of the meta portfolio (None without a benchmark file).
        It does not depend on the model, so a process scoring several models on the same split
        (a sweep) prepares it once."""
        settings = self.portfolio
        path = self._optional(lambda: data.path(BENCHMARK_FILES[split.name]), "MPC")
        if path is None:
            return None
        stat = path.stat()
        key = ("portfolio", str(path.resolve()), stat.st_mtime_ns, stat.st_size, split_key(split),
               repr(replace(settings, own_stake=0.0)))  # the model's stake is applied later
        folder = self._cache_folder(data) if settings.neutralizers is None else None
        return prepared(key, BenchmarkPortfolio,
                        lambda: self._prepare_portfolio(path, split, data, codes, grid), folder)

    @staticmethod
    def _cache_folder(data: NumeraiData) -> Path | None:
        folder = getattr(data, "folder", None)
        return Path(folder).parent / CACHE_FOLDER if folder is not None else None

    def _prepare_portfolio(self, path: Path, split: DataSplit, data: NumeraiData, codes: EraCodes,
                           grid: EraGrid) -> BenchmarkPortfolio | None:
        settings = self.portfolio
        found = self._optional(lambda: benchmark_predictions(path, split.ids, settings.benchmark_columns),
                               "MPC")
        if found is None:
            return None
        names, benchmarks = found
        unknown = sorted(set(settings.stakes) - set(names))
        if unknown:
            raise FxmlError(f"scorer.mpc_stakes names {unknown[0]}, not a column of the benchmark file "
                            f"(columns: {', '.join(names)})")
        stakes = np.array([settings.stakes.get(n, settings.benchmark_stake) for n in names])
        sample_weights = (None if settings.sample_weights is None
                          else sample_weight_column(settings.sample_weights, split.ids))
        neutralizers = (None if settings.neutralizers is None
                        else neutralizer_columns(split, data, settings.neutralizers))
        portfolio = prepare_portfolio(benchmarks, stakes, split.target, codes.codes, codes.n_eras,
                                      sample_weights=sample_weights, neutralizers=neutralizers,
                                      grid=grid)
        log.info("scoring: MPC in a portfolio of the model (stake %g) and %d benchmark models",
                 settings.own_stake, len(names))
        return portfolio

    @staticmethod
    def _optional(load, metric: str):  # type: ignore[no-untyped-def]
        try:
            return load()
        except FxmlError as error:
            log.warning("scoring: no %s (%s)", metric, error)
            return None


@dataclass(frozen=True)
class PortfolioSettings:
    """The simulated meta portfolio MPC is measured in (``scorer.mpc*``)."""

    enabled: bool
    own_stake: float
    benchmark_stake: float
    stakes: dict[str, float]
    benchmark_columns: list[str] | None
    neutralizers: str | None
    sample_weights: str | None


def with_payout_summaries(summary: dict[str, float], per_era: pd.DataFrame) -> dict[str, float]:
    """APY-style compounding and Calmar ratio of the payout-style score, beside its mean and sharpe."""
    if "payout" in per_era:
        payout = per_era["payout"].sort_index().to_numpy(dtype=np.float64)
        summary = {**summary, "payout_apy": compounded_annual_return(payout),
                   "payout_calmar": calmar_ratio(payout)}
    return summary


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


def neutralizer_columns(split: DataSplit, data: NumeraiData, feature_set: str) -> np.ndarray:
    """The columns of a features.json set (or ``features``: the run's own) as MPC's neutralisers."""
    if feature_set == "features":
        return split.features
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
