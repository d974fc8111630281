"""Sweep jobs on SLURM through submitit, as a sweep needs them (the launchers of
``launcher.py``).

hydra-submitit-launcher submits the jobs; this launcher changes how they are awaited:
- a job that SLURM cancels, kills or times out is one failed job, not the end of the sweep: its
  result says why, and the sweep fails its trial (and its open MLflow run) and goes on;
- stopping the driver (Ctrl-C, SIGTERM) cancels the jobs still queued or running (``scancel``),
  whose runs end KILLED;
- each job's one-line summary reaches the driver's console as the job ends;
- a password written into the config is refused: submitit pickles the config into its job
  folder, so passwords must come from the environment (``${oc.env:NAME}``, PGPASSWORD, ...).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import DictConfig, OmegaConf

from fxml.console import console, job_line
from fxml.errors import FxmlError, LostJob
from fxml.secrets import redact

log = logging.getLogger(__name__)
POLL_SECONDS = 1.0
CANCEL_GRACE_SECONDS = 20.0
# submitit's own settings, the rest are the executor's (``slurm_partition``, ...)
EXECUTOR_SETTINGS = ("max_num_timeout",)


class _AwaitedOneByOne(BaseSubmititLauncher):  # type: ignore[misc]
    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        # before the sweep opens anything
        refuse_written_secrets(OmegaConf.to_yaml(config), [])
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None, "Hydra calls the launcher's setup() before launch()"
        refuse_written_secrets("", job_overrides)
        executor = self._executor()
        numbers = range(initial_job_idx, initial_job_idx + len(job_overrides))
        for number, overrides in zip(numbers, job_overrides, strict=True):
            log.info("\t#%d : %s", number, " ".join(filter_overrides(overrides)))
        state = Singleton.get_state()
        jobs = executor.map_array(self, [list(o) for o in job_overrides], ["hydra.sweep.dir"] * len(numbers),
                                  list(numbers), [f"job_id_for_{n}" for n in numbers], [state] * len(numbers))
        try:
            return [self._result(job, list(overrides), number)
                    for job, overrides, number in zip(jobs, job_overrides, numbers, strict=True)]
        except BaseException:
            cancel_unfinished(jobs)
            raise

    def _executor(self) -> Any:
        import submitit

        settings = dict(self.params)
        folder = settings.pop("submitit_folder")
        own = {f"{self._EXECUTOR}_{key}": settings.pop(key) for key in EXECUTOR_SETTINGS if key in settings}
        executor = submitit.AutoExecutor(folder=folder, cluster=self._EXECUTOR, **own)
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{key if key in shared else f"{self._EXECUTOR}_{key}": value
                                      for key, value in settings.items()})
        return executor

    def _result(self, job: Any, overrides: list[str], number: int) -> JobReturn:
        while not job.done():
            time.sleep(POLL_SECONDS)
        try:
            result: JobReturn = job.results()[0]
        except Exception as error:  # submitit's UncompletedJobError, or a result that cannot be read
            reason = (f"its job {job.job_id} was lost (state {job.state}, {type(error).__name__}); "
                      f"its log: {job.paths.stderr}")
            log.warning("job %d: %s", number, reason)
            return JobReturn(overrides=overrides, status=JobStatus.FAILED,
                             _return_value=LostJob(redact(reason)))
        if result.status == JobStatus.COMPLETED and hasattr(result.return_value, "shown"):
            summary = result.return_value
            console.print(f"job {number}: {job_line(summary.shown.run_name, dict(summary))}",
                          highlight=False, markup=False)
        return result


def cancel_unfinished(jobs: Sequence[Any]) -> None:
    """``scancel`` (a local job: SIGINT) every job still queued or running, then give them a
    moment to close their runs as KILLED."""
    cancelled = []
    for job in jobs:
        with contextlib.suppress(Exception):  # a job that ended meanwhile, or scancel missing
            if not job.paths.result_pickle.exists() and not job.done():
                job.cancel(check=False)
                cancelled.append(job)
                log.warning("cancelled job %s", job.job_id)
    deadline = time.monotonic() + CANCEL_GRACE_SECONDS
    while cancelled and time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            cancelled = [job for job in cancelled if not job.done()]
        time.sleep(POLL_SECONDS / 4)


def refuse_written_secrets(config_text: str, job_overrides: Sequence[Sequence[str]]) -> None:
    """One line when a password is written into the config or a job's overrides: submitit would
    store it in its job files."""
    for text in (config_text, *(" ".join(o) for o in job_overrides)):
        if redact(text) != text:
            raise FxmlError("a password is written into the config; submitit stores the config in "
                            "its job folder: read it from the environment instead (${oc.env:NAME} "
                            "in the URL, PGPASSWORD or ~/.pgpass, MLFLOW_TRACKING_PASSWORD)")


class AwaitedSlurmJobs(_AwaitedOneByOne):
    _EXECUTOR = "slurm"


class AwaitedLocalJobs(_AwaitedOneByOne):
    _EXECUTOR = "local"
