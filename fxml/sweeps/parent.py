"""One parent MLflow run per sweep; every job of the sweep is its child.

The parent is opened in the launching process and reaches each job in the job's own config: the
sweep adds ``sweep.parent_run_id=<id>`` (and ``tracking.uri=<store>`` where the config does not
name the store) to every job's overrides (:func:`job_overrides`), so a launcher that runs the job
elsewhere (another process, machine or a Ray worker) and hands it only its config loses nothing.
A grid multirun gets its parent from the Hydra callback below; an Optuna search opens its own (the
sweeper knows its study, ends the parent KILLED or FAILED when the search stops, and records the
best trial on it). Workers of one study, and a resumed study, share the parent."""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import gc
import io
import json
import logging
import math
import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import mlflow
from hydra.core.utils import JobReturn, JobStatus
from mlflow.entities import Metric, Run, RunTag
from omegaconf import DictConfig, open_dict, read_write

from fxml.console import JobRow, comparison_table, json_output, print_wide
from fxml.errors import FxmlError, describe, reported_as_store_error
from fxml.secrets import redact
from fxml.sweeps.stopping import watch_stop_signals
from fxml.tracking.mlflow_run import JOB_TAG, OVERRIDES_TAG, TRIAL_TAG, tracking_uri, use_experiment
from fxml.tracking.stores import retrying, store_client, tracking_store

log = logging.getLogger(__name__)
T = TypeVar("T")
SWEEP_KEY_TAG = "fxml.sweep_key"
STUDY_TAG = "fxml.study"
ROLE_TAG = "fxml.role"
OPTUNA_SWEEPER = "FxmlOptunaSweeper"
# what a grid's table puts first (the sweeper's default objective); out of fold without a refit
GRID_OBJECTIVES = ("corr_sharpe", "cv_corr_sharpe")


def quoted(value: str, resolved_by_the_job: bool = False) -> str:
    """``value`` as a quoted Hydra override value that composes back to exactly ``value``: quotes
    and the backslashes before them escaped, ``${`` kept literal unless the job is to resolve it
    (a password read by ``${oc.env:...}`` where the job runs, never written out)."""
    value = re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), value)
    return "'" + (value if resolved_by_the_job else value.replace("${", "\\${")) + "'"


def job_overrides(settings: dict[str, str | int | float | None]) -> list[str]:
    """The overrides that tell a job where it belongs (``sweep.parent_run_id``, ``tracking.uri``,
    ...), each value quoted; None values are left out."""
    return [f"{key}={quoted(value) if isinstance(value, str) else value}"
            for key, value in settings.items() if value is not None]


def configured_store(config: DictConfig, uri: str) -> str | None:
    """``uri`` where a job would not find it in its config (``$MLFLOW_TRACKING_URI`` or the
    default store); None where the config names the store (as the user wrote it, a password
    read from the environment by ``${oc.env:...}`` stays there)."""
    return None if config.tracking.uri else uri


def without_keys(overrides: list[str], keys: set[str]) -> list[str]:
    """``overrides`` less those setting one of ``keys`` (the sweep sets them itself)."""
    return [line for line in overrides if line.split("=", 1)[0].lstrip("+~") not in keys]


def open_parent_run(uri: str, experiment: str, key: str, name: str,
                    tags: dict[str, str] | None = None) -> str:
    """The parent run for ``key``: the existing one (set RUNNING again), or a new one. Workers that
    start together may each create one; all of them keep the oldest and delete their own."""
    experiment_id = use_experiment(uri, experiment)
    client = store_client(uri)

    def oldest() -> str | None:
        found = client.search_runs([experiment_id], filter_string=f"tags.`{SWEEP_KEY_TAG}` = '{key}'")
        ordered = sorted(found, key=lambda run: (run.info.start_time, run.info.run_id))
        return ordered[0].info.run_id if ordered else None

    existing = oldest()
    if existing is None:
        mine = client.create_run(experiment_id, run_name=name,
                                 tags={SWEEP_KEY_TAG: key, ROLE_TAG: "sweep", **(tags or {})})
        # let a worker that started at the same moment finish creating its own before comparing
        time.sleep(0.2)
        existing = oldest() or mine.info.run_id
        if existing != mine.info.run_id:
            # another worker's parent is the study's: this one ends (as a deleted run still shows
            # in the store's RUNNING runs otherwise) and goes
            client.set_terminated(mine.info.run_id, status="FINISHED")
            client.delete_run(mine.info.run_id)
    client.update_run(existing, status="RUNNING")
    for tag, value in (tags or {}).items():
        client.set_tag(existing, tag, value)
    return existing


def on_the_store(uri: str, doing: str, call: Callable[[], T]) -> T:
    """``call()`` on the tracking store, tried again while the store is away (for
    ``tracking.retry_seconds``), then one line: a sweep outlives an outage its retries survive
    with no run left open."""
    with reported_as_store_error(tracking_store(uri), doing):
        return retrying(call)


