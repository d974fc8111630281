"""Typed schemas behind every config group.

Each YAML file in ``conf/<group>/`` extends one of these dataclasses (registered as
``fxml_schema_<group>_<name>``), so Hydra rejects a misspelt key or a value of the wrong type while composing.
Range checks live in ``__post_init__``: :func:`fxml.config.validate` builds the objects right after
composition, so a bad value fails before any data is read, with one line naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from fxml.errors import FxmlError


def require(condition: bool, key: str, rule: str, value: Any) -> None:
    if not condition:
        raise FxmlError(f"{key} {rule} (got {value!r})")


def one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    require(value in allowed, key, f"must be one of {', '.join(allowed)}", value)


# --- data -------------------------------------------------------------------------------------


@dataclass
class SyntheticSourceConfig:
    _target_: str = "fxml.data.sources.SyntheticSource"
    train_eras: int = 120
    validation_eras: int = 40
    unresolved_eras: int = 4
    rows_per_era: int = 400
    live_rows: int = 500
    n_features: int = 120
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("train_eras", "validation_eras", "rows_per_era", "live_rows", "n_features"):
            require(getattr(self, key) > 0, f"data.source.{key}", "must be > 0", getattr(self, key))
        require(
            0 <= self.unresolved_eras < self.validation_eras,
            "data.source.unresolved_eras",
            "must be >= 0 and below data.source.validation_eras",
            self.unresolved_eras,
        )


@dataclass
class NumeraiSourceConfig:
    _target_: str = "fxml.data.sources.NumeraiSource"
    # The client is built with hydra.utils.instantiate, so tests (and offline mirrors) can swap it.
    api: dict[str, Any] = field(default_factory=lambda: {"_target_": "numerapi.NumerAPI"})


@dataclass
class DataConfig:
    version: str = "latest"
    directory: str = "data"
    feature_set: str = "small"
    features: list[str] | None = None
    target: str = "target"
    train_eras: list[int] | None = None
    validation_eras: list[int] | None = None
    every_nth_era: int = 1
    source: Any = MISSING

    def __post_init__(self) -> None:
        require(self.every_nth_era >= 1, "data.every_nth_era", "must be >= 1", self.every_nth_era)
        for key in ("train_eras", "validation_eras"):
            span = getattr(self, key)
            if span is not None:
                require(
                    len(span) == 2 and 1 <= span[0] <= span[1],
                    f"data.{key}",
                    "must be [first, last] era numbers with 1 <= first <= last",
                    list(span),
                )
        if self.features is not None:
            require(len(self.features) > 0, "data.features", "must name at least one column", [])


@dataclass
class SyntheticDataConfig(DataConfig):
    version: str = "v5.2"
    source: SyntheticSourceConfig = field(default_factory=SyntheticSourceConfig)


@dataclass
class NumeraiDataConfig(DataConfig):
    source: NumeraiSourceConfig = field(default_factory=NumeraiSourceConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self.version == "latest" or self.version.startswith("v5."),
            "data.version",
            "must be 'latest' or a v5 release such as v5.2",
            self.version,
        )


# --- models -----------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    _target_: str = MISSING
    device: str = "${trainer.accelerator}"
    n_jobs: int = "${trainer.n_jobs}"  # type: ignore[assignment]
    seed: int = "${trainer.seed}"  # type: ignore[assignment]


@dataclass
class GBDTConfig(ModelConfig):
    n_estimators: int = 300
    learning_rate: float = 0.05
    max_depth: int = 5
    num_leaves: int = 31
    colsample_bytree: float = 0.5
    subsample: float = 1.0
    min_child_samples: int = 20
    reg_lambda: float = 0.0
    early_stopping_rounds: int | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require(self.n_estimators >= 1, "model.n_estimators", "must be >= 1", self.n_estimators)
        require(self.learning_rate > 0, "model.learning_rate", "must be > 0", self.learning_rate)
        require(self.max_depth != 0, "model.max_depth", "must be > 0, or -1 for no limit",
                self.max_depth)
        require(self.num_leaves >= 2, "model.num_leaves", "must be >= 2", self.num_leaves)
        for key in ("colsample_bytree", "subsample"):
            value = getattr(self, key)
            require(0 < value <= 1, f"model.{key}", "must be in (0, 1]", value)
        require(self.min_child_samples >= 1, "model.min_child_samples", "must be >= 1",
                self.min_child_samples)
        require(self.reg_lambda >= 0, "model.reg_lambda", "must be >= 0", self.reg_lambda)
        if self.early_stopping_rounds is not None:
            require(self.early_stopping_rounds >= 1, "model.early_stopping_rounds",
                    "must be >= 1 or null", self.early_stopping_rounds)


@dataclass
class LGBMConfig(GBDTConfig):
    _target_: str = "fxml.models.gbdt.LightGBMModel"


@dataclass
class XGBoostConfig(GBDTConfig):
    _target_: str = "fxml.models.gbdt.XGBoostModel"
    max_bin: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.max_bin >= 2, "model.max_bin", "must be >= 2", self.max_bin)


@dataclass
class RidgeConfig(ModelConfig):
    _target_: str = "fxml.models.linear.RidgeModel"
    alpha: float = 1.0
    fit_intercept: bool = True

    def __post_init__(self) -> None:
        require(self.alpha >= 0, "model.alpha", "must be >= 0", self.alpha)


# --- trainer, memory, scorer, tracking --------------------------------------------------------

ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")


@dataclass
class TrainerConfig:
    accelerator: str = "cpu"
    devices: int = 1
    precision: str = "32"
    n_jobs: int = -1
    seed: int = 42

    def __post_init__(self) -> None:
        one_of("trainer.accelerator", self.accelerator, ACCELERATORS)
        one_of("trainer.precision", self.precision, ("32", "16-mixed", "bf16-mixed", "64"))
        require(self.devices >= 1, "trainer.devices", "must be >= 1", self.devices)
        require(self.n_jobs == -1 or self.n_jobs >= 1, "trainer.n_jobs",
                "must be -1 (all cores) or >= 1", self.n_jobs)


@dataclass
class InMemoryConfig:
    _target_: str = "fxml.data.memory.InMemory"


@dataclass
class EraSubsampleConfig:
    _target_: str = "fxml.data.memory.EraSubsample"
    every: int | None = None
    max_gib: float = 4.0

    def __post_init__(self) -> None:
        if self.every is not None:
            require(self.every >= 1, "memory.every", "must be >= 1 or null", self.every)
        require(self.max_gib > 0, "memory.max_gib", "must be > 0", self.max_gib)


@dataclass
class ScorerConfig:
    _target_: str = "fxml.scoring.scorer.NumeraiScorer"
    meta_model: bool = True
    benchmark: bool = True
    benchmark_column: str | None = None
    fnc: bool = True
    feature_exposure: bool = True
    payout_corr_weight: float = 0.5
    payout_mmc_weight: float = 2.0
    payout_clip: float = 0.05

    def __post_init__(self) -> None:
        require(self.payout_clip > 0, "scorer.payout_clip", "must be > 0", self.payout_clip)


@dataclass
class TrackingConfig:
    uri: str | None = None
    experiment: str = "fxml"
    run_name: str | None = None
    log_model: bool = True
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class RootConfig:
    data: Any = MISSING
    model: Any = MISSING
    trainer: Any = MISSING
    memory: Any = MISSING
    scorer: Any = MISSING
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


SCHEMAS: dict[str, dict[str, type]] = {
    "data": {"synthetic": SyntheticDataConfig, "v5": NumeraiDataConfig},
    "model": {"lgbm": LGBMConfig, "xgboost": XGBoostConfig, "ridge": RidgeConfig},
    "trainer": {"trainer": TrainerConfig},
    "memory": {"in_memory": InMemoryConfig, "era_subsample": EraSubsampleConfig},
    "scorer": {"numerai": ScorerConfig},
}


def schema_name(group: str, name: str) -> str:
    """Schemas live outside every config group, so ``--help`` lists only real choices."""
    return f"fxml_schema_{group}_{name}"


def register_schemas() -> None:
    store = ConfigStore.instance()
    store.store(name=schema_name("root", "config"), node=RootConfig)
    for group, schemas in SCHEMAS.items():
        for name, node in schemas.items():
            store.store(name=schema_name(group, name), node=node)
