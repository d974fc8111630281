"""Every model family's parameters, defaults and range checks, written once.

One dataclass per family. The model class takes exactly these parameters as keyword arguments:
constructing it builds the dataclass (``model.params``), which runs the checks. The ``model``
config group's Hydra schemas are derived from the same dataclasses (:mod:`fxml.config.schema`),
and ``conf/model/<family>.yaml`` only selects one.

This module (like ``fxml.models.deep.params``) imports no training library, so config schemas
register without LightGBM, XGBoost or PyTorch installed.

Adding a family: a :class:`ModelParams` subclass here (or in a module imported below) naming its
``family`` and ``target``, the model class with ``params_class`` set to it, and
``conf/model/<family>.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from fxml.errors import one_of, require

MODEL_URI_PREFIXES = ("runs:/", "models:/")
ENSEMBLE_WEIGHTS = ("equal", "fit")

# an ensemble member's own training target, a key of its config beside the family's parameters
MEMBER_TARGET = "target"


def check_model_uri(uri: str, key: str) -> None:
    """An fxml model named by MLflow URI (an ensemble member, the model to submit or export)."""
    require(uri.startswith(MODEL_URI_PREFIXES), key,
            "must be a models:/<name>@<alias> or runs:/<run id>/model URI", uri)


@dataclass
class ModelParams:
    """What every family takes: where and how it trains. On the command line the trainer group
    sets these for every model (``trainer.accelerator``, ``trainer.n_jobs``, ``trainer.seed``)."""

    # the preset name (conf/model/<family>.yaml) and the model class Hydra builds
    family: ClassVar[str]
    class_path: ClassVar[str]
    # parameters the trainer group sets for every family
    runtime: ClassVar[tuple[str, ...]] = ("device", "n_jobs", "seed")

    device: str = "cpu"  # cpu | gpu | cuda | mps | auto
    n_jobs: int = -1  # threads; -1: all cores
    seed: int = 42


def model_families() -> dict[str, type[ModelParams]]:
    """Every family with its parameters, by preset name: each ModelParams subclass that names a
    ``family`` (defined here or in ``fxml.models.deep.params``)."""
    import fxml.models.deep.params  # noqa: F401  (defines the deep families)

    found: dict[str, type[ModelParams]] = {}
    pending = list(ModelParams.__subclasses__())
    while pending:
        cls = pending.pop(0)
        pending.extend(cls.__subclasses__())
        if "family" in vars(cls):
            found[cls.family] = cls
    return found


# --- gradient-boosted trees -------------------------------------------------------------------


@dataclass
class GBDTParams(ModelParams):
    n_estimators: int = 300  # boosting rounds (at most, with early stopping)
    learning_rate: float = 0.05
    max_depth: int = 5  # -1: no limit
    num_leaves: int = 31  # leaves per tree at most
    colsample_bytree: float = 0.5  # share of the features each tree sees
    subsample: float = 1.0  # share of the rows each tree sees
    min_child_samples: int = 20  # rows per leaf at least
    reg_lambda: float = 0.0  # L2 penalty on leaf values
    early_stopping_rounds: int | None = None  # stop after this many rounds without a better valid loss
    valid_corr_every: int = 0  # >0: validation CORR every n rounds (shown, logged, used for pruning)
    params: dict[str, Any] = field(default_factory=dict)  # any other library parameter, passed through

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
        self.params = dict(self.params or {})


@dataclass
class LightGBMParams(GBDTParams):
    family: ClassVar[str] = "lgbm"
    class_path: ClassVar[str] = "fxml.models.lightgbm_model.LightGBMModel"


@dataclass
class XGBoostParams(GBDTParams):
    family: ClassVar[str] = "xgboost"
    class_path: ClassVar[str] = "fxml.models.xgboost_model.XGBoostModel"

    reg_lambda: float = 1.0  # XGBoost's own default, which every logged xgboost run used
    # histogram bins per feature: Numerai's features have five values, which keep their own bins
    # at 8 as at 256, and building the quantised matrix peaks ~1 byte per value lower than at 64
    max_bin: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.max_bin >= 2, "model.max_bin", "must be >= 2", self.max_bin)


# --- linear -----------------------------------------------------------------------------------


@dataclass
class RidgeParams(ModelParams):
    family: ClassVar[str] = "ridge"
    class_path: ClassVar[str] = "fxml.models.linear.RidgeModel"

    alpha: float = 1.0  # L2 penalty
    fit_intercept: bool = True

    def __post_init__(self) -> None:
        require(self.alpha >= 0, "model.alpha", "must be >= 0", self.alpha)


# --- ensembles --------------------------------------------------------------------------------


@dataclass
class EnsembleParams(ModelParams):
    family: ClassVar[str] = "ensemble"
    class_path: ClassVar[str] = "fxml.models.ensemble.EnsembleModel"

    # name -> a model config (with _target_), or the URI of a logged or registered fxml model
    members: dict[str, Any] = field(default_factory=dict)
    # equal | fit (non-negative, summing to 1, fitted on validation) | {member: weight}
    weights: Any = "equal"

    def __post_init__(self) -> None:
        require(len(self.members) >= 1, "model.members", "must name at least one member", {})
        for name, member in self.members.items():
            key = f"model.members.{name}"
            if isinstance(member, str):
                check_model_uri(member, key)
            else:
                target = getattr(member, "_target_", None) or (
                    member.get("_target_") if isinstance(member, dict) else None)
                require(bool(target), key, "needs a _target_ (a model config)", member)
        if isinstance(self.weights, str):
            one_of("model.weights", self.weights, ENSEMBLE_WEIGHTS)
            return
        weights = dict(self.weights or {})
        require(set(weights) == set(self.members), "model.weights",
                f"must give one weight per member ({', '.join(self.members)})", sorted(weights))
        require(all(isinstance(w, int | float) and w >= 0 for w in weights.values()) and
                sum(weights.values()) > 0, "model.weights",
                "must be numbers >= 0 with a positive sum", weights)
