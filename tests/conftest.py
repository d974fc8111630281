"""Shared helpers: run fxml as a user would (a subprocess in a scratch folder) or, where the
process adds nothing, compose the same config and call the same task in-process; read MLflow back.
Each test module gets a workspace (and so an MLflow store) of its own."""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import mlflow
import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
# A small synthetic release keeps each end-to-end run to a few seconds; one training thread per
# run, since the suite runs a test process per core and threads beyond the cores only wait.
SMALL_DATA = (
    "data.source.train_eras=40",
    "data.source.validation_eras=14",
    "data.source.rows_per_era=250",
    "data.source.n_features=60",
    "data.source.live_rows=120",
    "trainer.n_jobs=1",
)


# each command's config and task function, for running it in-process
COMMANDS = {
    "fxml.run": ("config", "train"),
    "fxml.promote": ("promote", "promote_command"),
    "fxml.refit": ("refit", "refit_command"),
    "fxml.submit": ("submit", "submit_command"),
    "fxml.report": ("report", "report_command"),
    "fxml.live_scores": ("live_scores", "live_scores_command"),
    "fxml.export_model": ("export_model", "export_command"),
}


def compose_fxml_config(overrides: list[str], config_name: str = "config") -> Any:
    """The config ``python -m fxml.<command> <overrides>`` would get: the one place tests name
    where fxml's configs live."""
    from hydra import compose, initialize_config_module

    from fxml.config import register_schemas

    register_schemas()  # what run_cli does before Hydra composes
    with initialize_config_module("fxml.conf", version_base="1.3"):
        return compose(config_name, overrides=overrides)


def forget_process_state() -> None:
    """What a command's process would take with it when it exits: the figures it logged."""
    import matplotlib.pyplot as plt

    plt.close("all")


# the longest test files first: the suite's two test processes (pytest-xdist, one file each at a
# time) then end together, with the short files filling in, instead of one waiting on the other
LONGEST_FIRST = ("test_sweep_lifecycle.py", "test_sweeps.py", "test_ray_launcher.py",
                 "test_model_environment.py", "test_submitit_launcher.py", "test_outages.py",
                 "test_postgres_tracking.py", "test_promote_submit.py", "test_export_image.py",
                 "test_lifecycle.py", "test_secrets.py", "test_report.py", "test_user_output.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: place for place, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@functools.cache
def created_store() -> Path:
    """An MLflow SQLite store as MLflow creates it (its tables migrated: about 2 s, once per test
    process), which each workspace starts from a copy of."""
    from fxml.tracking.stores import store_client

    folder = Path(tempfile.mkdtemp(prefix="fxml-created-store-"))
    store_client(f"sqlite:///{folder}/mlflow.db").search_experiments()
    return folder / "mlflow.db"


def start_from_a_created_store(root: Path) -> None:
    """The store a first run in ``root`` would create, with its Default experiment's artifacts
    under ``root`` as there; tests of store creation itself open stores of their own."""
    store = root / "mlruns" / "mlflow.db"
    if store.exists():
        return
    store.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(created_store(), store)
    with contextlib.closing(sqlite3.connect(store)) as database, database:
        database.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                         [str(root / "mlruns" / "0")])


@dataclass
class InProcessResult:
    """What a command run in-process left: exit code, console output, log lines, return value."""

    returncode: int
    stdout: str
    stderr: str
    logs: str
    value: Any = field(default=None)


@contextlib.contextmanager
def _captured_logs() -> Iterator[io.StringIO]:
    """INFO records of the run, as Hydra's console handler would show them."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


class Workspace:
    """A scratch folder standing in for a user's project directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = f"sqlite:///{root}/mlruns/mlflow.db"
        start_from_a_created_store(root)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "NUMERAI_"))}
        env.update({"PYTHONPATH": str(REPO), "FXML_DATA_DIR": str(self.root / "data"), **extra})
        env.pop("HYDRA_FULL_ERROR", None)
        return env

    def run(self, *args: str, small: bool = True, **env: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "fxml.run", *args, *(SMALL_DATA if small else ())]
        return subprocess.run(command, cwd=self.root, env=self.env(**env), capture_output=True,
                              text=True, timeout=600)

    def train(self, *args: str, small: bool = True, **env: str) -> InProcessResult:
        """``python -m fxml.run <args>`` without a new interpreter (see ``command``)."""
        return self.command("fxml.run", *args, *(SMALL_DATA if small else ()), **env)

    def command(self, module: str, *args: str, cwd: Path | None = None, **env: str) -> InProcessResult:
        """``python -m <module> <args>`` in this process: the same config, the same task and the
        same error handling (fxml.cli.run_cli), in this folder with this environment."""
        import importlib

        from fxml.cli import run_cli

        config_name, task_name = COMMANDS[module]
        loaded = importlib.import_module(module)
        task = getattr(loaded, task_name)
        overrides = list(getattr(loaded, "runs_as_list", list)(list(args)))  # fxml.report's runs=a,b
        value: list[Any] = []
        out, err = io.StringIO(), io.StringIO()
        code = 0
        # MLflow caches a store per URI, so the default relative one would stay the first module's
        previous, environment = Path.cwd(), self.env(**{"MLFLOW_TRACKING_URI": self.uri, **env})
        with (mock.patch.dict(os.environ, environment, clear=True), mock.patch("fxml.cli.stop_on_signals"),
              _captured_logs() as logs, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err)):
            os.chdir(cwd or self.root)
            try:
                run_cli(lambda: value.append(task(compose_fxml_config(overrides, config_name))),
                        config_name, overrides)
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else 1
            finally:
                os.chdir(previous)
                forget_process_state()
        return InProcessResult(code, out.getvalue(), err.getvalue(), logs.getvalue(),
                               value[0] if value else None)

    def client(self) -> mlflow.MlflowClient:
        """A client of the store, opened under fxml's creation lock: a run started beside a
        polling test may be creating the store's tables at that moment."""
        from fxml.tracking.stores import store_client

        return store_client(self.uri)

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


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A project folder and MLflow store of the module's own: modules do not see each other's runs."""
    return Workspace(tmp_path_factory.mktemp("project"))


@pytest.fixture(scope="module", autouse=True)
def tracking_points_at_the_workspace(workspace: Workspace) -> None:
    """Artifact downloads go through MLflow's global client: each module starts at its own store."""
    mlflow.set_tracking_uri(workspace.uri)


def assert_reloads_to_logged_predictions(workspace: Workspace, run) -> mlflow.pyfunc.PyFuncModel:  # type: ignore[no-untyped-def]
    """The run's MLflow model, reloaded, predicts exactly the predictions the run logged."""
    logged = workspace.artifact_frame(run, "predictions/validation.parquet")
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    predicted = np.asarray(model.predict(workspace.validation_frame(logged["id"])))
    np.testing.assert_array_equal(predicted, logged["prediction"].to_numpy())
    return model


def assert_one_line_error(result: subprocess.CompletedProcess | InProcessResult, *fragments: str,
                          code: int = 2) -> None:
    """One ``fxml:`` line on stderr, no traceback, and the exit code (USER_ERROR unless a signal's)."""
    assert result.returncode == code, (result.returncode, result.stdout + result.stderr)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fxml:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A release written by another program than fxml's synthetic writer (tests/releases.py)."""
    from tests.releases import write_release

    folder = tmp_path_factory.mktemp("release")
    write_release(folder)
    return folder
