"""The Hydra callback behind every multirun's parent MLflow run.

Hydra builds its callbacks for every command, a single run and ``--help`` included, so this module
only defines the callback: MLflow and the parent run's work (:mod:`fxml.sweeps.parent`) load when
a multirun starts, and a config error still answers before anything heavy is imported.
"""

from __future__ import annotations

import gc
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class MlflowSweepParent(Callback):
    """Every multirun gets a parent run, its jobs are the children: a grid's here
    (:class:`fxml.sweeps.parent.GridParent`), an Optuna search's in its sweeper."""

    def __init__(self) -> None:
        self.grid: Any = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from fxml.sweeps.parent import GridParent

        self.grid = GridParent()
        self.grid.on_multirun_start(config, **kwargs)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if self.grid is not None:
            self.grid.on_job_end(config, job_return, **kwargs)
        else:
            gc.collect()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.grid is not None:
            self.grid.on_multirun_end(config, **kwargs)
