"""fxml's Optuna sweeper for Hydra (``hydra/sweeper=fxml_optuna``), on Optuna 4+."""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class SamplerConf:
    name: str = "tpe"  # tpe | random | cmaes | gp | grid
    seed: int | None = None
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
    study_name: str = "fxml"
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


ConfigStore.instance().store(group="hydra/sweeper", name="fxml_optuna", node=FxmlOptunaSweeperConf,
                             provider="fxml")
