"""A logged model's environment comes from public packages: fxml's code travels inside the model
(``code/fxml``), ``requirements.txt`` pins only what the family imports, and the model loads and
reproduces the run's predictions where fxml is not installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import venv
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from tests.conftest import Workspace

FAMILIES = {"ridge": "model=ridge", "lgbm": "model.n_estimators=20"}
# never needed to load a ridge or LightGBM model: training, config, data loading, sweeps
NOT_AT_LOAD = ("fxml", "hydra", "hydra-core", "omegaconf", "polars", "optuna", "pyarrow", "torch",
               "lightning", "filelock", "rich")

# Loads a logged model in a process where fxml can come only from the model's own code folder and
# the training-side packages cannot be imported at all; writes the predictions as .npy.
LOADER = r"""
import importlib.abc, importlib.machinery, sys
uri, tracking, frame_path, out_path, code_root = sys.argv[1:6]
BLOCKED = {"hydra", "omegaconf", "polars", "optuna", "torch", "lightning"}

class OnlyTheModelsFxml(importlib.abc.MetaPathFinder):
    # before every other finder (an editable install of fxml has one): fxml comes from the model
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in BLOCKED:
            raise ModuleNotFoundError(f"{name} must not be imported to load a model")
        if top == "fxml":
            if name == "fxml":
                path = [p for p in sys.path if p.startswith(code_root)]
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is None:
                raise ModuleNotFoundError(f"{name} is not in the model's code ({code_root})")
            return spec
        return None

