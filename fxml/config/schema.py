"""Typed schemas behind every config group.

Each YAML file in ``conf/<group>/`` extends one of these dataclasses (registered as
``fxml_schema_<group>_<name>``), so Hydra rejects a misspelt key or a value of the wrong type while composing.
Range checks live in ``__post_init__``: :func:`fxml.config.validate` builds the objects right after
composition, so a bad value fails before any data is read, with one line naming the key.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from fxml.data import cv_settings, memory
from fxml.errors import FxmlError, one_of, require
from fxml.models.deep.params import DeepParams
from fxml.models.params import MEMBER_TARGET, ModelParams, check_model_uri, model_families
from fxml.scoring.settings import ScorerSettings

__all__ = ["FxmlError", "SCHEMAS", "check_model_uri", "model_schema", "one_of", "register_schemas",
           "require", "schema_name"]


# --- data -------------------------------------------------------------------------------------


@dataclass
class SyntheticSourceConfig:
    """The generator's settings users may change; defaults as SyntheticSpec's (fxml.data.synthetic,
    not imported here: it loads pyarrow), which tests/test_defaults.py checks."""

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


# Numerai's keys come from the environment (or a .env file), never from a config, which Hydra
# writes to disk and fxml logs
NUMERAI_KEY_SETTINGS = ("public_id", "secret_key")
NUMERAI_KEY_VARIABLES = ("NUMERAI_PUBLIC_ID", "NUMERAI_SECRET_KEY")


def check_no_keys(api: Any, key: str = "api") -> None:
    """One line when a Numerai key is written into a client's config (``+api.secret_key=...``)."""
    given = [name for name in NUMERAI_KEY_SETTINGS if name in (api or {})]
    if given:
        raise FxmlError(f"{key}.{given[0]}: do not put Numerai keys in the config (it is written to "
                        f"disk and logged); set {' and '.join(NUMERAI_KEY_VARIABLES)} in the "
                        "environment or a .env file")


@dataclass
class NumeraiSourceConfig:
    _target_: str = "fxml.data.sources.NumeraiSource"
    # The client is built with hydra.utils.instantiate, so tests (and offline mirrors) can swap it.
    api: dict[str, Any] = field(default_factory=lambda: {"_target_": "numerapi.NumerAPI"})

    def __post_init__(self) -> None:
        check_no_keys(self.api, "data.source.api")


@dataclass
class DataConfig:
    # latest = the newest v5.x that numerapi lists (synthetic: the newest layout fxml writes, v5.3);
    # or a release such as v5.2
    version: str = "latest"
    directory: str = "data"
    feature_set: str = "small"  # a set from features.json, or give an explicit list in `features`
    features: list[str] | None = None
    # the target the model trains on: the main one, or an auxiliary one such as target_cyrusd_20
    # (its NaN rows are left out); every score is on the main target, which Numerai pays on
    target: str = "target"
    # more target columns to load (the model's own auxiliary and members' targets are loaded for it)
    extra_targets: list[str] = field(default_factory=list)
    train_eras: list[int] | None = None  # [first, last] era numbers, null for all
    validation_eras: list[int] | None = None
    every_nth_era: int = 1  # keep every nth training era
    missing_features: str = "error"  # a missing feature value: error, or fill with missing_fill
    missing_fill: int = 2  # the value filled in (the middle of Numerai's five bins, as Numerai suggests)
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
# Each family's parameters, defaults and checks are its dataclass in fxml.models.params (or
# fxml.models.deep.params); its schema adds only Hydra's _target_ and the wiring below.

# model parameters that the trainer group sets for every model: wiring, not defaults
TRAINER_WIRING = {
    "device": "${trainer.accelerator}",
    "n_jobs": "${trainer.n_jobs}",
    "seed": "${trainer.seed}",
    "devices": "${trainer.devices}",
    "precision": "${trainer.precision}",
    "max_epochs": "${trainer.max_epochs}",
    "patience": "${trainer.patience}",
}
# Hydra options of a family's schema: an ensemble builds its members itself, in fit()
HYDRA_OPTIONS: dict[str, dict[str, Any]] = {"ensemble": {"_recursive_": False}}


@dataclass
class _Targeted:
    """Puts ``_target_`` first in every model schema (as ``--cfg job`` shows it)."""

    _target_: str = MISSING


def with_target(cls: type, target: str | None = None) -> type:
    """A schema for dataclass ``cls`` (its fields, defaults and ``__post_init__`` checks, by
    inheritance) with Hydra's ``_target_`` first: ``target``, or ``cls`` itself."""
    target = target or f"{cls.__module__}.{cls.__qualname__}"
    return dataclasses.make_dataclass(cls.__name__, [("_target_", str, target)],
                                      bases=(cls, _Targeted))


