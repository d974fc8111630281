"""The ``scorer`` group's settings, defaults and checks, written once.

:class:`~fxml.scoring.scorer.NumeraiScorer` is a dataclass subclassing :class:`ScorerSettings`
(constructing it runs the checks); the config schema is derived from the same dataclass
(fxml.config.schema). This module imports nothing heavy, so schemas register cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fxml.errors import one_of, require

IMPORTANCE = ("none", "features", "groups")
PAYOUT_MULTIPLIERS = ("config", "round")


@dataclass
class ScorerSettings:
    meta_model: bool = True  # MMC against the meta model
    benchmark: bool = True  # BMC against a benchmark model
    # null: the release's top benchmark, which Numerai computes BMC against (v53_lgbm_ender20 in v5.3)
    benchmark_column: str | None = None
    fnc: bool = True  # CORR of the predictions neutralised to the selected features
    feature_exposure: bool = True
    # payout-style score per era: clip(corr_weight * CORR + mmc_weight * MMC, -clip, clip)
    payout_corr_weight: float = 0.5
    payout_mmc_weight: float = 2.0
    payout_clip: float = 0.05
    # config: the two weights above; round: the current round's CORR and MMC multipliers, asked
    # from Numerai (no keys) by the job before scoring, so the scorer itself never calls out
    payout_multipliers: str = "config"  # config | round
    payout_api: str = "numerapi.NumerAPI"  # the numerapi client class payout_multipliers=round asks
    # a file keeping the last round's multipliers with its number, so a round is asked for once;
    # null: payout_round.json where Numerai's data goes, ${FXML_DATA_DIR:-data}/numerai/
    payout_round_cache: str | None = None
    # targets the predictions' per-era CORR is also reported against (corr_<target>_mean, ...),
    # to study which training target generalises; every other score is on the main target
    targets: list[str] = field(default_factory=list)
    # permutation importance after scoring (any model): drop in validation CORR when a feature, or a
    # features.json group (intelligence, charisma, ...), is shuffled within eras
    importance: str = "none"  # none | features | groups
    importance_repeats: int = 1
    importance_seed: int = 0
    # MPC: the model's meta-portfolio contribution (numerai-tools' meta_portfolio_contribution) in a
    # simulated portfolio of the model and the benchmark models of {split}_benchmark_models.parquet.
    # Not Numerai's TC.
    mpc: bool = True
    mpc_own_stake: float = 1.0  # the model's stake in the portfolio
    mpc_benchmark_stake: float = 1.0  # each benchmark model's stake, unless named in mpc_stakes
    # per benchmark column: +scorer.mpc_stakes.v52_lgbm_ender20=3
    mpc_stakes: dict[str, float] = field(default_factory=dict)
    mpc_benchmark_columns: list[str] | None = None  # null: every prediction column; or a list
    mpc_neutralizers: str | None = None  # null: none; features (the run's); or a features.json set
    mpc_sample_weights: str | None = None  # null: uniform; or a parquet file with id and one weight
    # tb<N>_corr, meta_model_rank_corr, exposure_dissimilarity per era; payout_apy, payout_calmar
    diagnostics: bool = True
    top_bottom: int = 200  # rows at each end of an era for tb<N>_corr

    def __post_init__(self) -> None:
        self.mpc_stakes = dict(self.mpc_stakes or {})
        self.targets = list(self.targets or [])
        require(self.payout_clip > 0, "scorer.payout_clip", "must be > 0", self.payout_clip)
        one_of("scorer.payout_multipliers", self.payout_multipliers, PAYOUT_MULTIPLIERS)
        for key, stake in [("scorer.mpc_own_stake", self.mpc_own_stake),
                           ("scorer.mpc_benchmark_stake", self.mpc_benchmark_stake),
                           *((f"scorer.mpc_stakes.{k}", v) for k, v in self.mpc_stakes.items())]:
            require(stake >= 0, key, "must be >= 0", stake)
        require(self.top_bottom >= 1, "scorer.top_bottom", "must be >= 1", self.top_bottom)
        one_of("scorer.importance", self.importance, IMPORTANCE)
        require(self.importance_repeats >= 1, "scorer.importance_repeats", "must be >= 1",
                self.importance_repeats)