def end_run_as(uri: str, run_id: str, status: str, reason: str | None = None) -> None:
    """End a run of the sweep's (the parent, or a job's its job could not end) as ``status``,
    the reason tagged ``error`` (FAILED) or ``stopped``."""
    client = store_client(uri)

    def end() -> None:
        if reason:
            client.set_tag(run_id, "error" if status == "FAILED" else "stopped", reason[:5000])
        client.set_terminated(run_id, status=status)

    on_the_store(uri, f"end run {run_id}", end)


def read_run(uri: str, run_id: str) -> Run:
    return on_the_store(uri, f"read run {run_id}", lambda: store_client(uri).get_run(run_id))


def close_open_jobs(uri: str, parent_id: str, status: str, reason: str) -> None:
    """End the runs of a grid's jobs still open once its launcher returned: their jobs were lost
    (a killed worker or SLURM job) or stopped before they could close them."""
    for run in job_runs(uri, parent_id):
        if run.info.status == "RUNNING":
            end_run_as(uri, run.info.run_id, status, reason)


@dataclass(frozen=True)
class Best:
    """The best trial of a study, as recorded on its parent run."""

    number: int
    value: float
    params: dict[str, Any]
    run_id: str | None
    command: str


def record_best(uri: str, run_id: str, best: Best, objective: str, study_name: str) -> None:
    """Tags and a metric (both may change; params may not) naming the study's best trial."""
    tags = {"best_trial": str(best.number), "best_run_id": best.run_id or "",
            "best_command": best.command[:5000], "objective": objective, STUDY_TAG: study_name,
            **{f"best.{key}": str(value)[:5000] for key, value in best.params.items()}}
    now = int(time.time() * 1000)
    on_the_store(uri, "record the best trial", lambda: store_client(uri).log_batch(
        run_id, metrics=[Metric("best_value", best.value, now, 0),
                         Metric("best_trial", float(best.number), now, 0)],
        tags=[RunTag(key, value) for key, value in tags.items()]))


