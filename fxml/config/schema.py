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
        # the generator's own rules, checked now rather than once the run has started
        from fxml.data.synthetic import SyntheticSpec, validate_spec

        spec = {name: value for name, value in vars(self).items() if name != "_target_"}
        validate_spec(SyntheticSpec(**spec), key_prefix="data.source.")


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
    extra_targets: list[str] = field(default_factory=list)
    train_eras: list[int] | None = None
    validation_eras: list[int] | None = None
    every_nth_era: int = 1
    missing_features: str = "error"  # a missing feature value: error | fill
    missing_fill: int = 2  # the value filled in (the middle of Numerai's five bins)
    source: Any = MISSING

    def __post_init__(self) -> None:
        require(self.every_nth_era >= 1, "data.every_nth_era", "must be >= 1", self.every_nth_era)
        one_of("data.missing_features", self.missing_features, ("error", "fill"))
        require(0 <= self.missing_fill <= 127, "data.missing_fill", "must be an int8 value 0..127",
                self.missing_fill)
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
    valid_corr_every: int = 0  # >0: validation CORR every n rounds (progress, pruning)
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
        require(self.valid_corr_every >= 0, "model.valid_corr_every", "must be >= 0",
                self.valid_corr_every)
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
    max_epochs: int = 20  # deep models: epochs at most
    patience: int | None = 5  # deep models: epochs without a better valid CORR; null: no early stop
    # last training eras kept apart (with the cv embargo) for early stopping, pruning signals and
    # fitted ensemble weights; used only by models that read a validation set
    inner_holdout_eras: int = 20

    def __post_init__(self) -> None:
        one_of("trainer.accelerator", self.accelerator, ACCELERATORS)
        require(self.inner_holdout_eras >= 0, "trainer.inner_holdout_eras", "must be >= 0",
                self.inner_holdout_eras)
        require(self.max_epochs >= 1, "trainer.max_epochs", "must be >= 1", self.max_epochs)
        if self.patience is not None:
            require(self.patience >= 1, "trainer.patience", "must be >= 1 or null", self.patience)
        one_of("trainer.precision", self.precision, ("32", "16-mixed", "bf16-mixed", "64"))
        require(self.devices >= 1, "trainer.devices", "must be >= 1", self.devices)
        require(self.n_jobs == -1 or self.n_jobs >= 1, "trainer.n_jobs",
                "must be -1 (all cores) or >= 1", self.n_jobs)


@dataclass
class CVConfig:
    """``cv=none``: one fit on the training eras; the embargo still separates the inner holdout."""

    _target_: str = "fxml.data.folds.EraSplitter"
    embargo: Any = "auto"  # eras purged on both sides of a held-out block; auto: 4 (*_20), 16 (*_60)
    refit: bool = True  # after the folds, fit on all training eras and score validation

    def __post_init__(self) -> None:
        require(self.embargo == "auto" or (isinstance(self.embargo, int) and not isinstance(
            self.embargo, bool) and self.embargo >= 0), "cv.embargo", "must be auto or an int >= 0",
            self.embargo)


@dataclass
class WalkForwardConfig(CVConfig):
    _target_: str = "fxml.data.folds.WalkForward"
    folds: int = 4
    min_train_eras: int = 20

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.folds >= 1, "cv.folds", "must be >= 1", self.folds)
        require(self.min_train_eras >= 1, "cv.min_train_eras", "must be >= 1", self.min_train_eras)


@dataclass
class EraKFoldConfig(CVConfig):
    _target_: str = "fxml.data.folds.EraKFold"
    folds: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.folds >= 2, "cv.folds", "must be >= 2", self.folds)


@dataclass
class InMemoryConfig:
    _target_: str = "fxml.data.memory.InMemory"


@dataclass
class OnDiskConfig:
    _target_: str = "fxml.data.memory.OnDisk"


