"""Hydra's handle on fxml's Optuna sweeper (``hydra/sweeper=fxml_optuna``; the search is
``_search.OptunaSearch``). Hydra imports every plugin module whenever any fxml command starts, so
this one imports nothing heavy: Optuna and the search load only when a sweep begins."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class FxmlOptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        super().__init__()
        from hydra_plugins.fxml_optuna_sweeper._search import OptunaSearch

        self.search = OptunaSearch(**settings)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.search.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        return self.search.sweep(arguments)
