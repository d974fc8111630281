"""fxml's Optuna search, the sweeper behind ``hydra/sweeper=fxml_optuna`` (see ``optuna_sweeper``),
on Optuna's ask-and-tell API.

Each trial is an ordinary ``fxml.run`` job launched through whatever Hydra launcher is configured
(basic, joblib, submitit, ray). Everything the job needs to find its sweep travels in its own
config, as overrides: the parent MLflow run, the tracking URI, the study's storage and name, the
trial number and the objective (``sweep.*``, ``tracking.uri``; a password in a URL is masked in
every file Hydra writes and every line logged). The job reattaches to its trial to report
intermediate scores and be pruned. Studies live in a database, so re-running a command resumes its
study and several workers can share one.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import random
import signal
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import optuna
import optuna.distributions as dist
import sqlalchemy.exc
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.exceptions import ExperimentalWarning
from optuna.study import StudyDirection
from optuna.trial import TrialState

from fxml.cli import fail
from fxml.console import JobRow, comparison_table, json_output, print_wide, quiet_dependencies
from fxml.errors import FxmlError, already_exists, describe
from fxml.sweeps.objective import Objective
from fxml.sweeps.parent import (
    STUDY_TAG,
    Best,
    configured_store,
    end_run_as,
    job_error,
    job_overrides,
    job_runs,
    open_parent_run,
    quoted,
    read_run,
    record_best,
    sweep_result,
    trial_rows,
    without_keys,
)
from fxml.sweeps.pruning import PRUNER_ATTR, make_pruner
from fxml.sweeps.retry import with_retries
from fxml.sweeps.space import distribution, grid, parse_overrides
from fxml.sweeps.stopping import Terminated, how_stopped, watch_stop_signals
from fxml.sweeps.study import (
    FINGERPRINT_ATTR,
    SETTINGS_ATTR,
    check_settings,
    default_study_name,
    experiment_settings,
    fingerprint,
)
from fxml.tracking.mlflow_run import TRIAL_TAG, redact, tracking_uri
from fxml.tracking.stores import creation_lock

log = logging.getLogger(__name__)
T = TypeVar("T")
DEFAULT_STORAGE = "sqlite:///mlruns/optuna.db"
GROUPS = ("data", "model", "trainer", "memory", "scorer")
TAKEN = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
TERMINATED = 143
OPEN_ATTEMPTS = 5
# what the sweep sets on each job itself (a user's value would point the job elsewhere)
JOB_KEYS = {"sweep.parent_run_id", "sweep.study_name", "sweep.storage", "sweep.trial_number",
            "sweep.objective", "sweep.storage_retry_seconds"}
STORAGE_ERRORS = (optuna.exceptions.OptunaError, ValueError, ImportError, OSError,
                  sqlalchemy.exc.SQLAlchemyError)




class OptunaSearch(Sweeper):
    def __init__(self, study_name: str | None, storage: str | None, direction: str, n_trials: int,
                 n_jobs: int, sampler: DictConfig, pruner: DictConfig, objective: str,
                 params: DictConfig | None, heartbeat_interval: int, grace_period: int,
                 storage_retry_seconds: float, max_failures: int | None = None) -> None:
        super().__init__()
        # here, not at import: Hydra imports plugins inside warnings.catch_warnings()
        warnings.filterwarnings("ignore", category=ExperimentalWarning)
        # heartbeats are meant for Study.optimize; this sweeper records them itself (_Heartbeat)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        # the sweeper says itself which study it opened or resumed
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        quiet_dependencies()
        if direction not in ("maximize", "minimize"):
            raise FxmlError(f"hydra.sweeper.direction must be maximize or minimize (got {direction!r})")
        if n_trials < 1 or n_jobs < 1:
            raise FxmlError("hydra.sweeper.n_trials and hydra.sweeper.n_jobs must be >= 1")
        # the study in use (self.study_name) is named when it is opened (_study)
        self.requested_study_name, self.direction = study_name, direction
        self.storage_url = storage or DEFAULT_STORAGE
        self.n_trials, self.n_jobs = n_trials, n_jobs
        self.sampler_cfg, self.pruner_cfg = sampler, pruner
        self.objective = Objective.parse(objective)
        self.objective_text = objective
        self.params = {str(k): str(v) for k, v in (params or {}).items()}
        self.heartbeat = (heartbeat_interval, grace_period)
        self.retry_seconds = float(storage_retry_seconds)
        if max_failures is not None and max_failures < 1:
            raise FxmlError(f"hydra.sweeper.max_failures must be >= 1 or null (got {max_failures})")
        self.max_failures = max_failures
        self.failures = 0
        self.batches_lost_unstarted = 0
        self.stopped_early: str | None = None
        self.job_index = 0
        self.parent_id: str | None = None
        self.storage_reference: str | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config = config
        self.uri = tracking_uri(config.tracking.uri)
        sweeper = OmegaConf.to_container(config.hydra.sweeper, resolve=False)
        written = sweeper.get("storage") if isinstance(sweeper, dict) else None
        self.storage_reference = written if isinstance(written, str) and "${" in written else None
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    @property
    def _config(self) -> DictConfig:
        assert self.config is not None, "Hydra calls the sweeper's setup() before sweep()"
        return self.config

    @property
    def _launcher(self) -> Launcher:
        assert self.launcher is not None, "Hydra calls the sweeper's setup() before sweep()"
        return self.launcher

    # --- the search ---------------------------------------------------------------------------

    def sweep(self, arguments: list[str]) -> Any:
        fixed, space = self._split(arguments)
        study = self._study(space)
        if self.sampler_cfg.name == "grid":
            points = math.prod(len(values) for values in grid(space).values())
            if self.n_trials > points:
                log.info("sweep: the grid has %d points; running %d trials, not %d", points, points,
                         self.n_trials)
                self.n_trials = points
        sweep_dir = Path(self._config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / "multirun.yaml").write_text(redact(OmegaConf.to_yaml(self._config)))
        self.parent_id = open_parent_run(
            self.uri, self._config.tracking.experiment,
            f"optuna:{self.study_name}@{redact(self.storage_url)}", f"study {self.study_name}",
            {STUDY_TAG: self.study_name, "objective": self.objective.label})
        log.info("sweep: study %s in %s, %s %s, %d trials, %d at a time; parent MLflow run %s",
                 self.study_name, redact(self.storage_url), self.direction, self.objective.label,
                 self.n_trials, self.n_jobs, self.parent_id)
        self.stops: list[int] = []
        # the command's entry point may turn SIGTERM into its own one-line exit (130/143)
        entry_point_handles_sigterm = callable(signal.getsignal(signal.SIGTERM))
        try:
            restore = watch_stop_signals(self.stops)
            try:
                self._search(study, space, fixed)
                self._finish(study, fixed)
                if self.stopped_early:
                    raise FxmlError(f"the sweep stopped early: {self.stopped_early}")
            finally:
                restore()
        except BaseException as error:
            how = self._how(error)
            if how is None:
                self._end_parent("FAILED", redact(f"{type(error).__name__}: {error}"))
                raise
            self._end_parent("KILLED", how)
            if how == "terminated" and not entry_point_handles_sigterm:
                fail("interrupted", "by SIGTERM; the sweep's trials and MLflow runs are marked KILLED",
                     TERMINATED)
            if not isinstance(error, KeyboardInterrupt):  # e.g. Lightning's SystemExit(1)
                raise (Terminated() if how == "terminated" else KeyboardInterrupt()) from None
            raise
        end_run_as(self.uri, self.parent_id, "FINISHED")
        return study

    def _end_parent(self, status: str, reason: str) -> None:
        """Close the parent as the sweep ends on an error or a signal, which stays the error
        the user sees even when the tracking store is away too."""
        assert self.parent_id is not None, "the parent run is opened before the search"
        try:
            end_run_as(self.uri, self.parent_id, status, reason)
        except FxmlError as closing:
            log.warning("sweep: the parent run %s could not be closed (%s)", self.parent_id, closing)

    def _search(self, study: optuna.Study, space: dict[str, Any], fixed: list[str]) -> None:
        while (remaining := self.n_trials - self._taken(study)) > 0:
            trials = [self._ask(study, space) for _ in range(min(self.n_jobs, remaining))]
            batch = [[*without_keys(fixed, JOB_KEYS), *self._trial_overrides(t)] for t in trials]
            try:
                with _Heartbeat(self.storage, self.study_id, trials, self.heartbeat[0]):
                    results = self._launcher.launch(batch, initial_job_idx=self.job_index)
            except Exception as error:
                if self._how(error) or isinstance(error, FxmlError):
                    self._end_batch(study, trials, fixed, error)
                    raise
                # the launcher lost the batch (a joblib worker killed, a job cancelled): each
                # trial is judged by its own run, and the study goes on
                self._lost_batch(study, trials, error)
            except BaseException as error:
                self._end_batch(study, trials, fixed, error)
                raise
            else:
                for trial, result in zip(trials, results, strict=True):
                    self._tell(study, trial, result)
            self.job_index += len(batch)
            self._record_best(study, fixed)
            if self.max_failures is not None and self.failures >= self.max_failures:
                self.stopped_early = (f"{self.failures} trial(s) failed in this sweep "
                                      f"(hydra.sweeper.max_failures={self.max_failures})")
                log.warning("sweep: stopping: %s", self.stopped_early)
                return

    def _end_batch(self, study: optuna.Study, trials: list[optuna.Trial], fixed: list[str],
                   error: BaseException) -> None:
        """The sweep ends (a stop signal, or an error of its own) while a batch runs."""
        how = self._how(error)
        self._stop_trials(study, trials, how or f"the sweep failed: {type(error).__name__}",
                          "KILLED" if how else "FAILED")
        # a trial of the batch may have finished first: the parent names it if it is best
        with contextlib.suppress(FxmlError):
            self._record_best(study, fixed)

    def _lost_batch(self, study: optuna.Study, trials: list[optuna.Trial], error: Exception) -> None:
        """A batch whose launcher failed: a trial whose run finished keeps its value; the others
        FAIL with the reason, their runs FAILED. When no job of the batch even started, the
        launcher itself cannot run jobs: one line, not a study of failed trials."""
        # launchers explain a lost worker at length (joblib: the possible causes): its first sentence
        reason = f"its job was lost: {redact(describe(error)).split('. ')[0]}"
        log.warning("sweep: the launcher lost a batch of %d trial(s): %s", len(trials), describe(error))
        started = [self._trial_run_id(study, trial) for trial in trials]
        self.batches_lost_unstarted = 0 if any(started) else self.batches_lost_unstarted + 1
        for trial, run_id in zip(trials, started, strict=True):
            if self._keep_finished(study, trial, run_id):
                continue
            self._fail(study, trial, reason, run_id)
        if self.batches_lost_unstarted >= 2:
            launcher = str(self._config.hydra.launcher._target_).rsplit(".", 1)[-1]
            raise FxmlError(f"the launcher ({launcher}) started no job of two batches in a row: "
                            f"{describe(error)}")

    def _trial_run_id(self, study: optuna.Study, trial: optuna.Trial) -> str | None:
        """The MLflow run of a trial's job: recorded on the trial once it trains, and found among
        the parent's children from the moment it starts (a job killed while it loads data)."""
        run_id = self._on_storage(f"read trial {trial.number}",
                                  lambda: _stored_user_attrs(study, trial.number)).get("mlflow_run_id")
        if run_id or self.parent_id is None:
            return run_id
        runs = [run for run in job_runs(self.uri, self.parent_id)
                if run.data.tags.get(TRIAL_TAG) == str(trial.number)]
        return runs[0].info.run_id if runs else None

    def _how(self, error: BaseException) -> str | None:
        """``interrupted`` or ``terminated`` when a stop signal ended the sweep (a library may have
        turned it into another exception, as Lightning turns Ctrl-C into SystemExit); else None."""
        if isinstance(error, KeyboardInterrupt):
            return how_stopped(error)
        if self.stops:
            return "terminated" if self.stops[0] == signal.SIGTERM else "interrupted"
        return None

    def _split(self, arguments: list[str]) -> tuple[list[str], dict[str, Any]]:
        """Sweep overrides (config ``params`` and the command line) form the space; the rest
        is passed to every trial unchanged."""
        lines = [f"{k}={v}" for k, v in self.params.items()] + list(arguments)
        fixed: list[str] = []
        space: dict[str, dist.BaseDistribution] = {}
        for override in parse_overrides(lines):
            if override.is_sweep_override():
                space[override.get_key_element()] = distribution(override)
            else:
                assert override.input_line is not None, "a parsed override keeps its line"
                fixed.append(override.input_line)
        if not space:
            raise FxmlError("the search space is empty: set hydra.sweeper.params or give key=interval(a,b)")
        return fixed, space

    # --- the study ----------------------------------------------------------------------------

    def _study(self, space: dict[str, Any]) -> optuna.Study:
        """Open (or create) the study of this experiment; a named study made for other settings
        is refused, a bad storage is one line."""
        settings = experiment_settings(self._config, space, self.objective.label, self.direction)
        if self.requested_study_name:
            self.study_name = self.requested_study_name
        else:
            choices = self._config.hydra.runtime.choices
            preset = choices.get("hparams_search") or choices.get("model") or "search"
            self.study_name = default_study_name(preset, settings)
        where = f"Optuna study {self.study_name} at {redact(self.storage_url)}"
        for attempt in range(OPEN_ATTEMPTS):
            try:
                study, stored = self._open(space, settings)
                break
            except STORAGE_ERRORS as error:
                # workers opening one new study together: one creates it, the others load it
                if attempt + 1 < OPEN_ATTEMPTS and _is_a_race(error):
                    time.sleep(random.uniform(0.1, 0.5))
                    continue
                raise FxmlError(f"cannot open {where}: {describe(error)}") from None
        if study.direction.name.lower() != self.direction:
            raise FxmlError(f"study {self.study_name} exists with direction "
                            f"{study.direction.name.lower()}, not {self.direction}")
        check_settings(self.study_name, stored, settings)
        done = len(study.get_trials(deepcopy=False))
        if done:
            log.info("sweep: resuming study %s with %d trial(s) already recorded", self.study_name, done)
        return study

    def _open(self, space: dict[str, Any], settings: dict[str, str]) -> tuple[optuna.Study, Any]:
        self.storage = _open_storage(self.storage_url, *self.heartbeat, self._trial_went_stale)
        study = optuna.create_study(study_name=self.study_name, storage=self.storage,
                                    sampler=self._sampler(space),
                                    pruner=make_pruner(self.pruner_cfg, self.direction),
                                    direction=StudyDirection[self.direction.upper()], load_if_exists=True)
        self.study_id = self.storage.get_study_id_from_name(self.study_name)
        # each job builds the pruner from here: a study loaded from storage has none
        study.set_user_attr(PRUNER_ATTR, OmegaConf.to_container(self.pruner_cfg, resolve=True))
        stored = study.user_attrs.get(SETTINGS_ATTR)
        if stored is None:
            study.set_user_attr(SETTINGS_ATTR, settings)
            study.set_user_attr(FINGERPRINT_ATTR, fingerprint(settings))
        return study, stored

    def _taken(self, study: optuna.Study) -> int:
        def count() -> int:
            optuna.storages.fail_stale_trials(study)
            return len(study.get_trials(deepcopy=False, states=TAKEN))

        return self._on_storage("count the study's trials", count)

    def _ask(self, study: optuna.Study, space: dict[str, dist.BaseDistribution]) -> optuna.Trial:
        """A new trial, its parameters drawn by a sampler seeded from the study and the trial's
        number when a seed is set, so workers and resumed studies never replay one sequence."""
        trial = self._on_storage("start a trial", study.ask)
        if self.sampler_cfg.seed is not None and self.sampler_cfg.name != "grid":
            study.sampler = self._sampler(space, trial.number)
        for name, distribution_ in space.items():
            self._on_storage(f"sample {name}", partial(_suggest, trial, name, distribution_))
        return trial

    def _trial_overrides(self, trial: optuna.Trial) -> list[str]:
        """The trial's parameters, and where its job belongs: all a job handed only its config
        needs (it names its run after the trial: ``lgbm-small-target-3f9a-trial4``)."""
        values = [f"{key}={_override_value(value)}" for key, value in trial.params.items()]
        # a storage URL that reads its password from the environment reaches the job as written
        storage = (f"sweep.storage={quoted(self.storage_reference, resolved_by_the_job=True)}"
                   if self.storage_reference else f"sweep.storage={quoted(self.storage_url)}")
        return [*values, storage, *job_overrides({
            "sweep.parent_run_id": self.parent_id,
            "sweep.study_name": self.study_name, "sweep.trial_number": trial.number,
            "sweep.objective": self.objective_text, "sweep.storage_retry_seconds": self.retry_seconds,
            "tracking.uri": configured_store(self._config, self.uri)})]

    def _tell(self, study: optuna.Study, trial: optuna.Trial, result: JobReturn) -> None:
        value, state, note = None, TrialState.FAIL, None
        if result.status == JobStatus.COMPLETED:
            metrics = result.return_value
            self._set_attr(trial, "mlflow_run_id", metrics.get("mlflow_run_id"))
            try:
                value, state = self.objective.value(metrics), TrialState.COMPLETE
            except FxmlError as problem:
                note = str(problem)
        elif isinstance(error := job_error(result), optuna.TrialPruned):
            state, note = TrialState.PRUNED, str(error)
        else:
            # a job lost by its launcher (a dead Ray worker) may have finished its run first
            run_id = self._trial_run_id(study, trial)
            if not self._keep_finished(study, trial, run_id):
                self._fail(study, trial, describe(error), run_id)
            return
        if state == TrialState.FAIL:
            self._fail(study, trial, note or "", None)
            return
        self._on_storage(f"record trial {trial.number}",
                         lambda: study.tell(trial, value, state=state, skip_if_finished=True))
        if state == TrialState.COMPLETE:
            log.info("sweep: trial %d %s = %.6f", trial.number, self.objective.label, value)
        else:
            log.info("sweep: trial %d %s", trial.number, note)

    def _fail(self, study: optuna.Study, trial: optuna.Trial, note: str, run_id: str | None) -> None:
        """The trial FAILs with its reason; a run its job left open (a killed worker's) is
        FAILED with the same reason."""
        note = redact(note)[:2000]
        self.failures += 1
        self._set_attr(trial, "error", note)
        self._on_storage(f"record trial {trial.number}",
                         lambda: study.tell(trial, state=TrialState.FAIL, skip_if_finished=True))
        log.warning("sweep: trial %d failed: %s", trial.number, note)
        if run_id and read_run(self.uri, run_id).info.status == "RUNNING":
            end_run_as(self.uri, run_id, "FAILED", note)

    def _on_storage(self, doing: str, call: Callable[[], T]) -> T:
        """``call()`` on the study's storage, tried again while it is away."""
        return with_retries(self.storage_url, doing, call, self.retry_seconds)

    def _set_attr(self, trial: optuna.Trial, key: str, value: Any) -> None:
        self._on_storage(f"record {key} of trial {trial.number}",
                         lambda: trial.set_user_attr(key, value))

    def _stop_trials(self, study: optuna.Study, trials: list[optuna.Trial], how: str,
                     status: str) -> None:
        """The batch that was running when the sweep was stopped or failed: a trial whose job had
        finished its run (a parallel launcher's, before the stop) keeps its value; the others
        FAIL in Optuna, and are KILLED (or FAILED) in MLflow where a job left its run open."""
        for trial in trials:
            run_id = self._trial_run_id(study, trial)
            if self._keep_finished(study, trial, run_id):
                continue
            self._set_attr(trial, "error", how)
            self._on_storage(f"record trial {trial.number}", partial(
                study.tell, trial, state=TrialState.FAIL, skip_if_finished=True))
            if not run_id:
                continue
            # a library may have turned the interruption into an error (Lightning: SystemExit(1)),
            # so after a stop signal a FAILED trial run was in fact killed
            ended = read_run(self.uri, run_id).info.status
            if ended == "RUNNING" or (status == "KILLED" and ended == "FAILED"):
                end_run_as(self.uri, run_id, status, how)

    def _keep_finished(self, study: optuna.Study, trial: optuna.Trial, run_id: str | None) -> bool:
        """Record a trial whose run FINISHED with the objective's metrics as COMPLETE."""
        if run_id is None:
            return False
        run = read_run(self.uri, run_id)
        if run.info.status != "FINISHED":
            return False
        try:
            value = self.objective.value(run.data.metrics)
        except FxmlError:
            return False
        self._on_storage(f"record trial {trial.number}", lambda: study.tell(
            trial, value, state=TrialState.COMPLETE, skip_if_finished=True))
        log.info("sweep: trial %d had finished before the stop: %s = %.6f", trial.number,
                 self.objective.label, value)
        return True

    def _trial_went_stale(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Optuna failed a trial whose worker stopped beating: its MLflow run fails too."""
        run_id = trial.user_attrs.get("mlflow_run_id")
        log.warning("sweep: trial %d stopped sending heartbeats (its worker died): marked failed",
                    trial.number)
        if not run_id:
            return
        if read_run(self.uri, run_id).info.status == "RUNNING":
            end_run_as(self.uri, run_id, "FAILED", "its worker died (no Optuna heartbeat)")

    # --- samplers ---------------------------------------------------------------------------

    def _sampler(self, space: dict[str, Any], trial_number: int | None = None) -> optuna.samplers.BaseSampler:
        name, seed = self.sampler_cfg.name, self.sampler_cfg.seed
        if seed is not None:
            # a grid point is chosen when the trial starts: each worker process draws its own
            seed = _derived_seed(seed, self.study_name, os.getpid() if trial_number is None else trial_number)
        startup = self.sampler_cfg.n_startup_trials
        samplers = {
            "tpe": lambda: optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup),
            "random": lambda: optuna.samplers.RandomSampler(seed=seed),
            "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=startup),
            "gp": lambda: optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup),
            "grid": lambda: _AskTellGridSampler(grid(space), seed=seed),
        }
        if name not in samplers:
            raise FxmlError(f"hydra.sweeper.sampler.name must be one of {', '.join(samplers)} (got {name!r})")
        return samplers[name]()

    # --- the best trial -----------------------------------------------------------------------

    def _best(self, study: optuna.Study, fixed: Sequence[str]) -> Best | None:
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not completed:
            return None
        best = study.best_trial
        assert best.value is not None, "a completed trial has a value"
        choices = self._config.hydra.runtime.choices
        groups = [f"{g}={choices[g]}" for g in GROUPS if g in choices]
        # the search's own settings would start another search: leave them out
        fixed = [f for f in fixed if not f.lstrip("+~").startswith(("hparams_search", "hydra.", "sweep."))]
        explicit = {line.split("=", 1)[0].lstrip("+~") for line in fixed}
        line = " ".join(["python -m fxml.run", *[g for g in groups if g.split("=")[0] not in explicit],
                         *fixed, *(f"{k}={_override_value(v)}" for k, v in best.params.items())])
        return Best(best.number, float(best.value), dict(best.params),
                    best.user_attrs.get("mlflow_run_id"), redact(line))

    def _record_best(self, study: optuna.Study, fixed: Sequence[str]) -> Best | None:
        """Write the study's best (whichever worker found it) on the parent run."""
        best = self._on_storage("read the best trial", lambda: self._best(study, fixed))
        if best is not None and self.parent_id:
            try:
                record_best(self.uri, self.parent_id, best, self.objective.label, self.study_name)
            except mlflow.exceptions.MlflowException as error:
                log.warning("sweep: could not record the best trial on the parent run: %s",
                            describe(error))
        return best

    def _show_table(self, study: optuna.Study) -> list[JobRow]:
        """The study's one comparison table: a row per trial, the objective first."""
        assert self.parent_id is not None, "the parent run is opened before the search"
        try:
            rows = trial_rows(job_runs(self.uri, self.parent_id),
                              self._on_storage("read the trials", lambda: study.get_trials(deepcopy=False)))
        except mlflow.exceptions.MlflowException as error:
            log.warning("sweep: no comparison table (%s)", describe(error))
            return []
        print_wide(comparison_table(rows, f"Study {self.study_name}: {len(rows)} trial(s), "
                                             f"{self.direction} {self.objective.label}",
                                       self.objective.label, job="trial"))
        return rows

    def _finish(self, study: optuna.Study, fixed: Sequence[str]) -> None:
        rows = self._show_table(study)
        best = self._record_best(study, fixed)
        if best is None:
            trials = self._on_storage("read the trials", lambda: study.get_trials(deepcopy=False))
            counts = {s: sum(t.state == s for t in trials) for s in (TrialState.FAIL, TrialState.PRUNED)}
            errors = [t.user_attrs["error"] for t in trials if t.user_attrs.get("error")]
            first = f"; the first error: {errors[0]}" if errors else ""
            raise FxmlError(f"no trial of study {self.study_name} succeeded ({counts[TrialState.FAIL]} "
                            f"failed, {counts[TrialState.PRUNED]} pruned){first}")
        log.info("sweep: best trial %d, %s = %.6f", best.number, self.objective.label, best.value)
        print(f"Best trial {best.number}: {self.objective.label} = {best.value:.6f} "
              f"(MLflow run {best.run_id})\nRun it: {best.command}\n"
              f"Promote it: python -m fxml.promote sweep={self.study_name} name=<model name> "
              "alias=champion")
        self._on_storage("plot the study",
                         lambda: _log_study_plots(mlflow.MlflowClient(self.uri), self.parent_id, study))
        reverse = self.direction == "maximize"
        rows.sort(key=lambda row: (row.objective is None, -(row.objective or 0) if reverse
                                   else (row.objective or 0)))
        assert self.parent_id is not None
        json_output.emit({**sweep_result(self.parent_id, self.objective.label, rows, study=self.study_name),
                          "best": {"trial": best.number, "value": best.value, "params": best.params,
                                   "run_id": best.run_id, "command": best.command}})


def _open_storage(url: str, interval: int, grace: int, on_stale: Any) -> optuna.storages.RDBStorage:
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    # a server database may restart: test each pooled connection before using it
    engine = {} if url.startswith("sqlite") else {"pool_pre_ping": True}
    # workers started together would each create Optuna's tables in a new SQLite file ("table
    # study_directions already exists"): one at a time, as for the MLflow store. No folder is
    # created for an absolute path, so that a wrong one still fails as one line; a server's
    # connection errors stay those of opening the study
    lock = creation_lock(url, create_folder=False) if url.startswith("sqlite") else nullcontext()
    with lock:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=interval,
                                          grace_period=grace, heartbeat_stale_trial_callback=on_stale)