@dataclass
class AutoMemoryConfig:
    _target_: str = "fxml.data.memory.Auto"
    max_gib: float | None = None  # plan for at most this much even if more is available
    headroom: float = 0.85  # share of the available memory a plan may use

    def __post_init__(self) -> None:
        if self.max_gib is not None:
            require(self.max_gib > 0, "memory.max_gib", "must be > 0 or null", self.max_gib)
        require(0 < self.headroom <= 1, "memory.headroom", "must be in (0, 1]", self.headroom)


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
    importance: str = "none"  # permutation importance: none | features | groups
    importance_repeats: int = 1
    importance_seed: int = 0
    mpc: bool = True
    mpc_own_stake: float = 1.0
    mpc_benchmark_stake: float = 1.0
    mpc_stakes: dict[str, float] = field(default_factory=dict)
    mpc_benchmark_columns: list[str] | None = None
    mpc_neutralizers: str | None = None
    mpc_sample_weights: str | None = None
    diagnostics: bool = True
    top_bottom: int = 200

    def __post_init__(self) -> None:
        require(self.payout_clip > 0, "scorer.payout_clip", "must be > 0", self.payout_clip)
        for key, stake in [("scorer.mpc_own_stake", self.mpc_own_stake),
                           ("scorer.mpc_benchmark_stake", self.mpc_benchmark_stake),
                           *((f"scorer.mpc_stakes.{k}", v) for k, v in self.mpc_stakes.items())]:
            require(stake >= 0, key, "must be >= 0", stake)
        require(self.top_bottom >= 1, "scorer.top_bottom", "must be >= 1", self.top_bottom)
        one_of("scorer.importance", self.importance, ("none", "features", "groups"))
        require(self.importance_repeats >= 1, "scorer.importance_repeats", "must be >= 1",
                self.importance_repeats)


@dataclass
class TrackingConfig:
    uri: str | None = None
    experiment: str = "fxml"
    run_name: str | None = None
    log_model: bool = True
    tags: dict[str, str] = field(default_factory=dict)
    retry_seconds: float = 30.0


@dataclass
class SweepJobConfig:
    """Set by the Optuna sweeper on each trial's job, so the job can reach its trial."""

    study_name: str | None = None
    storage: str | None = None  # null: $FXML_OPTUNA_STORAGE, set by the sweeper
    trial_number: int | None = None
    prune_on: str = "valid_corr"


@dataclass
class RootConfig:
    data: Any = MISSING
    model: Any = MISSING
    trainer: Any = MISSING
    memory: Any = MISSING
    scorer: Any = MISSING
    cv: Any = MISSING
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    sweep: SweepJobConfig = field(default_factory=SweepJobConfig)
    postprocess: Any = None


# --- deep tabular models ---


@dataclass
class DeepConfig(ModelConfig):
    devices: int = "${trainer.devices}"  # type: ignore[assignment]
    precision: str = "${trainer.precision}"
    max_epochs: int = "${trainer.max_epochs}"  # type: ignore[assignment]
    patience: int | None = "${trainer.patience}"  # type: ignore[assignment]
    loss: str = "mse"
    aux_targets: list[str] = field(default_factory=list)
    aux_weight: float = 0.5
    batch_size: int = 1024
    era_batching: bool = False
    eras_per_batch: int = 1
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    gradient_clip: float = 0.0

    def __post_init__(self) -> None:
        one_of("model.loss", self.loss, ("mse", "corr"))
        require(self.aux_weight >= 0, "model.aux_weight", "must be >= 0", self.aux_weight)
        for key in ("batch_size", "eras_per_batch"):
            require(getattr(self, key) >= 1, f"model.{key}", "must be >= 1", getattr(self, key))
        require(self.learning_rate > 0, "model.learning_rate", "must be > 0", self.learning_rate)
        for key in ("weight_decay", "gradient_clip"):
            require(getattr(self, key) >= 0, f"model.{key}", "must be >= 0", getattr(self, key))

    def check_dropout(self, *keys: str) -> None:
        for key in keys:
            value = getattr(self, key)
            require(0 <= value < 1, f"model.{key}", "must be in [0, 1)", value)

    def check_width(self, *keys: str) -> None:
        for key in keys:
            require(getattr(self, key) >= 1, f"model.{key}", "must be >= 1", getattr(self, key))


NORMS, ACTIVATIONS = ("batch", "layer", "none"), ("relu", "silu", "gelu")


@dataclass
class MLPConfig(DeepConfig):
    _target_: str = "fxml.models.deep.MLPModel"
    widths: list[int] = field(default_factory=lambda: [256, 128])
    dropout: float = 0.1
    norm: str = "batch"
    activation: str = "silu"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(len(self.widths) >= 1 and min(self.widths) >= 1, "model.widths",
                "must list at least one layer width, each >= 1", list(self.widths))
        self.check_dropout("dropout")
        one_of("model.norm", self.norm, NORMS)
        one_of("model.activation", self.activation, ACTIVATIONS)


@dataclass
class ResNetConfig(DeepConfig):
    _target_: str = "fxml.models.deep.ResNetModel"
    d_main: int = 128
    d_hidden: int = 256
    n_blocks: int = 2
    dropout: float = 0.1
    residual_dropout: float = 0.0
    norm: str = "batch"
    activation: str = "relu"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_width("d_main", "d_hidden", "n_blocks")
        self.check_dropout("dropout", "residual_dropout")
        one_of("model.norm", self.norm, NORMS)
        one_of("model.activation", self.activation, ACTIVATIONS)


