"""Shared helpers: run fxml as a user would (a subprocess in a scratch folder), read MLflow back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
# A small synthetic release keeps each end-to-end run to a few seconds.
SMALL_DATA = (
    "data.source.train_eras=40",
    "data.source.validation_eras=14",
    "data.source.rows_per_era=250",
    "data.source.n_features=60",
    "data.source.live_rows=120",
)


class Workspace:
    """A scratch folder standing in for a user's project directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = f"sqlite:///{root}/mlruns/mlflow.db"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "NUMERAI_"))}
        env.update({"PYTHONPATH": str(REPO), "FXML_DATA_DIR": str(self.root / "data"), **extra})
        env.pop("HYDRA_FULL_ERROR", None)
        return env

    def run(self, *args: str, small: bool = True, **env: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "fxml.run", *args, *(SMALL_DATA if small else ())]
        return subprocess.run(command, cwd=self.root, env=self.env(**env), capture_output=True,
                              text=True, timeout=600)

    def client(self) -> mlflow.MlflowClient:
        return mlflow.MlflowClient(tracking_uri=self.uri)

    def artifact_frame(self, run, path: str) -> pd.DataFrame:  # type: ignore[no-untyped-def]
        local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=path,
                                                    tracking_uri=self.uri)
        return pd.read_csv(local) if path.endswith(".csv") else pd.read_parquet(local)

    def validation_frame(self, ids: pd.Series) -> pd.DataFrame:
        """Rows of the synthetic validation file, in the order of ``ids``, as a user would feed them."""
        files = list((self.root / "data" / "synthetic").glob("*/validation.parquet"))
        assert len(files) == 1, files
        return pd.read_parquet(files[0]).loc[ids.to_numpy()]

    def runs(self, experiment: str = "fxml") -> list:
        client = self.client()
        found = client.get_experiment_by_name(experiment)
        if found is None:
            return []
        return client.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"])


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("project"))


@pytest.fixture(scope="module", autouse=True)
def tracking_points_at_the_workspace(workspace: Workspace) -> None:
    """Artifact downloads go through MLflow's global client. A module may point it at a store of
    its own; each module starts at the shared workspace's store again."""
    mlflow.set_tracking_uri(workspace.uri)


def assert_reloads_to_logged_predictions(workspace: Workspace, run) -> mlflow.pyfunc.PyFuncModel:  # type: ignore[no-untyped-def]
    """The run's MLflow model, reloaded, predicts exactly the predictions the run logged."""
    logged = workspace.artifact_frame(run, "predictions/validation.parquet")
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    predicted = np.asarray(model.predict(workspace.validation_frame(logged["id"])))
    np.testing.assert_array_equal(predicted, logged["prediction"].to_numpy())
    return model


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fxml:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
