"""The ``cv`` group's settings, defaults and checks, written once.

Each splitter in :mod:`fxml.data.folds` is a dataclass subclassing its settings here, and the cv
config schemas (fxml.config.schema) are derived from the same classes. No import beyond the
standard library, so schemas register cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fxml.errors import require


@dataclass
class SplitSettings:
    # eras purged on both sides of a held-out block (an int >= 0); auto: 4 (*_20 targets), 16 (*_60)
    embargo: Any = "auto"
    refit: bool = True  # after the folds, fit on all training eras and score validation

    def __post_init__(self) -> None:
        require(self.embargo == "auto" or (isinstance(self.embargo, int) and not isinstance(
            self.embargo, bool) and self.embargo >= 0), "cv.embargo", "must be auto or an int >= 0",
            self.embargo)


@dataclass
class WalkForwardSettings(SplitSettings):
    folds: int = 4  # test blocks, contiguous eras, covering the eras after the first window
    min_train_eras: int = 20  # eras the first fold fits on (inner holdout and embargoes on top)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.folds >= 1, "cv.folds", "must be >= 1", self.folds)
        require(self.min_train_eras >= 1, "cv.min_train_eras", "must be >= 1", self.min_train_eras)


@dataclass
class EraKFoldSettings(SplitSettings):
    folds: int = 5  # contiguous era blocks, each the test block of one fold

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.folds >= 2, "cv.folds", "must be >= 2", self.folds)
