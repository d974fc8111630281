"""Entry-point plumbing shared by fxml's commands: user errors become one line and exit code 2;
SIGINT, SIGTERM and SIGHUP end the command (and its MLflow run, KILLED) with 130 / 143 / 129 and
one line; ``output=json`` prints the command's result as one JSON object, the last line of stdout;
``--help`` answers without loading the job's libraries."""

from __future__ import annotations

import errno
import functools
import os
import signal
import string
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

from fxml.config import CONFIG_PATH, describe_config_error, register_schemas
from fxml.console import error_console, json_output
from fxml.interrupts import exit_code, interrupting_signal, stop_on_signals
from fxml.secrets import redact, redact_file, redact_output_streams, redact_records

# every one-line error exits 2: a bad value or option, or a failure fxml names (a store that stopped
# answering, a full disk), in a single job or in a multirun's; 1 is left to crashes
USER_ERROR = 2
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
    json_output.emit({"error": redact(f"{prefix} {message}"), "exit_code": code})
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
    def wrapper(cfg: DictConfig, *args: Any, **kwargs: Any) -> Any:
        # also in launcher worker processes, which never pass through run_cli
        redact_records()
        redact_output_streams()
        try:
            output = check_output_setting(cfg)
            if output == "json":
                # a launcher's worker process prints to the terminal's stdout directly
                json_output.divert_prints()
            result = task(cfg, *args, **kwargs)
        except FxmlError as error:
            if in_multirun():
                raise
            fail("error:", str(error), USER_ERROR)
        if not in_multirun():
            json_output.emit(result)
        return result

    return wrapper


OUTPUTS = ("text", "json")


def check_output_setting(cfg: DictConfig) -> str:
    from fxml.errors import FxmlError

    output = str(cfg.get("output", "text"))
    if output not in OUTPUTS:
        hint = (f"; the file this command writes is file={output}"
                if output.endswith((".html", ".pkl")) else "")
        raise FxmlError(f"output={output}: must be text or json (what the command prints){hint}")
    return output


def asks_for_json(arguments: list[str]) -> bool:
    return any(argument.lstrip("+").replace("'", "").replace('"', "") == "output=json"
               for argument in arguments)


def run_cli(hydra_entry: Callable[[], Any], config_name: str,
            arguments: list[str] | None = None) -> None:
    """Run a ``@hydra.main`` function (its config: ``config_name``; its command line:
    ``arguments``, by default this process's), turning composition errors into one line."""
    arguments = sys.argv[1:] if arguments is None else arguments
    # for good, not for the command's length: the sweep's exit handlers print after it
    redact_output_streams()
    with json_output.enabled(asks_for_json(arguments)):
        _run(hydra_entry, config_name, arguments)


def _run(hydra_entry: Callable[[], Any], config_name: str, arguments: list[str]) -> None:
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
        if asks_for_help(arguments):
            print(help_text(config_name, [a for a in arguments if a not in HELP_FLAGS]))
            return
        hydra_entry()
    except FxmlError as error:
        fail("error:", str(error), USER_ERROR)
    except (OmegaConfBaseException, HydraException) as error:
        fail("config error:", describe_config_error(error), USER_ERROR)
    except OSError as error:
        if not disk_full(error):
            raise
        where = f" writing {error.filename}" if error.filename else ""
        fail("error:", f"no space left on the device{where}; the MLflow run, if any, is marked FAILED",
             USER_ERROR)
    except KeyboardInterrupt:
        fail_interrupted(interrupting_signal() or signal.SIGINT)
    except SystemExit as stop:
        signum = interrupting_signal()
        if signum is not None:
            fail_interrupted(signum)
        if output_closed(stop):
            fail("error:", f"{OUTPUT_CLOSED}; the MLflow run, if any, is marked FAILED", USER_ERROR)
        raise


def disk_full(error: OSError) -> bool:
    """A full disk or quota, as the OS or a library reporting it in words (Arrow) says it."""
    return error.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(error)


HELP_FLAGS = ("--help", "-h")


def asks_for_help(arguments: list[str]) -> bool:
    """``--help`` answered by fxml: Hydra's own lists every config group's options through one
    fresh copy of its config repository per group (seconds with fxml's schemas). Options Hydra must
    interpret first (``--config-dir`` and the like) leave it to Hydra."""
    return (any(a in HELP_FLAGS for a in arguments)
            and not any(a.startswith("-") and a not in HELP_FLAGS for a in arguments))


def help_text(config_name: str, overrides: list[str]) -> str:
    """The command's help template (``hydra.help``) with its config groups and resolved config."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    with initialize_config_module(config_module=CONFIG_PATH.removeprefix("pkg://"),
                                  version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
        groups = config_groups(GlobalHydra.instance().config_loader().get_sources())
        template = string.Template(str(cfg.hydra.help.template))
        OmegaConf.set_struct(cfg, False)
        del cfg["hydra"]
    return template.safe_substitute(
        APP_CONFIG_GROUPS="".join(f"{group}: {', '.join(options)}\n"
                                  for group, options in groups.items()),
        HYDRA_CONFIG_GROUPS="(python -m <command> --hydra-help)", FLAGS_HELP="",
        CONFIG=OmegaConf.to_yaml(cfg))


def config_groups(sources: list[Any], parent: str = "") -> dict[str, list[str]]:
    """Every config group below ``parent`` (Hydra's own excepted) and its options, from each
    source of the search path once."""
    from hydra.core.object_type import ObjectType

    sources = [source for source in sources if source.available()]
    names = sorted({name for source in sources if source.is_group(parent)
                    for name in source.list(parent, ObjectType.GROUP)})
    groups: dict[str, list[str]] = {}
    for name in names:
        group = f"{parent}/{name}" if parent else name
        if group == "hydra":
            continue
        options = sorted({option for source in sources if source.is_group(group)
                          for option in source.list(group, ObjectType.CONFIG)})
        if options:
            groups[group] = options
        groups.update(config_groups(sources, group))
    return groups


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