sys.meta_path.insert(0, OnlyTheModelsFxml())
import mlflow, numpy as np, pandas as pd
mlflow.set_tracking_uri(tracking)
model = mlflow.pyfunc.load_model(uri, dst_path=code_root)
import fxml
assert fxml.__file__.startswith(code_root), fxml.__file__
np.save(out_path, np.asarray(model.predict(pd.read_parquet(frame_path))))
print(sorted({m.split(".")[0] for m in sys.modules} & BLOCKED))
"""


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    workspace = Workspace(tmp_path_factory.mktemp("model_environment"))
    # runs:/ model URIs resolve through MLflow's global client: this module's own store
    mlflow.set_tracking_uri(workspace.uri)
    return workspace


@pytest.fixture(scope="module")
def logged(ws: Workspace) -> dict[str, object]:
    """One run per family, each with its logged model."""
    runs = {}
    for family, override in FAMILIES.items():
        result = ws.run(override, f"tracking.run_name=env-{family}", f"tracking.uri={ws.uri}")
        assert result.returncode == 0, result.stderr
        runs[family] = next(r for r in ws.runs() if r.info.run_name == f"env-{family}")
    return runs


def model_folder(ws: Workspace, run, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    destination = tmp_path / f"{run.info.run_id}-download"
    destination.mkdir(exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(
        artifact_uri=f"runs:/{run.info.run_id}/model", dst_path=str(destination),
        tracking_uri=ws.uri))


def requirement_names(ws: Workspace, run, tmp_path: Path) -> dict[str, str]:  # type: ignore[no-untyped-def]
    path = model_folder(ws, run, tmp_path) / "requirements.txt"
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    pins = dict(line.split("==", 1) for line in lines)
    assert len(pins) == len(lines), lines  # every requirement pinned
    return {name.lower(): version for name, version in pins.items()}


def test_requirements_pin_only_what_the_family_imports(ws: Workspace, logged,
                                                       tmp_path: Path) -> None:
    ridge = requirement_names(ws, logged["ridge"], tmp_path)
    assert ridge == {"mlflow": mlflow.__version__, "numpy": np.__version__,
                     "pandas": pd.__version__}
    lgbm = requirement_names(ws, logged["lgbm"], tmp_path)
    import lightgbm

    assert lgbm["lightgbm"] == lightgbm.__version__ and lgbm["mlflow"] == mlflow.__version__
    # each tree family in its own module: a LightGBM model does not ask for XGBoost
    assert "xgboost" not in lgbm, lgbm
    for pins in (ridge, lgbm):
        assert not set(pins) & set(NOT_AT_LOAD), pins


def test_model_folder_carries_fxml_code_only(ws: Workspace, logged, tmp_path: Path) -> None:
    code = model_folder(ws, logged["ridge"], tmp_path) / "code" / "fxml"
    assert (code / "models" / "linear.py").is_file() and (code / "tracking" / "pyfunc.py").is_file()
    shipped = {p.suffix for p in code.rglob("*") if p.is_file()}
    assert shipped == {".py"}, shipped  # no caches, configs or data
    assert not list(code.rglob("__pycache__"))


def logged_predictions(ws: Workspace, run, tmp_path: Path) -> tuple[Path, np.ndarray]:  # type: ignore[no-untyped-def]
    logged = ws.artifact_frame(run, "predictions/validation.parquet")
    frame_path = tmp_path / f"{run.info.run_id}-input.parquet"
    ws.validation_frame(logged["id"]).to_parquet(frame_path)
    return frame_path, logged["prediction"].to_numpy()


def load_in_process(python: str, ws: Workspace, run, tmp_path: Path) -> np.ndarray:  # type: ignore[no-untyped-def]
    frame_path, _ = logged_predictions(ws, run, tmp_path)
    out = tmp_path / f"{run.info.run_id}-predicted.npy"
    code_root = tmp_path / f"{run.info.run_id}-model"
    code_root.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MLFLOW_"))}
    result = subprocess.run(
        [python, "-I", "-c", LOADER, f"runs:/{run.info.run_id}/model", ws.uri, str(frame_path),
         str(out), str(code_root)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
    return np.load(out)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_model_loads_with_fxml_from_its_own_code(ws: Workspace, logged, family: str,
                                                 tmp_path: Path) -> None:
    run = logged[family]
    _, expected = logged_predictions(ws, run, tmp_path)
    predicted = load_in_process(sys.executable, ws, run, tmp_path)
    np.testing.assert_array_equal(predicted, expected)


def pip_install(python: str, requirements: Path) -> None:
    installed = subprocess.run(
        # no bytecode compiled at install: half of pip's time, and nothing the check reads
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-compile", "-r",
         str(requirements)],
        capture_output=True, text=True, timeout=900)
    assert installed.returncode == 0, installed.stderr[-3000:]


@pytest.mark.slow
def test_fresh_environment_from_requirements_reproduces_predictions(
        ws: Workspace, logged, tmp_path: Path) -> None:
    """A new virtual environment with only a model's requirements.txt (from the package index)
    loads runs:/<id>/model and predicts exactly what the run logged. One environment serves both
    families: ridge's list is a subset of LightGBM's, so it is built from ridge's first, checked,
    then given the rest of LightGBM's list (MLflow installs once)."""
    environment = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(environment)
    python = str(environment / "bin" / "python")
    found = subprocess.run([python, "-I", "-c", "import importlib.util as u; print(u.find_spec('fxml'))"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert found.stdout.strip() == "None"  # nothing but the model provides fxml there
    lists = {family: model_folder(ws, logged[family], tmp_path) / "requirements.txt"
             for family in ("ridge", "lgbm")}
    assert set(lists["ridge"].read_text().split()) < set(lists["lgbm"].read_text().split())
    for family, requirements in lists.items():
        started = time.perf_counter()
        pip_install(python, requirements)
        print(f"{family}: pip install -r requirements.txt took {time.perf_counter() - started:.0f} s")
        _, expected = logged_predictions(ws, logged[family], tmp_path)
        np.testing.assert_array_equal(load_in_process(python, ws, logged[family], tmp_path), expected)


def test_mlflow_models_predict_with_the_local_environment(ws: Workspace, logged,
                                                          tmp_path: Path) -> None:
    run = logged["ridge"]
    frame_path, expected = logged_predictions(ws, run, tmp_path)
    frame = pd.read_parquet(frame_path)
    features = [c for c in frame.columns if c.startswith("feature_")]
    payload = {"dataframe_split": json.loads(frame[features].to_json(orient="split", index=False))}
    (tmp_path / "input.json").write_text(json.dumps(payload))
    mlflow_cli = str(Path(sys.executable).with_name("mlflow"))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
           "MLFLOW_TRACKING_URI": ws.uri}
    result = subprocess.run(
        [mlflow_cli, "models", "predict", "-m", f"runs:/{run.info.run_id}/model",
         "-i", "input.json", "-t", "json", "-o", "output.json", "--env-manager", "local"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    predicted = np.asarray(json.loads((tmp_path / "output.json").read_text())["predictions"])
    np.testing.assert_array_equal(predicted, expected)
