"""A Hydra sweeper on Optuna's ask-and-tell API.

Each trial is an ordinary ``fxml.run`` job launched through whatever Hydra launcher is configured
(basic, joblib, submitit, ray). The job gets ``sweep.study_name``, ``sweep.storage`` and
``sweep.trial_id`` overrides, so the training code reattaches to its trial to report intermediate
scores and be pruned. Studies live in a database, so re-running a command resumes its study and
several workers can share one.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow
import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.exceptions import ExperimentalWarning

from fxml.errors import FxmlError
from fxml.sweeps.objective import Objective
from fxml.sweeps.parent import PARENT_ENV
from fxml.sweeps.pruning import make_pruner
from fxml.sweeps.space import distribution, grid, parse_overrides
from fxml.tracking.mlflow_run import redact, tracking_uri

log = logging.getLogger(__name__)
DEFAULT_STORAGE = "sqlite:///mlruns/optuna.db"
GROUPS = ("data", "model", "trainer", "memory", "scorer")
FINISHED_OR_RUNNING = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                       optuna.trial.TrialState.FAIL, optuna.trial.TrialState.RUNNING)


class FxmlOptunaSweeper(Sweeper):
    def __init__(self, study_name: str, storage: str | None, direction: str, n_trials: int,
                 n_jobs: int, sampler: DictConfig, pruner: DictConfig, objective: str,
                 params: DictConfig | None, heartbeat_interval: int, grace_period: int) -> None:
        super().__init__()
        # here, not at import: Hydra imports plugins inside warnings.catch_warnings()
        warnings.filterwarnings("ignore", category=ExperimentalWarning)
        # heartbeats are meant for Study.optimize; this sweeper records them itself (_Heartbeat)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        if direction not in ("maximize", "minimize"):
            raise FxmlError(f"hydra.sweeper.direction must be maximize or minimize (got {direction!r})")
        if n_trials < 1 or n_jobs < 1:
            raise FxmlError("hydra.sweeper.n_trials and hydra.sweeper.n_jobs must be >= 1")
        self.study_name, self.direction = study_name, direction
        self.storage_url = storage or DEFAULT_STORAGE
        self.n_trials, self.n_jobs = n_trials, n_jobs
        self.sampler_cfg, self.pruner_cfg = sampler, pruner
        self.objective = Objective.parse(objective)
        self.params = {str(k): str(v) for k, v in (params or {}).items()}
        self.heartbeat = (heartbeat_interval, grace_period)
        self.job_index = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

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
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        log.info("sweep: study %s in %s, %s %s, %d trials, %d at a time", self.study_name,
                 redact(self.storage_url), self.direction, self.objective.label, self.n_trials,
                 self.n_jobs)
        while (remaining := self.n_trials - self._taken(study)) > 0:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, remaining))]
            batch = [[*fixed, *self._trial_overrides(t)] for t in trials]
            try:
                with _Heartbeat(study, trials, self.heartbeat[0]):
                    results = self.launcher.launch(batch, initial_job_idx=self.job_index)
            except KeyboardInterrupt:
                for trial in trials:
                    trial.set_user_attr("error", "interrupted")
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                raise
            self.job_index += len(batch)
            for trial, result in zip(trials, results, strict=True):
                self._tell(study, trial, result)
        self._report_best(study, fixed)
        return study

    def _split(self, arguments: list[str]) -> tuple[list[str], dict[str, Any]]:
        """Sweep overrides (config ``params`` and the command line) form the space; the rest
        is passed to every trial unchanged."""
        lines = [f"{k}={v}" for k, v in self.params.items()] + list(arguments)
        fixed, space = [], {}
        for override in parse_overrides(lines):
            if override.is_sweep_override():
                space[override.get_key_element()] = distribution(override)
            else:
                fixed.append(override.input_line)
        if not space:
            raise FxmlError("the search space is empty: set hydra.sweeper.params or give key=interval(a,b)")
        return fixed, space

    def _study(self, space: dict[str, Any]) -> optuna.Study:
        if self.storage_url.startswith("sqlite:///") and not self.storage_url.startswith("sqlite:////"):
            Path(self.storage_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        interval, grace = self.heartbeat
        try:
            storage = optuna.storages.RDBStorage(self.storage_url, heartbeat_interval=interval,
                                                 grace_period=grace)
            study = optuna.create_study(study_name=self.study_name, storage=storage,
                                        sampler=self._sampler(space),
                                        pruner=make_pruner(self.pruner_cfg, self.direction),
                                        direction=self.direction, load_if_exists=True)
        except (optuna.exceptions.OptunaError, ValueError, ImportError) as error:
            raise FxmlError(f"cannot open Optuna study {self.study_name} at "
                            f"{redact(self.storage_url)}: {str(error).splitlines()[0]}") from None
        if study.direction.name.lower() != self.direction:
            raise FxmlError(f"study {self.study_name} exists with direction "
                            f"{study.direction.name.lower()}, not {self.direction}")
        done = len(study.get_trials(deepcopy=False))
        if done:
            log.info("sweep: resuming study %s with %d trial(s) already recorded", self.study_name, done)
        return study

    def _taken(self, study: optuna.Study) -> int:
        optuna.storages.fail_stale_trials(study)
        return len(study.get_trials(deepcopy=False, states=FINISHED_OR_RUNNING))

    def _trial_overrides(self, trial: optuna.Trial) -> list[str]:
        values = [f"{key}={_override_value(value)}" for key, value in trial.params.items()]
        return [*values, f"sweep.study_name={self.study_name}", f"sweep.storage='{self.storage_url}'",
                f"sweep.trial_id={trial._trial_id}",
                f"tracking.run_name=trial-{trial.number}"]

    def _tell(self, study: optuna.Study, trial: optuna.Trial, result: JobReturn) -> None:
        if result.status == JobStatus.COMPLETED:
            metrics = result.return_value
            trial.set_user_attr("mlflow_run_id", metrics.get("mlflow_run_id"))
            try:
                value = self.objective.value(metrics)
            except FxmlError as error:
                trial.set_user_attr("error", str(error))
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                log.warning("sweep: trial %d failed: %s", trial.number, error)
                return
            study.tell(trial, value)
            log.info("sweep: trial %d %s = %.6f", trial.number, self.objective.label, value)
            return
        error = result._return_value
        if isinstance(error, optuna.TrialPruned):
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            log.info("sweep: trial %d %s", trial.number, error)
            return
        message = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        trial.set_user_attr("error", message[:2000])
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        log.warning("sweep: trial %d failed: %s", trial.number, message)

    # --- samplers and pruners -----------------------------------------------------------------

    def _sampler(self, space: dict[str, Any]) -> optuna.samplers.BaseSampler:
        name, seed = self.sampler_cfg.name, self.sampler_cfg.seed
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

    # --- the end of a search ------------------------------------------------------------------

    def _report_best(self, study: optuna.Study, fixed: Sequence[str]) -> None:
        completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if not completed:
            log.warning("sweep: no trial of study %s completed", self.study_name)
            return
        best = study.best_trial
        choices = self.config.hydra.runtime.choices
        groups = [f"{g}={choices[g]}" for g in GROUPS if g in choices]
        # the search's own settings would start another search: leave them out
        fixed = [f for f in fixed if not f.lstrip("+~").startswith(("hparams_search", "hydra.", "sweep."))]
        explicit = {line.split("=", 1)[0].lstrip("+~") for line in fixed}
        line = " ".join(["python -m fxml.run", *[g for g in groups if g.split("=")[0] not in explicit],
                         *fixed, *(f"{k}={_override_value(v)}" for k, v in best.params.items())])
        log.info("sweep: best trial %d, %s = %.6f", best.number, self.objective.label, best.value)
        print(f"Best trial {best.number}: {self.objective.label} = {best.value:.6f}\nRun it: {line}")
        run_id = os.environ.get(PARENT_ENV)
        if not run_id:
            return
        client = mlflow.MlflowClient(tracking_uri(self.config.tracking.uri))
        client.log_batch(run_id, params=[mlflow.entities.Param(f"best.{k}", str(v))
                                         for k, v in best.params.items()],
                         metrics=[mlflow.entities.Metric("best_value", best.value, 0, 0)],
                         tags=[mlflow.entities.RunTag("best_trial", str(best.number)),
                               mlflow.entities.RunTag("best_command", line[:5000]),
                               mlflow.entities.RunTag("objective", self.objective.label),
                               mlflow.entities.RunTag("optuna_study", self.study_name)])
        _log_study_plots(client, run_id, study)


class _AskTellGridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler stops the study from inside ``optimize`` once the grid is done,
    which ask-and-tell cannot do; the sweep stops itself after one trial per grid point."""

    def after_trial(self, study: optuna.Study, trial: Any, state: Any, values: Any) -> None:
        pass


