"""Hydra's handle on fxml's submitit launchers (``hydra/launcher=slurm``: jobs on SLURM;
``hydra/launcher=slurm_local``: the same jobs as local processes, to try a setup on one machine).
Hydra imports every plugin module whenever any fxml command starts, so this one imports nothing:
submitit and the launcher itself (``_launcher``) load only when a multirun launches jobs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from fxml.errors import FxmlError

INSTALL = 'SLURM jobs need submitit and its Hydra launcher: pip install "fxml[slurm]"'


class _Delegating(Launcher):
    executor = "abstract"

    def __init__(self, **settings: Any) -> None:
        super().__init__()
        try:
            from hydra_plugins.fxml_submitit_launcher import _launcher
        except ImportError:
            raise FxmlError(INSTALL) from None
        awaited = {"slurm": _launcher.AwaitedSlurmJobs, "local": _launcher.AwaitedLocalJobs}
        self.jobs = awaited[self.executor](**settings)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.jobs.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        launched: Sequence[JobReturn] = self.jobs.launch(job_overrides, initial_job_idx)
        return launched


class SlurmLauncher(_Delegating):
    executor = "slurm"


class LocalLauncher(_Delegating):
    executor = "local"
