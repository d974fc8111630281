"""The ``scorer=numerai`` group: scores a split's predictions per era against the references the
data layer gathered (``fxml.data.references.ScoringInputs``), and sums them up.

Arrays in, numbers out: the scorer opens no file and keeps nothing between calls. The parts it
prepares once per split (the benchmark portfolio, the meta model's side) go to the cache the inputs
carry, if any.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from fxml.errors import FxmlError
from fxml.scoring import corr_by_era, score_eras, summarize
from fxml.scoring.comparison import comparison_scores, meta_reference, scored_grid
from fxml.scoring.diagnostics import MetaReference, calmar_ratio, compounded_annual_return
from fxml.scoring.eras import EraCodes, encode_eras
from fxml.scoring.grid import EraGrid
from fxml.scoring.importance import Predictor, feature_groups, permutation_importance
from fxml.scoring.portfolio import BenchmarkPortfolio, prepare_portfolio
from fxml.scoring.prepared import prepared
from fxml.scoring.settings import ScorerSettings
from fxml.scoring.summary import CONSTANT_PREDICTIONS

if TYPE_CHECKING:  # the data layer's plain shapes; importing them would import its file readers
    from fxml.data.references import PortfolioInputs, ScoringInputs
    from fxml.data.split import DataSplit

log = logging.getLogger(__name__)


@dataclass
class Scores:
    per_era: pd.DataFrame
    summary: dict[str, float]
    references: dict[str, np.ndarray] = field(default_factory=dict)
    benchmark_column: str | None = None


def target_corr_column(target: str) -> str:
    """The per-era column of CORR against another target than the one scored: ``corr_<target>``."""
    return f"corr_{target}"


def payout_score(per_era: pd.DataFrame, corr_weight: float, mmc_weight: float, clip: float) -> pd.Series:
    """Numerai's per-round payout factor before stake: clip(c_corr CORR + c_mmc MMC)."""
    return (corr_weight * per_era["corr"] + mmc_weight * per_era["mmc"]).clip(-clip, clip)