@dataclass
class TabNetConfig(DeepConfig):
    _target_: str = "fxml.models.deep.TabNetModel"
    n_d: int = 8
    n_a: int = 8
    n_steps: int = 3
    gamma: float = 1.3
    n_shared: int = 2
    n_independent: int = 2
    mask_type: str = "sparsemax"
    ghost_batch_norm: bool = True
    virtual_batch_size: int = 128
    momentum: float = 0.02
    lambda_sparse: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_width("n_d", "n_a", "n_steps", "virtual_batch_size")
        require(self.gamma >= 1, "model.gamma", "must be >= 1", self.gamma)
        require(self.n_shared >= 0 and self.n_independent >= 0 and self.n_shared + self.n_independent >= 1,
                "model.n_shared/n_independent", "must be >= 0 with at least one GLU block",
                (self.n_shared, self.n_independent))
        one_of("model.mask_type", self.mask_type, ("sparsemax", "entmax"))
        require(0 < self.momentum < 1, "model.momentum", "must be in (0, 1)", self.momentum)
        require(self.lambda_sparse >= 0, "model.lambda_sparse", "must be >= 0", self.lambda_sparse)


# --- ensembles, post-processing, promotion, submission ---

ENSEMBLE_WEIGHTS = ("equal", "fit")
MODEL_URI_PREFIXES = ("runs:/", "models:/")


def check_model_uri(uri: str, key: str = "model_uri") -> None:
    if uri != MISSING:
        require(uri.startswith(MODEL_URI_PREFIXES), key,
                "must be a models:/<name>@<alias> or runs:/<run id>/model URI", uri)


@dataclass
class EnsembleConfig(ModelConfig):
    _target_: str = "fxml.models.ensemble.EnsembleModel"
    # members stay plain configs: the ensemble builds (or loads) each one itself in fit()
    _recursive_: bool = False
    # name -> a model config (with _target_), or the URI of a logged or registered fxml model
    members: dict[str, Any] = field(default_factory=dict)
    # equal | fit (non-negative, summing to 1, fitted on validation) | {member: weight}
    weights: Any = "equal"

    def __post_init__(self) -> None:
        require(len(self.members) >= 1, "model.members", "must name at least one member", {})
        for name, member in self.members.items():
            if isinstance(member, str):
                check_model_uri(member, f"model.members.{name}")
            else:
                target = getattr(member, "_target_", None) or (
                    member.get("_target_") if isinstance(member, dict) else None)
                require(bool(target), f"model.members.{name}", "needs a _target_ (a model config)",
                        member)
        if isinstance(self.weights, str):
            one_of("model.weights", self.weights, ENSEMBLE_WEIGHTS)
            return
        weights = dict(self.weights or {})
        require(set(weights) == set(self.members), "model.weights",
                f"must give one weight per member ({', '.join(self.members)})", sorted(weights))
        require(all(isinstance(w, int | float) and w >= 0 for w in weights.values()) and
                sum(weights.values()) > 0, "model.weights",
                "must be numbers >= 0 with a positive sum", weights)


@dataclass
class NoPostprocessConfig:
    method: str = "none"

    def __post_init__(self) -> None:
        one_of("postprocess.method", self.method, ("none",))


@dataclass
class NeutralizeConfig:
    method: str = "neutralize"
    proportion: float = 0.5
    feature_set: str = "small"
    features: list[str] | None = None

    def __post_init__(self) -> None:
        one_of("postprocess.method", self.method, ("neutralize",))
        require(0 <= self.proportion <= 1, "postprocess.proportion", "must be in [0, 1]",
                self.proportion)
        if self.features is not None:
            require(len(self.features) > 0, "postprocess.features", "must name at least one column",
                    [])


@dataclass
class PromoteConfig:
    run_id: str | None = None
    sweep: str | None = None
    experiment: str = "fxml"
    metric: str | None = None
    mode: str = "max"
    since: str | None = None
    until: str | None = None
    filter: str | None = None
    name: str | None = None
    alias: str = "champion"
    tracking_uri: str | None = None

    def __post_init__(self) -> None:
        one_of("mode", self.mode, ("max", "min"))
        version_like = self.alias[:1] in ("v", "V") and self.alias[1:].isdigit()
        require(bool(self.alias) and self.alias != "latest" and not version_like, "alias",
                "must be a name other than latest or v<number>", self.alias)