class _Heartbeat:
    """Keeps this worker's trials alive in the storage while their jobs run, so other workers
    do not take them for crashed ones; a killed worker stops beating and its trials fail."""

    def __init__(self, study: optuna.Study, trials: list[optuna.Trial], interval: int) -> None:
        self.storage, self.trials, self.interval = study._storage, trials, interval
        self.stop = threading.Event()

    def __enter__(self) -> _Heartbeat:
        self.thread = threading.Thread(target=self._beat, daemon=True)
        self.thread.start()
        return self

    def _beat(self) -> None:
        while True:
            for trial in self.trials:
                self.storage.record_heartbeat(trial._trial_id)
            if self.stop.wait(self.interval):
                return

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _log_study_plots(client: mlflow.MlflowClient, run_id: str, study: optuna.Study) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization import matplotlib as plots

    for name, draw in (("optimization_history", plots.plot_optimization_history),
                       ("param_importances", plots.plot_param_importances)):
        try:
            figure = draw(study).figure
        except (ValueError, RuntimeError) as error:
            log.info("sweep: no %s plot (%s)", name, str(error).splitlines()[0])
            continue
        figure.set_size_inches(9, 5)
        figure.tight_layout()
        client.log_figure(run_id, figure, f"optuna/{name}.png")


def _override_value(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)
