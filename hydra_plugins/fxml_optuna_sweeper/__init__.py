"""fxml's Optuna sweeper for Hydra (``hydra/sweeper=fxml_optuna``), on Optuna 4+."""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class SamplerConf:
    name: str = "tpe"  # tpe | random | cmaes | gp | grid
    seed: int | None = None  # null: Optuna's own; else mixed with the study and trial number
    n_startup_trials: int = 10


@dataclass
class PrunerConf:
    name: str = "median"  # median | percentile | hyperband | threshold | none
    n_startup_trials: int = 5
    n_warmup_steps: int = 10
    percentile: float = 25.0
    lower: float = 0.0  # threshold pruner: the validation CORR floor


@dataclass
class FxmlOptunaSweeperConf:
    _target_: str = "hydra_plugins.fxml_optuna_sweeper.optuna_sweeper.FxmlOptunaSweeper"
    # null: the search preset plus a fingerprint of every setting not searched, so the same
    # command resumes its study and a changed one starts its own
    study_name: str | None = None
    storage: str | None = None  # any SQLAlchemy URL; null: sqlite:///mlruns/optuna.db
    direction: str = "maximize"
    n_trials: int = 20
    n_jobs: int = 1  # trials launched together (in parallel with a parallel launcher)
    sampler: SamplerConf = field(default_factory=SamplerConf)
    pruner: PrunerConf = field(default_factory=PrunerConf)
    # a logged metric, or a weighted sum such as "0.5*corr_mean + 2*mmc_mean"
    objective: str = "corr_sharpe"
    params: dict[str, Any] | None = None
    heartbeat_interval: int = 10
    grace_period: int = 30
    # a database that goes away mid-sweep (a restart) is waited for this long, then one line
    storage_retry_seconds: float = 120.0
    # stop the sweep once this many of its trials have failed (a lost job, an error); null: run
    # on to n_trials whatever fails
    max_failures: int | None = None


ConfigStore.instance().store(group="hydra/sweeper", name="fxml_optuna", node=FxmlOptunaSweeperConf,
                             provider="fxml")
