"""Hydra's handle on fxml's Ray launcher (``hydra/launcher=ray``; the driver's side is
``_driver``, the worker's ``_worker``). Hydra imports every plugin module whenever any fxml command
starts, so this one imports nothing heavy: Ray loads only when a multirun sets up its launcher."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

if TYPE_CHECKING:
    from hydra_plugins.fxml_ray_launcher._driver import Driver


class FxmlRayLauncher(Launcher):
    def __init__(self, address: str | None, num_cpus: float, num_gpus: float, max_retries: int,
                 env: Sequence[str]) -> None:
        super().__init__()
        self.address = address
        self.resources = {"num_cpus": num_cpus, "num_gpus": num_gpus, "max_retries": max_retries}
        self.forwarded = [str(name) for name in env]
        self.driver: Driver | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        from hydra_plugins.fxml_ray_launcher._driver import Driver

        # connected here, before a search opens its study and parent run: no cluster is one line
        self.driver = Driver.connect(self.address, hydra_context, task_function, config)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.driver is not None, "Hydra calls the launcher's setup() before launch()"
        return self.driver.launch(job_overrides, initial_job_idx, self.resources, self.forwarded)
