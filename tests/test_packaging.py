"""fxml as an installed package: the wheel carries its configs and runs from any directory, the
deep-model extra is optional, and a user's own config directory adds to or replaces the packaged
configs."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_DATA = ("data.source.train_eras=30", "data.source.validation_eras=10",
             "data.source.rows_per_era=120", "data.source.n_features=24", "data.source.live_rows=50")
# what the deep extra installs, and what only it pulls in
DEEP_DISTRIBUTIONS = ("torch", "lightning", "pytorch_lightning", "torchmetrics", "lightning_utilities",
                      "functorch", "torchgen")


def package_dirs() -> set[str]:
    """Every folder of Python modules under fxml/ and hydra_plugins/, as a dotted package name."""
    found = {"fxml.conf"}
    for top in ("fxml", "hydra_plugins"):
        for path in (REPO / top).rglob("*.py"):
            if "__pycache__" not in path.parts:
                found.add(".".join(path.parent.relative_to(REPO).parts))
    return found


def test_the_package_list_names_every_module_folder() -> None:
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert package_dirs() <= listed, sorted(package_dirs() - listed)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "NUMERAI_", "FXML_", "PYTHON", "HYDRA_"))}
    return {**env, **extra}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(REPO)], check=True, capture_output=True, env=clean_env())
    (built,) = out.glob("fxml-*.whl")
    return built


def test_the_wheel_carries_the_configs_and_every_module(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {str(p.relative_to(REPO / "conf")) for p in (REPO / "conf").rglob("*.yaml")}
    assert shipped and {f"fxml/conf/{name}" for name in shipped} <= names
    sources = {str(p.relative_to(REPO)) for top in ("fxml", "hydra_plugins")
               for p in (REPO / top).rglob("*.py") if "__pycache__" not in p.parts}
    assert sources <= names, sorted(sources - names)
    assert not any(name.startswith(("tests/", "conf/", "scripts/")) for name in names)


def test_the_wheel_carries_the_pins_of_numerais_images(wheel: Path) -> None:
    """fxml.export_model target_image=py3.12 reads them from the installed package."""
    archive = zipfile.ZipFile(wheel)
    images = sorted(name for name in archive.namelist() if name.startswith("fxml/submission/images/"))
    assert images == [f"fxml/submission/images/py3.{minor}.txt" for minor in (11, 12, 13)]
    assert "numpy==2.1.3" in archive.read("fxml/submission/images/py3.12.txt").decode().splitlines()


@pytest.fixture(scope="module")
def env_without_deep(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the built wheel and fxml's dependencies but no PyTorch or
    Lightning. Its dependencies are this environment's own installed packages, linked one by one
    (those of the deep extra left out), so nothing is downloaded."""
    root = tmp_path_factory.mktemp("env-without-deep")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    python = root / "venv" / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    ours = Path(next(p for p in sys.path if p.endswith("site-packages")))
    linked = root / "dependencies"
    linked.mkdir()
    for entry in ours.iterdir():
        name = entry.name.lower().replace("-", "_")
        if name.startswith(("fxml", "__editable__", "hydra_plugins")) or name.endswith(".pth"):
            continue
        if name.split(".")[0].split("-")[0] in DEEP_DISTRIBUTIONS or name.startswith(
                tuple(f"{d}-" for d in DEEP_DISTRIBUTIONS)):
            continue
        (linked / entry.name).symlink_to(entry)
    (site / "dependencies.pth").write_text(f"{linked}\n")
    # the wheel's files unpacked as pip would install them (pip itself is not in this venv)
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    # hydra_plugins is a namespace package shared with hydra-joblib-launcher: merge, don't shadow
    for plugin in (ours / "hydra_plugins").iterdir():
        if not (site / "hydra_plugins" / plugin.name).exists():
            (site / "hydra_plugins" / plugin.name).symlink_to(plugin)
    return python


def run_installed(python: Path, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env=clean_env(FXML_DATA_DIR=str(cwd / "data"), **env))


@pytest.mark.slow
def test_installed_without_the_deep_extra_runs_the_default_job_anywhere(
        env_without_deep: Path, tmp_path: Path) -> None:
    python = env_without_deep
    where = run_installed(python, tmp_path, "-c", "import fxml, importlib.util; print(fxml.__file__); "
                          "print(importlib.util.find_spec('torch'))")
    assert str(REPO) not in where.stdout and "None" in where.stdout, where.stdout + where.stderr
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    result = run_installed(python, tmp_path, "-m", "fxml.run", f"tracking.uri={uri}", *TINY_DATA)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "MLflow run" in result.stdout

    deep = run_installed(python, tmp_path, "-m", "fxml.run", "model=mlp", f"tracking.uri={uri}", *TINY_DATA)
    assert deep.returncode != 0 and "Traceback" not in deep.stderr + deep.stdout
    lines = [line for line in deep.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, deep.stderr
    assert lines[0].startswith("fxml: error: the deep models") and 'pip install "fxml[deep]"' in lines[0]
    # the deep model fails before a run is started: the store holds the finished lgbm run only
    runs = run_installed(python, tmp_path, "-c", "import mlflow; print([(r.info.status, "
                         "r.data.params['model._target_'], 'corr_mean' in r.data.metrics) for r in "
                         "mlflow.search_runs(search_all_experiments=True, output_format='list')])",
                         MLFLOW_TRACKING_URI=uri)
    assert runs.stdout.strip().splitlines()[-1:] == [str(
        [("FINISHED", "fxml.models.lightgbm_model.LightGBMModel", True)])], runs.stderr


def test_a_user_config_directory_adds_and_replaces_presets(tmp_path: Path) -> None:
    mine = tmp_path / "my-configs"
    (mine / "model").mkdir(parents=True)
    (mine / "model" / "lgbm_tiny.yaml").write_text("defaults:\n  - lgbm\n  - _self_\n\nn_estimators: 7\n")
    (mine / "model" / "lgbm.yaml").write_text(
        "defaults:\n  - /fxml_schema_model_lgbm@_here_\n  - _self_\n\nn_estimators: 11\n")

    def n_estimators(*args: str, **env: str) -> str:
        result = run_installed(Path(sys.executable), tmp_path, "-m", "fxml.run", *args, "--cfg", "job",
                               "--package", "model", **env)
        assert result.returncode == 0, result.stderr
        return next(line for line in result.stdout.splitlines() if line.startswith("n_estimators:"))

    assert n_estimators() == "n_estimators: 300"
    # --config-dir adds options after the packaged ones
    assert n_estimators("--config-dir", str(mine), "model=lgbm_tiny") == "n_estimators: 7"
    # FXML_CONFIG_DIR comes first, so its model/lgbm.yaml replaces the packaged one
    assert n_estimators(FXML_CONFIG_DIR=str(mine)) == "n_estimators: 11"
    missing = run_installed(Path(sys.executable), tmp_path, "-m", "fxml.run", "--cfg", "job",
                            FXML_CONFIG_DIR=str(tmp_path / "nowhere"))
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"fxml: error: FXML_CONFIG_DIR={tmp_path / 'nowhere'} is not a directory"
