"""Post-processing as a model wrapper: per-era feature neutralisation, configurable for any model.

``postprocess=neutralize`` wraps the instantiated model in :class:`NeutralizedModel`, whose
``predict`` does, era by era:

1. rank the wrapped model's predictions into (0, 1): ``(rank - 0.5) / n``, ties averaged;
2. subtract ``proportion`` times their least-squares fit on the chosen features plus a constant
   (``numerai_tools.scoring.neutralize`` with the same ``rcond``);
3. standardise to mean 0 and standard deviation 1 (an era left constant becomes all zeros).

The runner scores these values, so logged metrics include the post-processing, and the wrapper is
what gets logged and registered: the MLflow model reproduces them. The neutraliser features may
lie outside the model's own features; the wrapper then reads both (``input_features``: the model's
columns first, then the extra ones), and the pyfunc manifest lists them all.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fxml.data.memory import MemoryProfile
from fxml.data.split import DataSplit
from fxml.errors import FxmlError, describe_config_error
from fxml.models.base import StepCallback, TabularModel, load_model
from fxml.models.params import ModelParams
from fxml.scoring.eras import era_count, era_order, era_starts
from fxml.scoring.ranks import era_codes, rank_by_era

if TYPE_CHECKING:  # annotations only: a logged model loads without the loader (Polars) or OmegaConf
    from omegaconf import DictConfig

    from fxml.data.loader import NumeraiData

log = logging.getLogger(__name__)
# numerai_tools.scoring.neutralize solves with np.linalg.lstsq(..., rcond=1e-6)
LSTSQ_RCOND = 1e-6
INNER = "inner"


def era_slices(eras: np.ndarray | None, n_rows: int) -> list[np.ndarray]:
    """Row indices of each era, eras in ascending order, rows in input order."""
    codes, n_eras = era_codes(eras, n_rows)
    order = era_order(codes, n_eras)
    counts = era_count(codes, n_eras)
    return [order[start : start + count] for start, count in zip(era_starts(counts), counts, strict=True)]


def neutralize(values: np.ndarray, neutralizers: np.ndarray, proportion: float) -> np.ndarray:
    """One era: ``values - proportion * (least-squares fit on [neutralizers, 1])``."""
    exog = np.empty((len(values), neutralizers.shape[1] + 1))
    exog[:, :-1] = neutralizers
    exog[:, -1] = 1.0
    coefficients = np.linalg.lstsq(exog, values, rcond=LSTSQ_RCOND)[0]
    return values - proportion * (exog @ coefficients)


def standardize(values: np.ndarray) -> np.ndarray:
    centred = values - values.mean()
    spread = centred.std()
    return centred / spread if spread > 1e-12 else np.zeros_like(centred)


def neutralize_by_era(predictions: np.ndarray, neutralizers: np.ndarray, eras: np.ndarray | None,
                      proportion: float) -> np.ndarray:
    """Rank, neutralise and standardise each era (the module docstring's three steps)."""
    ranks = rank_by_era(predictions, eras)
    out = np.full(len(ranks), np.nan)
    for rows in era_slices(eras, len(ranks)):
        era_ranks = ranks[rows]
        if np.isnan(era_ranks).any():
            continue  # NaN predictions stay NaN: scoring and submission reject them by name
        residual = neutralize(era_ranks, neutralizers[rows].astype(np.float64), proportion)
        out[rows] = standardize(residual)
    return out


@dataclass
class NeutralizeParams(ModelParams):
    """What a neutralised model saves: built by ``wrap`` from the postprocess group (whose schema
    holds the defaults) or from a saved manifest, so no defaults here."""

    proportion: float = 1.0
    feature_set: str = ""
    neutralizers: list[str] = field(default_factory=list)
    # the columns ``predict`` takes: the wrapped model's ``n_model_features`` first, then the
    # neutralisers it does not read
    input_features: list[str] = field(default_factory=list)
    n_model_features: int = 0


class NeutralizedModel(TabularModel):
    """Any :class:`TabularModel` followed by per-era feature neutralisation.

    ``input_features`` are the columns ``predict`` takes: the wrapped model's ``n_model_features``
    columns first, then neutraliser columns the model does not read.
    """

    per_era = True
    params_class = NeutralizeParams
    params: NeutralizeParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.inner: TabularModel | None = None

    @classmethod
    def wrap(cls, inner: TabularModel, model_features: list[str], neutralizers: list[str],
             proportion: float, feature_set: str) -> NeutralizedModel:
        extra = [name for name in dict.fromkeys(neutralizers) if name not in set(model_features)]
        wrapped = cls(proportion=proportion, feature_set=feature_set, neutralizers=neutralizers,
                      input_features=[*model_features, *extra], n_model_features=len(model_features))
        wrapped.inner = inner
        return wrapped

    @property
    def uses_validation(self) -> bool:
        assert self.inner is not None, "wrap a model first (NeutralizedModel.wrap)"
        return self.inner.uses_validation

    def memory_profile(self) -> MemoryProfile:
        assert self.inner is not None, "wrap a model first (NeutralizedModel.wrap)"
        return self.inner.memory_profile()

    @property
    def input_features(self) -> list[str]:
        return self.params.input_features

    @property
    def neutralizer_columns(self) -> np.ndarray:
        position = {name: i for i, name in enumerate(self.input_features)}
        return np.array([position[name] for name in self.params.neutralizers], dtype=np.intp)

    def describe(self) -> dict[str, Any]:
        """What the pyfunc manifest records about this step."""
        return {**getattr(self.inner, "describe", dict)(), "postprocess": {
            "method": "neutralize", "proportion": self.params.proportion,
            "feature_set": self.params.feature_set,
            "neutralizers": len(self.params.neutralizers),
            "steps": "per era: rank into (0, 1), subtract proportion x least-squares fit on "
                     "[features, 1], standardise to mean 0 / std 1",
        }}

    def fitted_params(self) -> dict[str, float | str]:
        return self.inner.fitted_params() if self.inner is not None else {}

    def targets_read(self) -> dict[str, str]:
        return self.inner.targets_read() if self.inner is not None else {}

    def _model_columns(self, features: np.ndarray) -> np.ndarray:
        n = self.params.n_model_features
        return features if features.shape[1] == n else features[:, :n]

    def _model_split(self, split: DataSplit) -> DataSplit:
        if split.features.shape[1] == self.params.n_model_features:
            return split
        n = self.params.n_model_features
        return replace(split, features=np.ascontiguousarray(split.features[:, :n]),
                       feature_names=split.feature_names[:n], storage="memory", file_rows=None)

    def fit(self, train: DataSplit, validation: DataSplit | None = None,
            on_step: StepCallback | None = None) -> NeutralizedModel:
        assert self.inner is not None, "wrap a model first (NeutralizedModel.wrap)"
        inner_validation = None if validation is None else self._model_split(validation)
        self.inner.fit(self._model_split(train), inner_validation, on_step=on_step)
        return self

    def predict(self, features: np.ndarray, eras: np.ndarray | None = None) -> np.ndarray:
        assert self.inner is not None
        expected = len(self.input_features)
        if features.ndim != 2 or features.shape[1] != expected:
            raise ValueError(f"expected {expected} feature columns ({', '.join(self.input_features[:3])}"
                             f", ...), got shape {features.shape}")
        raw = self.inner.predict(self._model_columns(features), eras)
        return neutralize_by_era(raw, features[:, self.neutralizer_columns], eras,
                                 self.params.proportion)

    def predict_float32(self, features: np.ndarray) -> np.ndarray:
        return self.predict(np.asarray(features, dtype=np.int8))

    def save_state(self, directory: Path) -> None:
        assert self.inner is not None
        self.inner.save(directory / INNER)

    def load_state(self, directory: Path) -> None:
        self.inner = load_model(directory / INNER)


def postprocessed(model: TabularModel, settings: DictConfig | None,
                  data: NumeraiData) -> tuple[TabularModel, list[str]]:
    """Wrap ``model`` as the ``postprocess`` config group says.

    Returns the model to fit, score and log, and the feature columns its ``predict`` needs beyond
    the run's features (neutralisers outside the model's set): the runner loads validation with
    them, and the scorer's FNC and feature exposure then cover them too.
    """
    if settings is None:
        return model, []
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        options = OmegaConf.to_container(settings, resolve=True)
        OmegaConf.to_object(settings)  # the schema's range checks
    except OmegaConfBaseException as error:
        raise FxmlError(describe_config_error(error)) from None
    assert isinstance(options, dict)
    if options.get("method", "none") == "none":
        return model, []
    names = neutralizer_features(data, options.get("feature_set"), options.get("features"))
    feature_set = "custom" if options.get("features") else str(options.get("feature_set"))
    wrapped = NeutralizedModel.wrap(model, list(data.feature_names), names,
                                    float(options["proportion"]), feature_set)
    extra = wrapped.input_features[len(data.feature_names):]
    log.info("post-processing: neutralise %s%% against %d feature(s) (%s), %d outside the model's",
             format(100 * float(options["proportion"]), "g"), len(names), feature_set, len(extra))
    return wrapped, extra


def neutralizer_features(data: NumeraiData, feature_set: str | None,
                         features: list[str] | None) -> list[str]:
    sets = data.metadata["feature_sets"]
    if features:
        names = list(dict.fromkeys(features))
    elif feature_set in sets:
        names = list(sets[feature_set])
    else:
        raise FxmlError(f"postprocess.feature_set={feature_set} is not in features.json "
                        f"(available: {', '.join(sorted(sets))})")
    if not names:
        raise FxmlError(f"postprocess.feature_set={feature_set} is empty")
    return names
