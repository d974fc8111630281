"""Ensembles: several models as one :class:`TabularModel`, so the runner treats them like any model.

Members are model configs, built and trained in ``fit`` on the run's data, or URIs of fxml models
already in MLflow (``runs:/<id>/model``, ``models:/<name>@<alias>``), used as they are. The model
layer neither reads MLflow nor logs to it: the runner loads URI members
(``fxml.submission.registry.load_ensemble_members``) and hands them over with :meth:`attach`, and
logs the fitted weights (:meth:`fitted_params`).
``predict`` ranks each member's predictions per era into (0, 1) (``(rank - 0.5) / n``, ties
averaged) and returns their weighted mean. Weights are ``equal``, fixed per member, or ``fit``:
non-negative, summing to 1, chosen on the validation set ``fit`` is given (the runner's inner
holdout, never the eras it scores) to maximise the mean
per-era Pearson correlation between the blend of ranks and Numerai's transformed target
(``(t - mean) ** 1.5`` signed, as in CORR); a smooth stand-in for CORR itself, solved with SLSQP.

Saved state holds every member (URI members too) in its own folder, so the logged ensemble loads
and predicts without the runs it was built from. Hydra and SciPy are imported where they are used
(fitting only), so a pickled fitted ensemble (``fxml.export_model``) predicts without them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fxml.data.memory import MemoryProfile
from fxml.data.split import MAIN_TARGET, DataSplit, rows_without_target
from fxml.errors import FxmlError
from fxml.models.base import StepCallback, TabularModel, labelled_rows, load_model
from fxml.models.params import MEMBER_TARGET, EnsembleParams
from fxml.scoring.eras import era_sum
from fxml.scoring.ranks import era_codes, rank_by_era
from fxml.scoring.transforms import center_by_era, signed_power

log = logging.getLogger(__name__)
STATE = "ensemble.json"
# the fitted param that records a member's training target: ensemble.target.<member>
TARGET_PARAM = "ensemble.target."
MEMBERS = "members"


@dataclass
class LoadedMember:
    """A member logged earlier, loaded by the layer above: the model and the columns it reads."""

    model: TabularModel
    features: list[str]
    source: str
    feature_set: str = "?"
    target: str = "?"


class EnsembleModel(TabularModel):
    per_era = True
    params_class = EnsembleParams
    params: EnsembleParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**{key: _plain(value) for key, value in params.items()})
        self.names: list[str] = list(self.params.members)
        self.models: list[TabularModel] = []
        self.columns: list[list[int] | None] = []
        self.sources: list[str] = []
        self.weights = np.full(len(self.names), 1.0 / max(len(self.names), 1))
        self.input_features: list[str] | None = None
        self.loaded: dict[str, LoadedMember] = {}
        # each member's training target (a logged member's as its run recorded it)
        self.targets: list[str] = []
        self.rows_left_out: dict[str, int] = {}

    def logged_member_uris(self) -> dict[str, str]:
        """The members named by an MLflow URI, which the runner loads and :meth:`attach` es."""
        return {name: spec for name, spec in self.params.members.items() if isinstance(spec, str)}

    def attach(self, name: str, member: LoadedMember) -> None:
        self.loaded[name] = member

    def memory_profile(self) -> MemoryProfile:
        """Members train one after another on the shared train matrix, each freeing its own
        dataset before the next: a memory plan counts the largest."""
        return MemoryProfile.one_after_another([family.memory for family in self._member_families()])

    def _member_families(self) -> list[type[TabularModel]]:
        """The classes of the members trained in the run (read from their configs' targets)."""
        from hydra.utils import get_class

        families = []
        for spec in self.params.members.values():
            try:
                family = get_class(spec["_target_"]) if isinstance(spec, dict) else None
            except Exception:  # a wrong target is reported by fit, with the member's name
                family = None
            if isinstance(family, type) and issubclass(family, TabularModel):
                families.append(family)
        return families

    # -- fitting -----------------------------------------------------------------------------------

    @property
    def uses_validation(self) -> bool:
        """Fitted weights read the inner holdout, and so does any member that early-stops on it."""
        return self.params.weights == "fit" or any(
            self._build_member(name, spec).uses_validation
            for name, spec in self.params.members.items() if not isinstance(spec, str))

    def targets_read(self) -> dict[str, str]:
        """Members' own targets and the auxiliary targets they read."""
        names: dict[str, str] = {}
        for member, spec in self.params.members.items():
            if isinstance(spec, dict):
                key = f"model.members.{member}"
                names.update({name: f"{key}.aux_targets" for name in spec.get("aux_targets") or []})
                if spec.get(MEMBER_TARGET):
                    names[spec[MEMBER_TARGET]] = f"{key}.{MEMBER_TARGET}"
        return names

    def fit(self, train: DataSplit, validation: DataSplit | None = None,
            on_step: StepCallback | None = None) -> EnsembleModel:
        """Train each configured member on its own target (``target`` in its config, else the
        target ``train`` carries), on that target's labelled rows of the one ``train`` matrix;
        attach the logged ones. Fitted weights are chosen on ``validation`` against the main target."""
        self.input_features = list(train.feature_names)
        self.models, self.columns, self.sources, self.targets = [], [], [], []
        self.rows_left_out = {}
        for name, spec in self.params.members.items():
            if isinstance(spec, str):
                model, columns = self._logged_member(name, spec, train.feature_names)
                source, target = spec, self.loaded[name].target
            else:
                model, columns = self._build_member(name, spec), None
                target = spec.get(MEMBER_TARGET) or train.target_name
                member_train = train.with_target(target)
                self.rows_left_out[name] = rows_without_target(member_train)
                log.info("ensemble: training member %s (%s) on %s%s", name, type(model).__name__, target,
                         f", {self.rows_left_out[name]:,} rows without it left out"
                         if self.rows_left_out[name] else "")
                model.fit(member_train, None if validation is None else validation.with_target(target),
                          on_step=_prefixed(on_step, name))
                source = "trained in this run"
            self.models.append(model)
            self.columns.append(columns)
            self.sources.append(source)
            self.targets.append(target)
        self.weights = self._weights(validation)
        shown = ", ".join(f"{n}={w:.3f}" for n, w in zip(self.names, self.weights, strict=True))
        log.info("ensemble weights (%s): %s", self._weight_kind, shown)
        return self

    def fitted_params(self) -> dict[str, float | str]:
        params: dict[str, float | str] = {f"ensemble.weight.{n}": round(float(w), 6)
                                          for n, w in zip(self.names, self.weights, strict=True)}
        params.update({f"{TARGET_PARAM}{n}": t for n, t in zip(self.names, self.targets, strict=True)})
        params.update({f"ensemble.rows_without_target.{n}": rows for n, rows in self.rows_left_out.items()})
        return params

    @property
    def _weight_kind(self) -> str:
        weights = self.params.weights
        return weights if isinstance(weights, str) else "fixed"

    @staticmethod
    def _build_member(name: str, spec: dict[str, Any]) -> TabularModel:
        from hydra.errors import InstantiationException
        from hydra.utils import instantiate

        try:
            model = instantiate({k: v for k, v in spec.items() if k != MEMBER_TARGET}, _convert_="all")
        except InstantiationException as error:
            cause = error.__cause__ or error
            if isinstance(cause, FxmlError):
                raise cause from None
            raise FxmlError(f"model.members.{name}: {str(cause).splitlines()[0]}") from None
        if not isinstance(model, TabularModel):
            raise FxmlError(f"model.members.{name}: {spec.get('_target_')} is not an fxml model")
        return model

    def _logged_member(self, name: str, uri: str,
                       run_features: list[str]) -> tuple[TabularModel, list[int]]:
        loaded = self.loaded.get(name)
        if loaded is None:
            raise FxmlError(f"model.members.{name}: {uri} was not loaded; the runner loads URI "
                            "members (fxml.submission.registry.load_ensemble_members) before fit")
        return loaded.model, member_columns(name, loaded, run_features)

    def _weights(self, validation: DataSplit | None) -> np.ndarray:
        weights = self.params.weights
        if weights == "fit":
            if validation is None or validation.target is None:
                raise FxmlError("model.weights=fit needs an inner holdout: "
                                "set trainer.inner_holdout_eras >= 1")
            # chosen for what Numerai pays, whatever targets the members learnt
            labelled = labelled_rows(validation.with_target(MAIN_TARGET))
            assert labelled.target is not None
            return fit_weights(self._member_ranks(labelled), labelled.target, labelled.eras)
        if weights in (None, "equal"):
            return np.full(len(self.names), 1.0 / len(self.names))
        raw = np.array([float(weights[name]) for name in self.names])
        return raw / raw.sum()

    # -- prediction --------------------------------------------------------------------------------

    def _member_ranks(self, split: DataSplit) -> np.ndarray:
        return np.column_stack([
            rank_by_era(model.predict(self._columns(split.features, i), split.eras), split.eras)
            for i, model in enumerate(self.models)])

    def _columns(self, features: np.ndarray, member: int) -> np.ndarray:
        columns = self.columns[member]
        return features if columns is None else features[:, columns]

    def predict(self, features: np.ndarray, eras: np.ndarray | None = None) -> np.ndarray:
        if not self.models:
            raise RuntimeError("the ensemble has no members: fit or load it first")
        if self.input_features is not None and features.shape[1] != len(self.input_features):
            raise ValueError(f"expected {len(self.input_features)} feature columns, "
                             f"got {features.shape[1]}")
        blend = np.zeros(len(features))
        for i, model in enumerate(self.models):
            blend += self.weights[i] * rank_by_era(model.predict(self._columns(features, i), eras), eras)
        return blend

    def predict_float32(self, features: np.ndarray) -> np.ndarray:
        return self.predict(np.asarray(features, dtype=np.int8))

    def describe(self) -> dict[str, Any]:
        return {"ensemble": {
            name: {"weight": float(w), "source": source, "model": type(model).__name__,
                   "target": target}
            for name, w, source, model, target in zip(self.names, self.weights, self.sources,
                                                      self.models, self.member_targets, strict=True)}}

    @property
    def member_targets(self) -> list[str]:
        """Each member's training target ("?" for a state saved before targets were recorded)."""
        return self.targets or ["?"] * len(self.names)

    # -- state -------------------------------------------------------------------------------------

    def save_state(self, directory: Path) -> None:
        for i, (name, model) in enumerate(zip(self.names, self.models, strict=True)):
            model.save(directory / MEMBERS / f"{i:02d}_{name}")
        state = {"names": self.names, "weights": self.weights.tolist(), "columns": self.columns,
                 "sources": self.sources, "input_features": self.input_features,
                 "targets": self.targets}
        (directory / STATE).write_text(json.dumps(state))

    def load_state(self, directory: Path) -> None:
        state = json.loads((directory / STATE).read_text())
        self.names, self.columns = state["names"], state["columns"]
        self.sources, self.input_features = state["sources"], state["input_features"]
        self.targets = list(state.get("targets", []))
        self.weights = np.asarray(state["weights"], dtype=np.float64)
        self.models = [load_model(directory / MEMBERS / f"{i:02d}_{name}")
                       for i, name in enumerate(self.names)]


def member_columns(name: str, member: LoadedMember, run_features: list[str]) -> list[int]:
    """The run's columns a logged member reads, in its order; an error names a feature it lacks."""
    position = {feature: i for i, feature in enumerate(run_features)}
    missing = [feature for feature in member.features if feature not in position]
    if missing:
        raise FxmlError(
            f"model.members.{name} ({member.source}) reads {len(missing)} feature(s) this run does "
            f"not load, e.g. {missing[0]} (it was trained on feature set {member.feature_set}); "
            "run the ensemble with a data.feature_set that contains them")
    return [position[feature] for feature in member.features]


def _plain(value: Any) -> Any:
    """A DictConfig (instantiated without ``_convert_``) as plain containers."""
    if isinstance(value, str | dict | list | int | float) or value is None:
        return value
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _prefixed(on_step: StepCallback | None, name: str) -> StepCallback | None:
    if on_step is None:
        return None
    report: Callable[[int, int, dict[str, float]], None] = on_step

    def member_step(step: int, total: int, metrics: dict[str, float]) -> None:
        report(step, total, {f"{name}.{key}": value for key, value in metrics.items()})

    return member_step


def fit_weights(ranks: np.ndarray, target: np.ndarray, eras: np.ndarray) -> np.ndarray:
    """Non-negative weights summing to 1 that maximise the mean per-era Pearson correlation of
    ``ranks @ w`` with the signed-1.5-power centred target (see the module docstring)."""
    from scipy.optimize import minimize

    n_members = ranks.shape[1]
    if n_members == 1:
        return np.ones(1)
    codes, n_eras = era_codes(eras, len(target))
    centred_ranks = np.column_stack([center_by_era(ranks[:, i], codes, n_eras)
                                     for i in range(n_members)])
    transformed = signed_power(center_by_era(target.astype(np.float64), codes, n_eras), 1.5)
    transformed = center_by_era(transformed, codes, n_eras)
    cross = np.column_stack([era_sum(centred_ranks[:, i] * transformed, codes, n_eras)
                             for i in range(n_members)])
    gram = np.empty((n_eras, n_members, n_members))
    for i in range(n_members):
        for j in range(i, n_members):
            gram[:, i, j] = gram[:, j, i] = era_sum(centred_ranks[:, i] * centred_ranks[:, j],
                                                    codes, n_eras)
    target_norm = np.sqrt(era_sum(transformed * transformed, codes, n_eras))
    keep = target_norm > 0
    cross, gram, target_norm = cross[keep], gram[keep], target_norm[keep]

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        covariance = cross @ w
        variance = np.maximum(np.einsum("eij,i,j->e", gram, w, w), 1e-18)
        scale = target_norm * np.sqrt(variance)
        corr = covariance / scale
        gradient = cross / scale[:, None] - (corr / variance)[:, None] * np.einsum("eij,j->ei", gram, w)
        return -float(corr.mean()), -gradient.mean(axis=0)

    start = np.full(n_members, 1.0 / n_members)
    result = minimize(loss, start, jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * n_members,
                      constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0,
                                    "jac": lambda w: np.ones_like(w)}])
    weights = np.clip(result.x if np.all(np.isfinite(result.x)) else start, 0.0, None)
    if loss(weights)[0] > loss(start)[0]:
        weights = start  # never worse than equal weights on the data it was fitted on
    return weights / weights.sum()