def job_runs(uri: str, parent_id: str) -> list[Run]:
    """The runs of a sweep's jobs (its parent's children; cv folds are their children)."""
    client = store_client(uri)

    def children() -> list[Run]:
        experiment_id = client.get_run(parent_id).info.experiment_id
        found: list[Run] = client.search_runs([experiment_id], max_results=50000,
                                              filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")
        return found

    return on_the_store(uri, "read the sweep's runs", children)


def run_status(run: Run) -> str:
    """FINISHED, FAILED, RUNNING, KILLED, or PRUNED (a trial the search stopped early)."""
    return "PRUNED" if "pruned" in run.data.tags else run.info.status


def distinct_overrides(overrides: list[str]) -> list[str]:
    """Each job's overrides less those every job shares: what sets a job apart."""
    lines = [line.split() for line in overrides]
    shared = set.intersection(*map(set, lines)) if lines else set()
    return [" ".join(o for o in line if o not in shared) for line in lines]


def grid_rows(runs: list[Run]) -> tuple[str, list[JobRow]]:
    """The objective a grid's table shows first, and one row per job in job order (with all
    its overrides)."""
    runs = sorted(runs, key=lambda run: (int(run.data.tags.get(JOB_TAG, 1 << 30)), run.info.start_time))
    objective = next((name for name in GRID_OBJECTIVES if any(name in r.data.metrics for r in runs)),
                     GRID_OBJECTIVES[0])
    return objective, [JobRow(run.data.tags.get(JOB_TAG, "?"), run_status(run), run.info.run_name or "",
                              run.data.tags.get(OVERRIDES_TAG, ""), dict(run.data.metrics),
                              run.data.metrics.get(objective))
                       for run in runs]


FAILED_EARLY = "fxml-failed-before-its-run.json"  # in a job's output folder


def record_failed_early(output_dir: str, row: JobRow) -> None:
    """Note a job that failed before its MLflow run started (a bad value) in its own output folder,
    where the multirun's table finds it whichever process or machine ran the job."""
    Path(output_dir, FAILED_EARLY).write_text(json.dumps(dataclasses.asdict(row)), encoding="utf-8")


def failed_early(directory: str) -> list[JobRow]:
    return [JobRow(**json.loads(path.read_text(encoding="utf-8")))
            for path in sorted(Path(directory).glob(f"*/{FAILED_EARLY}"))]


def show_grid_table(uri: str, parent_id: str, directory: str) -> tuple[str, list[JobRow]]:
    """The multirun's one comparison table (its jobs print one line each), and its rows, best
    first; a job that failed before starting its MLflow run has a row too."""
    objective, rows = grid_rows(job_runs(uri, parent_id))
    seen = {row.job for row in rows}
    rows += [row for row in failed_early(directory) if row.job not in seen]
    if not rows:
        return objective, rows
    for row, distinct in zip(rows, distinct_overrides([row.overrides for row in rows]), strict=True):
        row.overrides = distinct
    # best first on the main target's score (every job is scored on it, whatever it trained on)
    rows.sort(key=lambda row: (-row.objective if row.objective is not None and math.isfinite(row.objective)
                               else math.inf, int(row.job) if row.job.isdigit() else 1 << 30))
    print_wide(comparison_table(rows, f"Multirun {directory}: {len(rows)} job(s), best {objective} "
                                      "first", objective))
    return objective, rows


def sweep_result(parent_id: str, objective: str, rows: list[JobRow], **about: Any) -> dict[str, Any]:
    """What ``output=json`` prints at the end of a multirun: its parent run, objective and jobs,
    best first."""
    jobs = [{"job": row.job, "status": row.status, "run_name": row.run_name,
             "overrides": row.overrides, "objective": row.objective, "metrics": row.metrics}
            for row in rows]
    return {"parent_run_id": parent_id, "objective": objective, **about,
            "best": jobs[0] if jobs else None, "jobs": jobs}


def trial_rows(runs: list[Run], trials: list[Any]) -> list[JobRow]:
    """One row per trial of a study (``optuna.trial.FrozenTrial``), with its MLflow run's metrics."""
    by_trial = {int(run.data.tags[TRIAL_TAG]): run for run in runs if TRIAL_TAG in run.data.tags}
    rows = []
    for trial in sorted(trials, key=lambda t: t.number):
        run = by_trial.get(trial.number)
        params = " ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                          for key, value in trial.params.items())
        rows.append(JobRow(str(trial.number), trial.state.name, run.info.run_name if run else "",
                           params, dict(run.data.metrics) if run else {}, trial.value))
    return rows


def job_error(job_return: JobReturn) -> BaseException:
    """A failed job's exception, read through Hydra's public ``return_value``, which re-raises it
    after writing the job's overrides to stderr (unmasked: silenced here)."""
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            _ = job_return.return_value
        except BaseException as error:  # the job's own exception, whatever it was
            return error
    raise ValueError("job_error() of a job that did not fail")


def is_optuna_search(config: DictConfig) -> bool:
    return str(config.hydra.sweeper.get("_target_", "")).endswith(OPTUNA_SWEEPER)


class GridParent:
    """The parent run of a grid multirun (an Optuna search opens its own), driven by the Hydra
    callback :class:`fxml.sweeps.callback.MlflowSweepParent`. Hydra calls no callback when a
    multirun is stopped or fails, so a parent still open when the process exits is closed then:
    KILLED after SIGINT/SIGTERM, FAILED otherwise."""

    run_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if is_optuna_search(config):
            return
        self.uri = tracking_uri(config.tracking.uri)
        directory = self.directory = config.hydra.sweep.dir
        key = f"grid:{os.path.abspath(directory)}"
        self.run_id = open_parent_run(self.uri, config.tracking.experiment, key, f"sweep {directory}")
        # the sweeper reads the jobs' overrides from here after this callback
        with read_write(config.hydra), open_dict(config.hydra):
            task = without_keys(list(config.hydra.overrides.task), {"sweep.parent_run_id"})
            config.hydra.overrides.task = task + job_overrides(
                {"sweep.parent_run_id": self.run_id, "tracking.uri": configured_store(config, self.uri)})
        self.stops: list[int] = []
        self.restore_signals = watch_stop_signals(self.stops)
        atexit.register(self._close_if_open)
        log.info("sweep: parent MLflow run %s (sweep %s)", self.run_id, directory)

    def _close_if_open(self) -> None:
        if self.run_id:
            stopped = bool(self.stops)
            if not stopped:  # a failed job ended the multirun: show the jobs; a stop exits at once
                self._show_table()
            how = ("terminated" if signal.SIGTERM in self.stops else "interrupted") if stopped else \
                "the multirun failed"
            with contextlib.suppress(mlflow.exceptions.MlflowException):
                close_open_jobs(self.uri, self.run_id, "KILLED" if stopped else "FAILED",
                                how if stopped else "its job was lost")
            end_run_as(self.uri, self.run_id, "KILLED" if stopped else "FAILED", how)
            self.run_id = None

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        # jobs run one after another in the same process: free the last one's arrays now
        gc.collect()
        # called where the job ran: in this process (basic launcher) or a worker's (joblib)
        if self.run_id and job_return.status == JobStatus.FAILED:
            error = job_error(job_return)
            reason = str(error) if isinstance(error, FxmlError) else describe(error)
            record_failed_early(config.hydra.runtime.output_dir, JobRow(
                str(config.hydra.job.num), "FAILED", redact(f"(no run: {reason})"),
                redact(" ".join(config.hydra.overrides.task))))

    def _show_table(self) -> dict[str, Any] | None:
        if self.run_id is None:
            return None
        try:
            objective, rows = show_grid_table(self.uri, self.run_id, self.directory)
        except mlflow.exceptions.MlflowException as error:
            log.warning("sweep: no comparison table (%s)", describe(error))
            return None
        return sweep_result(self.run_id, objective, rows, sweep_dir=self.directory)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.run_id:
            json_output.emit(self._show_table())
            self.restore_signals()
            end_run_as(self.uri, self.run_id, "FINISHED")
            self.run_id = None