def _is_a_race(error: BaseException) -> bool:
    """Another worker created the study (or its tables) between our look and our write."""
    return isinstance(error, optuna.exceptions.DuplicatedStudyError) or already_exists(error)


def _suggest(trial: optuna.Trial, name: str, d: dist.BaseDistribution) -> Any:
    if isinstance(d, dist.CategoricalDistribution):
        return trial.suggest_categorical(name, d.choices)
    if isinstance(d, dist.IntDistribution):
        return trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
    if isinstance(d, dist.FloatDistribution):
        return trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)
    raise FxmlError(f"search space {name}: unsupported distribution {d}")


def _derived_seed(seed: int, study_name: str, number: int) -> int:
    digest = hashlib.sha256(f"{seed}:{study_name}:{number}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _stored_user_attrs(study: optuna.Study, number: int) -> dict[str, Any]:
    found = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    return dict(found[0].user_attrs) if found else {}


class _AskTellGridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler stops the study from inside ``optimize`` once the grid is done,
    which ask-and-tell cannot do; the sweep stops itself after one trial per grid point."""

    def after_trial(self, study: optuna.Study, trial: Any, state: Any, values: Any) -> None:
        pass


class _Heartbeat:
    """Keeps this worker's trials alive in the storage while their jobs run, so other workers
    do not take them for crashed ones; a killed worker stops beating and its trials fail."""

    def __init__(self, storage: optuna.storages.RDBStorage, study_id: int,
                 trials: list[optuna.Trial], interval: int) -> None:
        self.storage, self.interval = storage, interval
        self.trial_ids = [storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
                          for t in trials]
        self.stop = threading.Event()

    def __enter__(self) -> _Heartbeat:
        self.thread = threading.Thread(target=self._beat, daemon=True)
        self.thread.start()
        return self

    def _beat(self) -> None:
        while True:
            for trial_id in self.trial_ids:
                try:
                    self.storage.record_heartbeat(trial_id)
                except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as error:
                    # the database is away for a moment: beat again at the next interval
                    log.warning("sweep: heartbeat not recorded (%s)", describe(error))
            if self.stop.wait(self.interval):
                return

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _log_study_plots(client: mlflow.MlflowClient, run_id: str | None, study: optuna.Study) -> None:
    if run_id is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from optuna.visualization import matplotlib as plots

    for name, draw in (("optimization_history", plots.plot_optimization_history),
                       ("param_importances", plots.plot_param_importances)):
        try:
            figure = draw(study).figure
        except (ValueError, RuntimeError) as error:
            log.info("sweep: no %s plot (%s)", name, str(error).splitlines()[0])
            continue
        # matplotlib types an Axes' figure as Figure | SubFigure; Optuna draws on a new Figure
        assert isinstance(figure, Figure), "Optuna draws each plot on a figure of its own"
        figure.set_size_inches(9, 5)
        figure.tight_layout()
        client.log_figure(run_id, figure, f"optuna/{name}.png")


def _override_value(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)
