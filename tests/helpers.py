"""Helpers shared by several test modules (test modules never import each other)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest

from fxml.data.loader import DataSplit
from fxml.tracking.stores import store_client
from tests.conftest import SMALL_DATA, InProcessResult, Workspace

PUBLIC_ID, SECRET_KEY = "FXMLFAKEPUBLICID7Q2X9", "FXMLFAKESECRETKEY3M8Z1W5"
KEYS = {"NUMERAI_PUBLIC_ID": PUBLIC_ID, "NUMERAI_SECRET_KEY": SECRET_KEY}


def fxml_command(ws: Workspace, module: str, *args: str, keys: bool = False, round_number: int = 1000,
                 cwd: Path | None = None, served: Path | None = None,
                 outputs: list[str] | None = None,
                 in_process: bool = False) -> subprocess.CompletedProcess | InProcessResult:
    """``python -m <module> args`` in the project folder, as a user runs it (or, ``in_process``,
    its config and task in this process), with the fake client's environment (and the fake keys
    when ``keys``)."""
    fake = {"FXML_FAKE_NUMERAI_LOG": str(ws.root / "fake-numerai" / "calls.jsonl"),
            "FXML_FAKE_NUMERAI_ROUND": str(round_number), **(KEYS if keys else {})}
    if served is not None:
        fake["FXML_FAKE_NUMERAI_DIR"] = str(served)
    if in_process:
        result: subprocess.CompletedProcess | InProcessResult = ws.command(module, *args, cwd=cwd, **fake)
    else:
        result = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd or ws.root,
                                env=ws.env(**fake), capture_output=True, text=True, timeout=600)
    if outputs is not None:
        outputs.append(result.stdout + result.stderr)
    return result


def served_release(ws: Workspace) -> Path:
    releases = sorted((ws.root / "data" / "synthetic").glob("v5.3-*"))
    assert len(releases) == 1, releases
    return releases[0]


def toy_split(name: str = "train", eras: int = 12, rows: int = 200, features: int = 8,
              seed: int = 0, used: int = 0) -> DataSplit:
    """Int8 features 0..4; the target rises with feature ``used`` plus noise."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 5, size=(eras * rows, features), dtype=np.int8)
    signal = x[:, used] + rng.normal(0, 1.5, len(x))
    target = np.clip(np.round(signal) / 4, 0, 1).astype(np.float32)
    return DataSplit(name, np.array([f"id{i}" for i in range(len(x))]),
                     np.repeat(np.arange(1, eras + 1, dtype=np.int32), rows), x, target,
                     [f"feature_{i}" for i in range(features)])


# training that would go on for minutes: the test stops it
ENDLESS = {
    # valid_corr_every: a GBDT logs per-round metrics only when it reads a validation set
    "lgbm": ("model=lgbm", "model.n_estimators=1000000", "model.learning_rate=0.0001",
             "model.valid_corr_every=100"),
    "mlp": ("model=mlp", "trainer.n_jobs=1", "trainer.max_epochs=100000", "trainer.patience=100000"),
}


def start(workspace: Workspace, *args: str, **env: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "fxml.run", *args, *SMALL_DATA, "tracking.log_model=false"]
    return subprocess.Popen(command, cwd=workspace.root, env=workspace.env(**env), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_training(uri: str, experiment: str, name: str, process: subprocess.Popen,
                      timeout: float = 240) -> str:
    """The run's id once it has logged a training metric (so the model is mid-fit)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        client = store_client(uri)  # under fxml's lock: the run may be creating the store's tables
        found = client.get_experiment_by_name(experiment)
        runs = [] if found is None else \
            client.search_runs([found.experiment_id], f"attributes.run_name = '{name}'")
        if runs and any(key.startswith(("valid_", "train_", "epoch")) for key in runs[0].data.metrics):
            return runs[0].info.run_id
        time.sleep(0.5)
    process.kill()
    raise AssertionError(f"run {name} never started training: {process.communicate()}")


def finish(process: subprocess.Popen, timeout: float = 90) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def assert_parent_names_the_best(parent, found: optuna.Study) -> None:  # type: ignore[no-untyped-def]
    """The parent run names the study's best trial in tags and metrics (never params)."""
    best = found.best_trial
    assert parent.data.metrics["best_value"] == pytest.approx(best.value)
    assert parent.data.tags["best_trial"] == str(best.number)
    assert parent.data.tags["best_run_id"] == best.user_attrs["mlflow_run_id"]
    assert all(parent.data.tags[f"best.{k}"] == str(v) for k, v in best.params.items())
    assert not any(key.startswith("best.") for key in parent.data.params)
    command = parent.data.tags["best_command"]
    assert command.startswith("python -m fxml.run ") and "hparams_search" not in command
    assert all(f"{k}={v!r}" in command if isinstance(v, float) else f"{k}={v}" in command
               for k, v in best.params.items())


def table_rows(stdout: str, title: str) -> tuple[list[str], list[list[str]]]:
    """The header cells and the row cells of the one table whose title starts with ``title``."""
    lines = stdout.splitlines()
    [titled] = [i for i, line in enumerate(lines) if line.startswith(title)]
    top = next(i for i in range(titled, len(lines)) if lines[i].startswith("┏"))
    header = [cell.strip() for cell in lines[top + 1].strip("┃").split("┃")]
    rows = []
    for line in lines[top + 3:]:
        if not line.startswith("│"):
            break
        rows.append([cell.strip() for cell in line.strip("│").split("│")])
    return header, rows


BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def chromium() -> str:
    """The headless browser the page checks use. CI (.ci/run) installs Debian's chromium;
    elsewhere, without one, the browser checks are skipped, not failed."""
    browser = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    if browser is None:
        missing = "a headless Chromium is needed (apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    return browser


def files_containing(root: Path, secret: str) -> list[str]:
    """Every file under ``root`` with ``secret`` in its bytes."""
    needle = secret.encode()
    return [str(path) for path in root.rglob("*") if path.is_file() and needle in path.read_bytes()]


def process_of(run) -> int:  # type: ignore[no-untyped-def]
    """The pid that trains ``run``, from its ``fxml.process`` tag (``host:pid``)."""
    return int(run.data.tags["fxml.process"].rsplit(":", 1)[1])
