"""Era-wise cross-validation folds with purge/embargo, and the inner holdout of a training block.

Numerai targets look 20 (or 60) trading days ahead, so adjacent weekly eras share most of their
target window: a training era close to a scored era leaks its answer. Every split here therefore
works on era numbers (time), not on row positions: an era trains only if it lies more than
``embargo`` era numbers away from every era it is kept apart from (the test block, and the inner
holdout that early stopping, pruning signals and fitted ensemble weights read).

One interface: a splitter turns the sorted era numbers of the loaded training split into
``Fold``s (training eras, inner-holdout eras, test eras).
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from fxml.data.cv_settings import EraKFoldSettings, SplitSettings, WalkForwardSettings
from fxml.data.loader import DataSplit
from fxml.errors import FxmlError

# eras of overlap to purge: Numerai's notebooks use 4 for 20-day targets, 16 for 60-day ones
EMBARGO_20_DAY, EMBARGO_60_DAY = 4, 16


@dataclass(frozen=True)
class Fold:
    index: int
    train: np.ndarray  # eras the model fits on
    holdout: np.ndarray  # inner holdout: early stopping, pruning signals, fitted weights
    test: np.ndarray  # eras scored out of fold (empty for a fit on all training eras)


def resolve_embargo(setting: int | str, target: str) -> int:
    """``cv.embargo``: a number of eras, or ``auto`` from the target's horizon."""
    if setting != "auto":
        return int(setting)
    if target == "target" or target.endswith("_20"):
        return EMBARGO_20_DAY
    if target.endswith("_60"):
        return EMBARGO_60_DAY
    raise FxmlError(f"cv.embargo=auto cannot tell the horizon of data.target={target} "
                    "(neither *_20 nor *_60): set cv.embargo to a number of eras")


def purged(eras: np.ndarray, apart_from: np.ndarray, embargo: int) -> np.ndarray:
    """The ``eras`` further than ``embargo`` era numbers from every era of ``apart_from``."""
    if not len(apart_from):
        return eras
    distance = np.abs(eras[:, None] - apart_from[None, :]).min(axis=1)
    return eras[distance > embargo]


def with_inner_holdout(train: np.ndarray, holdout_eras: int, embargo: int,
                       where: str = "the training eras") -> tuple[np.ndarray, np.ndarray]:
    """The last ``holdout_eras`` training eras become the inner holdout; the training eras within
    ``embargo`` of it are dropped. Returns (eras to fit on, holdout eras)."""
    if holdout_eras <= 0:
        return train, train[:0]
    holdout = train[-holdout_eras:]
    fit = purged(train[:-holdout_eras], holdout, embargo)
    if not len(fit):
        raise FxmlError(f"no era left to fit on in {where} ({len(train)} eras) after an inner holdout "
                        f"of {holdout_eras} (trainer.inner_holdout_eras) and an embargo of {embargo}: "
                        "lower them, or use fewer folds")
    return fit, holdout


def distinct_eras(eras: np.ndarray) -> np.ndarray:
    return np.unique(np.asarray(eras, dtype=np.int64))


def settings_signature(settings: type) -> inspect.Signature:
    return inspect.signature(settings).replace(return_annotation=inspect.Signature.empty)


class EraSplitter:
    """``cv=none``: no folds; the one fit uses every training era (less the inner holdout)."""

    method = "none"
    settings_class: ClassVar[type[SplitSettings]] = SplitSettings

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.__signature__ = settings_signature(cls.settings_class)  # type: ignore[attr-defined]

    def __init__(self, *args: Any, **settings: Any) -> None:
        self.settings = self.settings_class(*args, **settings)
        self.embargo, self.refit = self.settings.embargo, self.settings.refit

    @property
    def active(self) -> bool:
        return False

    @property
    def copied_share(self) -> float:
        """The share of the training matrix a fold copies (its training eras, when they are not
        one run), for memory plans."""
        return 0.0

    def test_blocks(self, eras: np.ndarray, embargo: int, holdout_eras: int) -> list[np.ndarray]:
        return []

    def training_eras(self, eras: np.ndarray, test: np.ndarray, embargo: int) -> np.ndarray:
        return purged(eras, test, embargo)

    def folds(self, eras: np.ndarray, embargo: int, holdout_eras: int) -> list[Fold]:
        eras = distinct_eras(eras)
        result = []
        for index, test in enumerate(self.test_blocks(eras, embargo, holdout_eras)):
            train = self.training_eras(eras, test, embargo)
            if not len(train):
                raise FxmlError(f"cv: fold {index} has no training era left after an embargo of "
                                f"{embargo} eras: use fewer folds or a smaller cv.embargo")
            fit, holdout = with_inner_holdout(train, holdout_eras, embargo, f"cv fold {index}")
            result.append(Fold(index, fit, holdout, test))
        return result


