"""One job of a multirun as a Ray task runs it: in the folder the command ran in, with the
environment variables the command forwarded, through Hydra's ``run_job`` as any launcher does.
Ray reuses its worker processes, so the folder and the variables are put back after each job."""

from __future__ import annotations

import contextlib
import copy
import os
import socket
from collections.abc import Iterator, Mapping

from hydra.core.utils import JobReturn, JobStatus, run_job, setup_globals
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from fxml.cli import configure_process
from fxml.errors import FxmlError


def run_on_worker(shared: tuple[HydraContext, TaskFunction], job: DictConfig, folder: str,
                  environment: Mapping[str, str | None]) -> JobReturn:
    """The Ray task: ``job`` (a composed job config) run as Hydra runs a sweep's job. A failure
    before the job's task starts (a missing folder, an output folder that cannot be made) is a
    FAILED JobReturn as a failure inside it is, never a lost batch."""
    hydra_context, task_function = shared
    # the settings fxml's entry points make (read once, when the libraries load)
    configure_process()
    try:
        with forwarded(environment), in_folder(folder):
            setup_globals()
            return run_job(hydra_context=hydra_context, config=job, task_function=task_function,
                           job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    except Exception as error:  # whatever stopped the job, the sweep records it as the job's
        return failed(job, error)
    # an interruption (a cancelled task) or an exit (Ray stopping this worker) is Ray's to handle


@contextlib.contextmanager
def forwarded(environment: Mapping[str, str | None]) -> Iterator[None]:
    """This process's environment with ``environment``'s values (None: unset) for the job."""
    before = {name: os.environ.get(name) for name in environment}
    try:
        for name, value in environment.items():
            _set(name, value)
        yield
    finally:
        for name, value in before.items():
            _set(name, value)


def _set(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


@contextlib.contextmanager
def in_folder(folder: str) -> Iterator[None]:
    """Run in the folder the command ran in, so that each relative path of the job's config (the
    MLflow store, the study's storage, the data, the outputs) names what it named there."""
    if not os.path.isdir(folder):
        raise FxmlError(f"the folder the command ran in, {folder}, does not exist on the Ray node "
                        f"{socket.gethostname()}: run the command from a folder every node has at "
                        "the same path (a shared file system)")
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def failed(job: DictConfig, error: BaseException) -> JobReturn:
    """A FAILED JobReturn of ``job`` carrying ``error``, with the overrides and configs Hydra's
    ``run_job`` would have given it (what a sweeper and the callbacks read)."""
    task_cfg = copy.deepcopy(job)
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    return JobReturn(overrides=list(job.hydra.overrides.task), cfg=task_cfg,
                     hydra_cfg=OmegaConf.masked_copy(job, "hydra"), working_dir=None,
                     task_name=str(job.hydra.job.name), status=JobStatus.FAILED, _return_value=error)