@dataclass
class NumeraiScorer(ScorerSettings):
    """The ``scorer`` group's settings (``ScorerSettings``: defaults and checks) and the scoring
    they choose."""

    @property
    def portfolio(self) -> PortfolioSettings:
        return PortfolioSettings(self.mpc, self.mpc_own_stake, self.mpc_benchmark_stake,
                                 dict(self.mpc_stakes), self.mpc_benchmark_columns,
                                 self.mpc_neutralizers, self.mpc_sample_weights)

    def importance_of(self, model: Predictor, split: DataSplit,
                      feature_sets: dict[str, list[str]]) -> pd.DataFrame | None:
        """Permutation importance of features or of the release's feature groups (``feature_sets``
        of features.json), as ``importance`` says; None when not asked for."""
        if self.importance == "none":
            return None
        groups = None
        if self.importance == "groups":
            groups = feature_groups(feature_sets, split.feature_names)
        return permutation_importance(model, split, groups, self.importance_repeats, self.importance_seed)

    def score(self, predictions: np.ndarray, inputs: ScoringInputs) -> Scores:
        if inputs.target is None:
            raise FxmlError(f"the {inputs.name} split has no targets to score against")
        if np.isnan(predictions).any():
            raise FxmlError(f"the model predicted NaN for {np.isnan(predictions).sum()} row(s)")
        references = {name: values for name, values, wanted in
                      (("meta_model", inputs.meta_model, self.meta_model),
                       ("benchmark", inputs.benchmark, self.benchmark))
                      if wanted and values is not None}
        per_era = score_eras(predictions, inputs.target, inputs.eras,
                             meta_model=references.get("meta_model"),
                             benchmark=references.get("benchmark"),
                             features=inputs.features if self.fnc or self.feature_exposure else None)
        dropped = [name for name, kept in (("fnc", self.fnc), ("feature_exposure", self.feature_exposure))
                   if not kept and name in per_era]
        per_era = per_era.drop(columns=dropped)
        if "mmc" in per_era:
            per_era["payout"] = payout_score(per_era, self.payout_corr_weight, self.payout_mmc_weight,
                                             self.payout_clip)
        extra = self._comparison_scores(predictions, inputs, inputs.target, references.get("meta_model"))
        per_era = per_era.join(extra.reindex(per_era.index))
        for name, target in inputs.other_targets.items():
            per_era[target_corr_column(name)] = corr_by_era(predictions, target, inputs.eras)
        per_era = without_constant_eras(per_era)
        return Scores(per_era, with_payout_summaries(summarize(per_era), per_era), references,
                      inputs.benchmark_name if "benchmark" in references else None)

    def _comparison_scores(self, predictions: np.ndarray, inputs: ScoringInputs, target: np.ndarray,
                           meta_model: np.ndarray | None) -> pd.DataFrame:
        """MPC and the diagnostics, per era (see ``comparison_scores``)."""
        codes = encode_eras(inputs.eras)
        grid = scored_grid(codes, target)
        portfolio = None
        if self.portfolio.enabled and inputs.portfolio is not None:
            portfolio = self._portfolio(inputs, inputs.portfolio, target, codes, grid)
        meta = None
        if self.diagnostics and meta_model is not None:
            meta = prepared(inputs.prepared, "meta model reference", MetaReference,
                            lambda: meta_reference(codes, grid, meta_model, inputs.features))
        return comparison_scores(
            predictions, target, codes, grid, portfolio=portfolio,
            own_stake=self.portfolio.own_stake, meta=meta,
            top_bottom=self.top_bottom if self.diagnostics else None)

    def _portfolio(self, inputs: ScoringInputs, references: PortfolioInputs, target: np.ndarray,
                   codes: EraCodes, grid: EraGrid) -> BenchmarkPortfolio:
        """The benchmark models' side of the meta portfolio. It does not depend on the model, so
        runs scoring several models on the same split (a sweep) prepare it once."""
        settings = self.portfolio
        unknown = sorted(set(settings.stakes) - set(references.names))
        if unknown:
            raise FxmlError(f"scorer.mpc_stakes names {unknown[0]}, not a column of the benchmark file "
                            f"(columns: {', '.join(references.names)})")
        stakes = np.array([settings.stakes.get(n, settings.benchmark_stake) for n in references.names])
        log.info("scoring: MPC in a portfolio of the model (stake %g) and %d benchmark models",
                 settings.own_stake, len(references.names))
        # the model's stake is applied later; neutralisers are not kept (rows, not arrays)
        name = f"benchmark portfolio {replace(settings, own_stake=0.0)!r}"
        return prepared(inputs.prepared if references.neutralizers is None else None, name,
                        BenchmarkPortfolio,
                        lambda: prepare_portfolio(references.predictions, stakes, target, codes.codes,
                                                  codes.n_eras, sample_weights=references.sample_weights,
                                                  neutralizers=references.neutralizers, grid=grid))


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


def without_constant_eras(per_era: pd.DataFrame) -> pd.DataFrame:
    """``per_era`` with every score NaN in the eras ``score_eras`` flagged as having constant
    predictions: MPC and the diagnostics come out 0 or ~1 there, where CORR is NaN, and would
    otherwise be summarised over more eras than CORR."""
    if CONSTANT_PREDICTIONS not in per_era:
        return per_era
    constant = per_era[CONSTANT_PREDICTIONS].to_numpy() == 1.0
    per_era = per_era.copy()
    per_era.loc[constant, per_era.columns != CONSTANT_PREDICTIONS] = np.nan
    return per_era


def with_payout_summaries(summary: dict[str, float], per_era: pd.DataFrame) -> dict[str, float]:
    """APY-style compounding and Calmar ratio of the payout-style score, beside its mean and sharpe."""
    if "payout" in per_era:
        payout = per_era["payout"].sort_index().to_numpy(dtype=np.float64)
        summary = {**summary, "payout_apy": compounded_annual_return(payout),
                   "payout_calmar": calmar_ratio(payout)}
    return summary
