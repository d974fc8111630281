"""A Hydra launcher for the tests that runs each job as Ray, SLURM or another machine would: in a
new Python process, in another folder, handed only the job's composed config (pickled), with no
FXML_ or MLFLOW_ variable in its environment except the data folder's (``FXML_DATA_DIR``).

Select it with ``hydra.launcher._target_=hydra_plugins.fxml_isolated_launcher.IsolatedLauncher``
and ``tests/plugins`` on ``PYTHONPATH``; the job's folder is ``$FXML_TEST_ELSEWHERE``.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cloudpickle
from hydra.core.utils import JobReturn, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

RUN_ONE = "import sys; from hydra_plugins.fxml_isolated_launcher import main; main(*sys.argv[1:])"
KEPT = ("PATH", "HOME", "LANG", "PYTHONPATH", "FXML_DATA_DIR")


class IsolatedLauncher(Launcher):
    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        results = []
        for offset, overrides in enumerate(job_overrides):
            number = initial_job_idx + offset
            job = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(job):
                job.hydra.job.id = f"{job.hydra.job.name}_{number}"
                job.hydra.job.num = number
            results.append(_in_new_process((self.hydra_context, job, self.task_function)))
        return results


def _in_new_process(payload: Any) -> JobReturn:
    environment = {name: os.environ[name] for name in KEPT if name in os.environ}
    with tempfile.TemporaryDirectory() as folder:
        given, returned = Path(folder) / "job.pkl", Path(folder) / "return.pkl"
        # as Ray does: Hydra's config store holds classes made at run time
        given.write_bytes(cloudpickle.dumps(payload))
        subprocess.run([sys.executable, "-c", RUN_ONE, str(given), str(returned)],
                       cwd=os.environ["FXML_TEST_ELSEWHERE"], env=environment, check=True)
        return pickle.loads(returned.read_bytes())


def main(given: str, returned: str) -> None:
    hydra_context, job, task_function = pickle.loads(Path(given).read_bytes())
    setup_globals()
    result = run_job(hydra_context=hydra_context, config=job, task_function=task_function,
                     job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    Path(returned).write_bytes(cloudpickle.dumps(result))