def model_schema(params: type[ModelParams]) -> type:
    """The Hydra schema of a model family: its parameter dataclass (defaults and range checks
    included, by inheritance) plus ``_target_`` and the trainer wiring."""
    hints = typing.get_type_hints(params)
    runtime = {name: hints[name] for name in params.runtime}
    extra: list[tuple[str, Any, Any]] = [("_target_", str, params.class_path)]
    extra += [(key, Any, value) for key, value in HYDRA_OPTIONS.get(params.family, {}).items()]
    # an ensemble member's own training target (model.members.<name>.target); the ensemble reads
    # it, the family never sees it; null: the run's data.target
    extra += [(MEMBER_TARGET, str | None, None)]
    extra += [(name, annotation, TRAINER_WIRING[name]) for name, annotation in runtime.items()]
    # named as the dataclass users read: "Key 'n_estimator' not in 'LightGBMParams'"
    return dataclasses.make_dataclass(params.__name__, extra, bases=(params, _Targeted))


# --- trainer, memory, scorer, tracking --------------------------------------------------------

ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")


@dataclass
class TrainerConfig:
    """Where and how every model trains; each default is the model parameter it sets
    (TRAINER_WIRING), so a model built in Python with no arguments trains as the command line."""

    accelerator: str = DeepParams.device
    devices: int = DeepParams.devices
    precision: str = DeepParams.precision
    n_jobs: int = DeepParams.n_jobs
    seed: int = DeepParams.seed
    max_epochs: int = DeepParams.max_epochs  # deep models: epochs at most
    # deep models: epochs without a better valid CORR; null: no early stop
    patience: int | None = DeepParams.patience
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
class TrackingConfig:
    # null: $MLFLOW_TRACKING_URI if set, else sqlite:///mlruns/mlflow.db (artifacts under mlruns/)
    # Passwords: MLFLOW_TRACKING_USERNAME/PASSWORD (a server), PGPASSWORD or ~/.pgpass (PostgreSQL),
    # or ${oc.env:NAME} inside the URL; one written into the URL is masked wherever fxml writes it.
    uri: str | None = None
    experiment: str = "fxml"
    run_name: str | None = None
    log_model: bool = True
    tags: dict[str, str] = field(default_factory=dict)
    retry_seconds: float = 30.0  # a tracking server or database that stops answering: give up after ~this

    def __post_init__(self) -> None:
        require(self.retry_seconds >= 0, "tracking.retry_seconds", "must be >= 0", self.retry_seconds)


@dataclass
class SweepJobConfig:
    """Where a multirun's job belongs, set by the sweep on each job's command line, so that a job
    handed only its config (another process, machine or Ray worker) finds its sweep. Null in a
    plain run; a grid sets only ``parent_run_id``."""

    parent_run_id: str | None = None  # the sweep's parent MLflow run: the job's run is its child
    study_name: str | None = None  # an Optuna search: the study and the trial this job runs
    storage: str | None = None  # the study's storage URL (a password in it is masked where written)
    trial_number: int | None = None
    objective: str | None = None  # the search's objective (hydra.sweeper.objective)
    storage_retry_seconds: float = 120.0  # the storage not answering: give up after this long
    prune_on: str = "valid_corr"

    def __post_init__(self) -> None:
        require(self.storage_retry_seconds >= 0, "sweep.storage_retry_seconds", "must be >= 0",
                self.storage_retry_seconds)


@dataclass
class CommandOutput:
    """What every command prints on stdout."""

    # text: tables and lines for people; json: one JSON object (run ids, metrics, paths) as the
    # last line of stdout, everything else on stderr
    output: str = "text"


@dataclass
class RootConfig(CommandOutput):
    data: Any = MISSING
    model: Any = MISSING
    trainer: Any = MISSING
    memory: Any = MISSING
    scorer: Any = MISSING
    cv: Any = MISSING
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    sweep: SweepJobConfig = field(default_factory=SweepJobConfig)
    postprocess: Any = None


# --- ensembles, post-processing, promotion, submission ---

def check_given_model_uri(uri: str) -> None:
    """``model_uri`` of a command, once given (it has no default)."""
    if uri != MISSING:
        check_model_uri(uri, "model_uri")


def check_numerai_model(name: str) -> None:
    """``numerai_model``, once given: a model name as numer.ai accepts it."""
    if name != MISSING:
        require(name.replace("_", "").replace("-", "").isalnum(), "numerai_model",
                "must be a Numerai model name (letters, digits, _ or -)", name)


