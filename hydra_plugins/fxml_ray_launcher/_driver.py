"""The command's side of the Ray launcher: connect to the cluster, submit each job of a batch as a
Ray task, and collect the results one task at a time, so that a task whose worker died is that
job's failure and never the batch's. A stopped command cancels its tasks, then stops as it would.

Nothing of the config or the environment goes into Ray's ``runtime_env`` (Ray writes it to its
logs and its control store): the job's config and the forwarded variables' values are the task's
arguments, kept in memory."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, filter_overrides, setup_globals
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from fxml.errors import FxmlError, LostJob, describe
from hydra_plugins.fxml_ray_launcher._worker import failed, run_on_worker

log = logging.getLogger(__name__)
NO_CLUSTER = ("no Ray cluster: start one with `ray start --head` and set hydra.launcher.address or "
              "RAY_ADDRESS")
POLL_SECONDS = 1.0  # how often the wait for results lets a stop signal through
# a stopped command first interrupts its jobs (each ends its MLflow run KILLED), then kills those
# still running after this long
CANCEL_GRACE_SECONDS = 5.0


class Driver:
    def __init__(self, ray: Any, hydra_context: HydraContext, task_function: TaskFunction,
                 config: DictConfig) -> None:
        self.ray, self.config = ray, config
        self.hydra_context, self.task_function = hydra_context, task_function

    @classmethod
    def connect(cls, address: str | None, hydra_context: HydraContext, task_function: TaskFunction,
                config: DictConfig) -> Driver:
        """A driver connected to the cluster at ``address`` (else ``$RAY_ADDRESS``; ``local``: a
        Ray of this command's own); no address is one line, never a cluster started unasked."""
        # every job prints a summary line: Ray would fold lines that differ only in numbers
        # into one ("[repeated 2x across cluster]"); read when Ray is imported
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        if not sys.stdout.isatty():  # the jobs' lines without colour codes in a file or pipe
            os.environ.setdefault("RAY_COLOR_PREFIX", "0")
        try:
            import ray
        except ImportError:
            raise FxmlError('hydra/launcher=ray needs Ray: pip install "fxml[ray]"') from None
        address = address or os.environ.get("RAY_ADDRESS")
        if not address:
            raise FxmlError(NO_CLUSTER)
        if not ray.is_initialized():
            with sigterm_kept():
                try:
                    # jobs print their lines on their workers: log_to_driver shows them here
                    ray.init(address=address, log_to_driver=True,
                             include_dashboard=False if address == "local" else None)
                except (ConnectionError, ValueError, RuntimeError) as error:
                    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                    raise FxmlError(f"cannot connect to the Ray cluster at {address}: {first} (a "
                                    "cluster with token authentication needs RAY_AUTH_MODE=token and "
                                    "its token here too)") from None
        return cls(ray, hydra_context, task_function, config)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int,
               resources: Mapping[str, float], forwarded: Sequence[str]) -> list[JobReturn]:
        setup_globals()
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info("Ray: launching %d job(s), each with %s", len(job_overrides),
                 ", ".join(f"{key}={value}" for key, value in resources.items()))
        # the values read here, handed to the tasks in memory (None: unset for the job)
        environment = {name: os.environ.get(name) for name in forwarded}
        shared = self.ray.put((self.hydra_context, self.task_function))
        task = self.ray.remote(run_on_worker)
        jobs: dict[Any, DictConfig] = {}
        for offset, overrides in enumerate(job_overrides):
            number = initial_job_idx + offset
            job = self.job_config(list(overrides), number)
            log.info("\t#%d : %s", number, " ".join(filter_overrides(overrides)))
            ref = task.options(name=f"fxml-job-{number}", **resources).remote(
                shared, job, os.getcwd(), environment)
            jobs[ref] = job
        return self.collect(jobs)

    def job_config(self, overrides: list[str], number: int) -> DictConfig:
        job = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(job):
            job.hydra.job.id = f"{job.hydra.job.name}_{number}"
            job.hydra.job.num = number
        return job

    def collect(self, jobs: dict[Any, DictConfig]) -> list[JobReturn]:
        """Each task's JobReturn in submission order, taken as it finishes; a stop signal (or any
        error) cancels the tasks not yet finished and is raised again."""
        results: dict[Any, JobReturn] = {}
        pending = list(jobs)
        try:
            while pending:
                done, pending = self.ray.wait(pending, num_returns=1, timeout=POLL_SECONDS)
                for ref in done:
                    results[ref] = self.result(ref, jobs[ref])
        except BaseException:
            self.cancel(pending)
            raise
        return [results[ref] for ref in jobs]

    def result(self, ref: Any, job: DictConfig) -> JobReturn:
        try:
            returned = self.ray.get(ref)
        except self.ray.exceptions.RayError as error:
            log.warning("Ray: job %s lost: %s", job.hydra.job.num, first_line(error))
            return failed(job, LostJob(lost_reason(self.ray, error)))
        assert isinstance(returned, JobReturn), "the Ray task returns its job's JobReturn"
        return returned

    def cancel(self, refs: list[Any]) -> None:
        """Interrupt the tasks (a job ends its MLflow run KILLED), then kill those that have not
        ended after the grace period."""
        for force in (False, True):
            for ref in refs:
                try:
                    self.ray.cancel(ref, force=force)
                except Exception as error:  # a task that ended meanwhile; the stop goes on
                    log.debug("Ray: cancelling %s: %s", ref, error)
            if force:
                return
            _, refs = self.ray.wait(refs, num_returns=len(refs), timeout=CANCEL_GRACE_SECONDS)
            if not refs:
                return


def lost_reason(ray: Any, error: BaseException) -> str:
    """Why a task gave no result, in one line."""
    if isinstance(error, ray.exceptions.TaskCancelledError):
        return f"its Ray task was cancelled: {first_line(error)}"
    if isinstance(error, ray.exceptions.RayTaskError):  # the task itself raised: say what
        cause = getattr(error, "cause", None)
        return f"its Ray task failed: {describe(cause) if cause is not None else first_line(error)}"
    return f"its Ray worker died: {first_line(error)}"


def first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


@contextmanager
def sigterm_kept() -> Iterator[None]:
    """``ray.init`` makes SIGTERM exit the process at once; fxml's own handler (the command's and
    the sweep's: close the runs KILLED, then exit 143) is put back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
