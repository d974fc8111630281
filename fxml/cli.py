"""Entry-point plumbing shared by fxml's commands: user errors become one line and an exit code;
SIGINT, SIGTERM and SIGHUP end the command (and its MLflow run, KILLED) with 130 / 143 / 129 and
one line."""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException
from rich.markup import escape

from fxml.config import describe_config_error, register_schemas
from fxml.console import error_console
from fxml.interrupts import exit_code, interrupting_signal, stop_on_signals
from fxml.secrets import redact, redact_file, redact_records

USER_ERROR, CONFIG_ERROR = 1, 2
# Process-wide settings every fxml command makes when it starts (``configure_process``), for the
# libraries it loads later; a value the user exported wins.
PROCESS_ENVIRONMENT = {
    # OpenMP threads (LightGBM, XGBoost, torch) spin while they wait by default: on a shared or busy
    # machine a 2-second LightGBM fit took 20 seconds. Read when the first OpenMP library loads.
    "OMP_WAIT_POLICY": "PASSIVE",
    # Polars' allocator (jemalloc) keeps freed pages for seconds before handing them back; Polars
    # only reads ids, eras and targets here, so nothing is gained by keeping them (39 MiB at the
    # start of training at 1/16 of v5.2). Read when Polars loads.
    "_RJEM_MALLOC_CONF": "dirty_decay_ms:0,muzzy_decay_ms:0",
}


def configure_process() -> None:
    """The settings of ``PROCESS_ENVIRONMENT``: called by each command's entry point before it
    loads the libraries they are for (launcher workers inherit them)."""
    for name, value in PROCESS_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


def fail(prefix: str, message: str, code: int) -> None:
    # escaped: a message may hold brackets (pip install "fxml[postgres]") that rich would eat
    error_console.print(f"[red]fxml: {prefix}[/red] {escape(redact(message))}", highlight=False,
                        soft_wrap=True)
    sys.exit(code)


def fail_interrupted(signum: int) -> None:
    name = signal.Signals(signum).name
    fail("interrupted", f"by {name}; the MLflow run, if any, is marked KILLED", exit_code(signum))


def in_multirun() -> bool:
    """Whether this is a job of a Hydra multirun (a grid, a search)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def exits_on_user_error(task: Callable[..., Any]) -> Callable[..., Any]:
    """Inside a single job, a user error ends the process with one line (Hydra would add its own
    report first); inside a multirun it propagates, so the sweep records that job as failed."""
    from fxml.errors import FxmlError

    @functools.wraps(task)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        redact_records()  # also in launcher worker processes, which never pass through run_cli
        try:
            return task(*args, **kwargs)
        except FxmlError as error:
            if in_multirun():
                raise
            fail("error:", str(error), USER_ERROR)

    return wrapper


def run_cli(hydra_entry: Callable[[], Any]) -> None:
    """Run a ``@hydra.main`` function, turning composition errors into one line."""
    from fxml.errors import OUTPUT_CLOSED, FxmlError, output_closed

    configure_process()
    # Hydra re-raises instead of printing its multi-line report; fxml prints one line
    os.environ["HYDRA_FULL_ERROR"] = "1"
    # the schemas enter Hydra's ConfigStore here, before composition, not when a module is
    # imported; launcher workers get the parent's ConfigStore with the composed job
    register_schemas()
    redact_records()
    stop_on_signals()
    try:
        hydra_entry()
    except FxmlError as error:
        fail("error:", str(error), USER_ERROR)
    except (OmegaConfBaseException, HydraException) as error:
        fail("config error:", describe_config_error(error), CONFIG_ERROR)
    except KeyboardInterrupt:
        fail_interrupted(interrupting_signal() or signal.SIGINT)
    except SystemExit as stop:
        signum = interrupting_signal()
        if signum is not None:
            fail_interrupted(signum)
        if output_closed(stop):
            fail("error:", f"{OUTPUT_CLOSED}; the MLflow run, if any, is marked FAILED", USER_ERROR)
        raise


class RedactHydraFiles(Callback):
    """Hydra callback: mask passwords in the YAML files Hydra saves for a job and a multirun.

    Hydra writes ``.hydra/{config,hydra,overrides}.yaml`` just before ``on_job_start`` and a
    sweeper writes ``multirun.yaml`` when the sweep starts, so both are rewritten from here."""

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        hydra = config.hydra
        if hydra.output_subdir is not None:
            for path in (Path(hydra.runtime.output_dir) / hydra.output_subdir).glob("*.yaml"):
                redact_file(path)
        if hydra.mode is not None and str(hydra.mode).endswith("MULTIRUN"):
            redact_file(Path(hydra.sweep.dir) / "multirun.yaml")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        redact_file(Path(config.hydra.sweep.dir) / "multirun.yaml")