@dataclass
class NoPostprocessConfig:
    method: str = "none"

    def __post_init__(self) -> None:
        one_of("postprocess.method", self.method, ("none",))


@dataclass
class NeutralizeConfig:
    method: str = "neutralize"
    proportion: float = 0.5  # 0: ranks only, 1: no linear exposure left to the chosen features
    feature_set: str = "small"  # a set from features.json (small, medium, all, a group such as charisma)
    features: list[str] | None = None  # or an explicit list of feature columns (overrides feature_set)

    def __post_init__(self) -> None:
        one_of("postprocess.method", self.method, ("neutralize",))
        require(0 <= self.proportion <= 1, "postprocess.proportion", "must be in [0, 1]",
                self.proportion)
        if self.features is not None:
            require(len(self.features) > 0, "postprocess.features", "must name at least one column",
                    [])


@dataclass
class RunSelectionConfig(CommandOutput):
    """Which run a command takes (fxml.submission.choice.RunSelection): promote and refit."""

    run_id: str | None = None  # a run id (given but empty is refused); null: choose by the keys below
    sweep: str | None = None  # a sweep's parent run id or Optuna study name: its best trial
    experiment: str = "fxml"  # where to rank runs by `metric` (ignored with run_id or sweep)
    metric: str | None = None  # rank by this metric (null: corr_sharpe; with sweep: the sweep's objective)
    mode: str = "max"  # max | min (e.g. min for feature_exposure_max)
    since: str | None = None  # only runs started since: 2026-11-15, 2026-11-15T08:00, or an age: 12h, 7d, 2w
    until: str | None = None  # only runs started before (same forms)
    # an MLflow filter, e.g. "tags.feature_set = 'medium' and params.model.max_depth = '5'"
    filter: str | None = None
    tracking_uri: str | None = None  # null: $MLFLOW_TRACKING_URI if set, else sqlite:///mlruns/mlflow.db

    def __post_init__(self) -> None:
        one_of("mode", self.mode, ("max", "min"))


@dataclass
class RefitConfig(RunSelectionConfig):
    """A final fit of the chosen run's configuration on every labelled era (python -m fxml.refit)."""


@dataclass
class PromoteConfig(RunSelectionConfig):
    name: str | None = None  # registered model name; null: the run's experiment name
    alias: str = "champion"  # the alias to move to the new version
    # true: first refit the chosen run on every labelled era (fxml.refit), then register the refit
    refit: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        version_like = self.alias[:1] in ("v", "V") and self.alias[1:].isdigit()
        require(bool(self.alias) and self.alias != "latest" and not version_like, "alias",
                "must be a name other than latest or v<number>", self.alias)


@dataclass
class SubmitConfig(CommandOutput):
    model_uri: str = MISSING  # models:/<name>@<alias>, models:/<name>/<version> or runs:/<id>/model
    numerai_model: str = MISSING  # the model's name on numer.ai (your account's models)
    dry_run: bool = False  # true: write and validate the file, never upload
    force: bool = False  # true: upload even if this round was already uploaded for numerai_model
    # null: numerapi's current round (checked open, or nothing is uploaded); with `live` and
    # dry_run=true: an offline rehearsal, no network at all
    round: int | None = None
    # null: <version>/live.parquet for the round, downloaded once per round; or a live parquet file
    live: str | None = None
    data_version: str | None = None  # null: the data version the model was trained on
    data_directory: str = "data/numerai"
    output_dir: str = "submissions"  # files: <output_dir>/<numerai_model>_round<round>.csv
    api: dict[str, Any] = field(default_factory=lambda: {"_target_": "numerapi.NumerAPI"})
    tracking_uri: str | None = None  # null: $MLFLOW_TRACKING_URI if set, else sqlite:///mlruns/mlflow.db
    # a tracking server or database that stops answering: give up after ~this
    tracking_retry_seconds: float = 30.0
    experiment: str = "fxml-submissions"

    def __post_init__(self) -> None:
        check_given_model_uri(self.model_uri)
        check_no_keys(self.api)
        require(self.tracking_retry_seconds >= 0, "tracking_retry_seconds", "must be >= 0",
                self.tracking_retry_seconds)
        if self.round is not None:
            require(self.round >= 1, "round", "must be a round number >= 1 or null", self.round)
        if self.dry_run and (self.round is None) != (not self.live):
            # said here, before any network call: offline, numerapi would first fail at length
            given = f"round={self.round}" if self.round is not None else f"live={self.live}"
            raise FxmlError(f"an offline dry run needs round=<number> and live=<file> (only {given} "
                            "is given)")
        check_numerai_model(self.numerai_model)


