"""fxml's Hydra launcher on a Ray cluster (``hydra/launcher=ray``): each job of a multirun (a grid
job, a search trial) runs as a Ray task on the cluster's workers. ``pip install "fxml[ray]"``."""

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore

# what a job may need from the environment of the command that launched it: credentials of the
# stores and of Numerai, and the data folder (a config's ${oc.env:...} reads the job's environment)
FORWARDED = ["MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
             "PGPASSWORD", "NUMERAI_PUBLIC_ID", "NUMERAI_SECRET_KEY", "FXML_DATA_DIR"]


@dataclass
class FxmlRayLauncherConf:
    """Where the jobs run and what each one reserves there."""

    _target_: str = "hydra_plugins.fxml_ray_launcher.ray_launcher.FxmlRayLauncher"
    # host:port of the cluster's head (or ray://host:10001); null: $RAY_ADDRESS; "local": a Ray
    # started on this machine for the command alone
    address: str | None = None
    num_cpus: float = 1  # cores each job reserves (Ray sets the job's OMP_NUM_THREADS to it)
    num_gpus: float = 0  # GPUs each job reserves
    # 0: a job whose worker died FAILs; a retry would leave the dead attempt's MLflow run RUNNING,
    # and a search runs further trials up to n_trials anyway
    max_retries: int = 0
    # environment variables each job sees as the command does: their values are read where the
    # command runs and passed in memory; a name the command lacks is unset for the job
    env: list[str] = field(default_factory=lambda: list(FORWARDED))


ConfigStore.instance().store(group="hydra/launcher", name="ray", node=FxmlRayLauncherConf, provider="fxml")