EraSplitter.__signature__ = settings_signature(SplitSettings)  # type: ignore[attr-defined]


class WalkForward(EraSplitter):
    """Expanding window: each test block follows all earlier eras but the embargo."""

    method = "walk_forward"
    settings_class = WalkForwardSettings
    settings: WalkForwardSettings

    def __init__(self, *args: Any, **settings: Any) -> None:
        super().__init__(*args, **settings)
        self.n_folds, self.min_train_eras = self.settings.folds, self.settings.min_train_eras

    @property
    def active(self) -> bool:
        return True

    def test_blocks(self, eras: np.ndarray, embargo: int, holdout_eras: int) -> list[np.ndarray]:
        # the first era before which, beyond the embargo, min_train_eras eras are left to fit on
        # once the inner holdout (and the embargo before it) is set aside
        first = next((i for i, era in enumerate(eras)
                      if self._fitted_before(eras, era, embargo, holdout_eras) >= self.min_train_eras),
                     len(eras))
        if len(eras) - first < self.n_folds:
            raise FxmlError(f"cv=walk_forward: {len(eras)} training eras cannot hold {self.n_folds} "
                            f"test blocks after cv.min_train_eras={self.min_train_eras}, an inner holdout "
                            f"of {holdout_eras} and an embargo of {embargo}: lower them or load more eras")
        return np.array_split(eras[first:], self.n_folds)

    @staticmethod
    def _fitted_before(eras: np.ndarray, era: int, embargo: int, holdout_eras: int) -> int:
        before = eras[eras < era - embargo]
        if len(before) <= holdout_eras:
            return 0
        if not holdout_eras:
            return len(before)
        return len(purged(before[:-holdout_eras], before[-holdout_eras:], embargo))

    def training_eras(self, eras: np.ndarray, test: np.ndarray, embargo: int) -> np.ndarray:
        # never an era after the test block: only the past trains
        return eras[eras < test[0] - embargo]


class EraKFold(EraSplitter):
    """Contiguous era blocks; each is tested once with all other eras (purged) training."""

    method = "era_kfold"
    settings_class = EraKFoldSettings
    settings: EraKFoldSettings

    def __init__(self, *args: Any, **settings: Any) -> None:
        super().__init__(*args, **settings)
        self.n_folds = self.settings.folds

    @property
    def active(self) -> bool:
        return True

    @property
    def copied_share(self) -> float:
        return (self.n_folds - 1) / self.n_folds

    def test_blocks(self, eras: np.ndarray, embargo: int, holdout_eras: int) -> list[np.ndarray]:
        if len(eras) < self.n_folds:
            raise FxmlError(f"cv=era_kfold: {len(eras)} training eras cannot make {self.n_folds} folds")
        return np.array_split(eras, self.n_folds)


def era_ranges(eras: np.ndarray) -> str:
    """Era numbers as compact runs, ``1-20,25,29-40`` (the loaded eras may skip some numbers:
    a run here is consecutive era numbers)."""
    eras = distinct_eras(eras)
    if not len(eras):
        return ""
    breaks = np.flatnonzero(np.diff(eras) != 1) + 1
    runs = np.split(eras, breaks)
    return ",".join(f"{r[0]}" if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


def parse_era_ranges(text: str) -> np.ndarray:
    """The inverse of :func:`era_ranges`."""
    eras: list[int] = []
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        eras.extend(range(int(first), int(last or first) + 1))
    return np.array(eras, dtype=np.int64)


def rows_of_eras(split: DataSplit, eras: np.ndarray) -> DataSplit:
    """The rows of ``split`` (era-sorted) in ``eras``: a view when they are one contiguous run of
    the split (walk-forward blocks, a holdout at the end), a copy for two runs (era_kfold's
    training eras on both sides of the test block)."""
    return split.rows(np.isin(split.eras, eras))


def detached(split: DataSplit) -> DataSplit:
    """A copy owning its arrays, so that the split it was cut from can be freed (the small inner
    holdout, while the model frees the big training block)."""
    return dataclasses.replace(split, ids=None if split.ids is None else split.ids.copy(),
                               eras=split.eras.copy(), features=np.array(split.features),
                               target=None if split.target is None else split.target.copy(),
                               extra={k: v.copy() for k, v in split.extra.items()}, storage="memory",
                               releasable=False)