@dataclass
class LiveScoresConfig(CommandOutput):
    numerai_model: str = MISSING  # the model's name on numer.ai
    experiment: str = "fxml-submissions"  # where fxml.submit logged its submission runs
    source_runs: bool = True  # also log live_* on the training run of each submitted model version
    api: dict[str, Any] = field(default_factory=lambda: {"_target_": "numerapi.NumerAPI"})
    tracking_uri: str | None = None  # null: $MLFLOW_TRACKING_URI if set, else sqlite:///mlruns/mlflow.db

    def __post_init__(self) -> None:
        check_numerai_model(self.numerai_model)
        check_no_keys(self.api)


@dataclass
class ReportConfig(CommandOutput):
    experiment: str | None = None  # compare the finished scored top-level runs of this experiment
    sweep: str | None = None  # or the trials of this sweep: its Optuna study name or parent run id
    runs: list[str] | None = None  # or these run ids
    max_runs: int = 50  # at most this many runs, the best by corr_sharpe (a sweep's: by its objective)
    nested: bool = False  # experiment: every trial of a sweep as a run (false: its best one); cv folds never
    file: str = "report.html"  # the HTML file written
    title: str | None = None  # null: "fxml experiment <name>: <n> runs", "fxml sweep <study>: ..."
    tracking_uri: str | None = None  # null: $MLFLOW_TRACKING_URI if set, else sqlite:///mlruns/mlflow.db

    def __post_init__(self) -> None:
        require(self.max_runs >= 1, "max_runs", "must be >= 1", self.max_runs)
        require(self.file.endswith(".html"), "file", "must end with .html", self.file)


@dataclass
class ExportModelConfig(CommandOutput):
    model_uri: str = MISSING
    file: str = "model.pkl"  # where the pickle is written
    check: bool = True  # unpickle and call it in a fresh process, validate the output
    check_rows: int = 500  # rows of the synthetic live-shaped frame (when `live` is null)
    live: str | None = None  # or a live parquet file to check with
    # also check it with the pinned packages of Numerai's image: py3.11, py3.12, py3.13 (shipped
    # in fxml/submission/images/) or a requirements file of name==version lines
    target_image: str | None = None
    image_cache: str | None = None  # where image environments are kept (null: <user cache>/fxml/images)
    upload: bool = False  # true: numerapi model_upload to `numerai_model` (needs keys)
    numerai_model: str | None = None
    upload_data_version: str | None = None  # passed to model_upload as data_version (null: Numerai's default)
    api: dict[str, Any] = field(default_factory=lambda: {"_target_": "numerapi.NumerAPI"})
    tracking_uri: str | None = None

    def __post_init__(self) -> None:
        check_given_model_uri(self.model_uri)
        check_no_keys(self.api)
        require(self.file.endswith(".pkl"), "file", "must end with .pkl (Numerai's rule)", self.file)
        require(self.check_rows >= 2, "check_rows", "must be >= 2", self.check_rows)
        require(self.check or self.target_image is None, "target_image", "needs check=true",
                self.target_image)
        require(not self.upload or bool(self.numerai_model), "numerai_model",
                "is needed with upload=true", self.numerai_model)


SCHEMAS: dict[str, dict[str, type]] = {
    "data": {"synthetic": SyntheticDataConfig, "v5": NumeraiDataConfig},
    "model": {family: model_schema(params) for family, params in model_families().items()},
    "trainer": {"trainer": TrainerConfig},
    # the memory policies are their own schemas: fields, defaults and checks in fxml.data.memory
    "memory": {name: with_target(policy) for name, policy in (
        ("in_memory", memory.InMemory), ("era_subsample", memory.EraSubsample),
        ("disk", memory.OnDisk), ("auto", memory.Auto))},
    "scorer": {"numerai": with_target(ScorerSettings, "fxml.scoring.scorer.NumeraiScorer")},
    # cv settings, defaults and checks: fxml.data.cv_settings
    "cv": {name: with_target(settings, f"fxml.data.folds.{splitter}") for name, settings, splitter in (
        ("none", cv_settings.SplitSettings, "EraSplitter"),
        ("walk_forward", cv_settings.WalkForwardSettings, "WalkForward"),
        ("era_kfold", cv_settings.EraKFoldSettings, "EraKFold"))},
}
SCHEMAS["postprocess"] = {"none": NoPostprocessConfig, "neutralize": NeutralizeConfig}
SCHEMAS["command"] = {"promote": PromoteConfig, "refit": RefitConfig, "submit": SubmitConfig,
                      "live_scores": LiveScoresConfig,
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