@dataclass
class SubmitConfig:
    model_uri: str = MISSING
    numerai_model: str = MISSING
    dry_run: bool = False
    force: bool = False
    round: int | None = None
    live: str | None = None
    data_version: str | None = None
    data_directory: str = "data/numerai"
    output_dir: str = "submissions"
    api: dict[str, Any] = field(default_factory=lambda: {"_target_": "numerapi.NumerAPI"})
    tracking_uri: str | None = None
    tracking_retry_seconds: float = 30.0
    experiment: str = "fxml-submissions"

    def __post_init__(self) -> None:
        check_model_uri(self.model_uri)
        if self.round is not None:
            require(self.round >= 1, "round", "must be a round number >= 1 or null", self.round)
        if self.numerai_model != MISSING:
            require(self.numerai_model.replace("_", "").replace("-", "").isalnum(), "numerai_model",
                    "must be a Numerai model name (letters, digits, _ or -)", self.numerai_model)


@dataclass
class LiveScoresConfig:
    numerai_model: str = MISSING
    experiment: str = "fxml-submissions"
    source_runs: bool = True
    api: dict[str, Any] = field(default_factory=lambda: {"_target_": "numerapi.NumerAPI"})
    tracking_uri: str | None = None

    def __post_init__(self) -> None:
        if self.numerai_model != MISSING:
            require(self.numerai_model.replace("_", "").replace("-", "").isalnum(), "numerai_model",
                    "must be a Numerai model name (letters, digits, _ or -)", self.numerai_model)


@dataclass
class ReportConfig:
    experiment: str | None = None
    sweep: str | None = None
    runs: list[str] | None = None
    max_runs: int = 20
    output: str = "report.html"
    title: str | None = None
    tracking_uri: str | None = None

    def __post_init__(self) -> None:
        require(self.max_runs >= 1, "max_runs", "must be >= 1", self.max_runs)
        require(self.output.endswith(".html"), "output", "must end with .html", self.output)


@dataclass
class ExportModelConfig:
    model_uri: str = MISSING
    output: str = "model.pkl"
    check: bool = True
    check_rows: int = 500
    live: str | None = None
    upload: bool = False
    numerai_model: str | None = None
    upload_data_version: str | None = None
    api: dict[str, Any] = field(default_factory=lambda: {"_target_": "numerapi.NumerAPI"})
    tracking_uri: str | None = None

    def __post_init__(self) -> None:
        check_model_uri(self.model_uri)
        require(self.output.endswith(".pkl"), "output", "must end with .pkl (Numerai's rule)",
                self.output)
        require(self.check_rows >= 2, "check_rows", "must be >= 2", self.check_rows)
        require(not self.upload or bool(self.numerai_model), "numerai_model",
                "is needed with upload=true", self.numerai_model)


SCHEMAS: dict[str, dict[str, type]] = {
    "data": {"synthetic": SyntheticDataConfig, "v5": NumeraiDataConfig},
    "model": {"lgbm": LGBMConfig, "xgboost": XGBoostConfig, "ridge": RidgeConfig},
    "trainer": {"trainer": TrainerConfig},
    "memory": {"in_memory": InMemoryConfig, "era_subsample": EraSubsampleConfig, "disk": OnDiskConfig,
               "auto": AutoMemoryConfig},
    "scorer": {"numerai": ScorerConfig},
    "cv": {"none": CVConfig, "walk_forward": WalkForwardConfig, "era_kfold": EraKFoldConfig},
}
SCHEMAS["model"]["mlp"] = MLPConfig
SCHEMAS["model"]["resnet"] = ResNetConfig
SCHEMAS["model"]["tabnet"] = TabNetConfig
SCHEMAS["model"]["ensemble"] = EnsembleConfig
SCHEMAS["postprocess"] = {"none": NoPostprocessConfig, "neutralize": NeutralizeConfig}
SCHEMAS["command"] = {"promote": PromoteConfig, "submit": SubmitConfig, "live_scores": LiveScoresConfig,
                      "report": ReportConfig,
                      "export_model": ExportModelConfig}


def schema_name(group: str, name: str) -> str:
    """Schemas live outside every config group, so ``--help`` lists only real choices."""
    return f"fxml_schema_{group}_{name}"


def register_schemas() -> None:
    store = ConfigStore.instance()
    store.store(name=schema_name("root", "config"), node=RootConfig)
    for group, schemas in SCHEMAS.items():
        for name, node in schemas.items():
            store.store(name=schema_name(group, name), node=node)
