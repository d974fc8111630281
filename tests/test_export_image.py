"""``python -m fxml.export_model target_image=...``: the pickle checked with the pinned packages of
Numerai's image, in a virtual environment of their own (pip, cached per pins), and a failure there
told in one line naming the package version that breaks it."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import cloudpickle
import mlflow
import numpy as np
import pandas as pd
import pytest

from fxml.errors import FxmlError
from fxml.submission.export import PickleRun, live_shaped, run_pickle
from fxml.submission.image import (
    THIS_PYTHON,
    ImagePins,
    default_cache,
    failure_line,
    image_pins,
    shipped_images,
)
from fxml.submission.registry import load_logged_model
from tests.conftest import Workspace, assert_one_line_error
from tests.fakes import recorded_calls
from tests.helpers import fxml_command

FAKE_API = "api._target_=tests.fakes.FakeNumerAPI"
# what DOMAIN.md says Numerai's images hold
PY312 = {"lightgbm": "4.5.0", "xgboost": "3.0.2", "torch": "2.7.1", "pandas": "2.3.1", "numpy": "2.1.3",
         "scikit-learn": "1.6.1", "cloudpickle": "3.1.1"}
PY313 = {"torch": "2.10.0", "xgboost": "3.0.5", "pandas": "2.3.3"}
# what a pickle of any fxml model family imports, and what Numerai's loader reads it with
PICKLE_PACKAGES = {"numpy", "pandas", "scipy", "scikit-learn", "lightgbm", "xgboost", "cloudpickle", "torch",
                   "pyarrow"}
# numpy 1.x cannot unpickle arrays written by numpy 2 (numpy.core became numpy._core); these wheels
# install in seconds on Python 3.11
OLD_NUMPY = "numpy==1.26.4\npandas==2.3.3\npyarrow==25.0.1\ncloudpickle==3.1.2\n"


@pytest.fixture(scope="module")
def ridge_run(workspace: Workspace) -> str:
    result = workspace.train("model=ridge", "tracking.run_name=ridge")
    assert result.returncode == 0, result.stderr
    return next(r.info.run_id for r in workspace.runs() if r.info.run_name == "ridge")


@pytest.fixture(scope="module")
def image_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("image-cache")


def export(workspace: Workspace, run_id: str, *args: str, keys: bool = False):  # type: ignore[no-untyped-def]
    return fxml_command(workspace, "fxml.export_model", f"model_uri=runs:/{run_id}/model", *args,
                        keys=keys, in_process=True)


# --- the pins -------------------------------------------------------------------------------------


def test_the_shipped_pins_name_the_versions_of_numerais_images() -> None:
    assert shipped_images() == ["py3.11", "py3.12", "py3.13"]
    py312, py313 = image_pins("py3.12"), image_pins("py3.13")
    assert {name: py312.versions[name] for name in PY312} == PY312
    assert {name: py313.versions[name] for name in PY313} == PY313
    assert (py312.python, py313.python, image_pins("py3.11").python) == ("3.12", "3.13", "3.11")
    assert py312.label == "Numerai's py3.12 image"
    for name in shipped_images():
        assert set(image_pins(name).versions) >= PICKLE_PACKAGES, name


def test_a_requirements_file_is_read_as_its_pins(tmp_path: Path) -> None:
    pins = tmp_path / "py3.12" / "requirements.txt"  # numerai-predict's layout names the Python
    pins.parent.mkdir()
    pins.write_text("# from the image\nNumPy==2.1.3  # the array library\n\n"
                    "scikit_learn==1.6.1\ntorch==2.7.1 ; python_version < '3'\n")
    read = image_pins(str(pins))
    assert read.versions == {"numpy": "2.1.3", "scikit-learn": "1.6.1"}
    assert read.python == "3.12" and read.label == f"the image pinned in {pins}"
    assert read.constraints() == "numpy==2.1.3\nscikit-learn==1.6.1\n"
    named = tmp_path / "latest.txt"
    named.write_text("# python: 3.13\nnumpy==2.2.6\n")
    assert image_pins(str(named)).python == "3.13"


@pytest.mark.parametrize(("text", "message"), [
    ("numpy>=2\n", "line 1 ('numpy>=2') does not pin one version (name==version)"),
    ("pandas==2.3.1\n--index-url x\n", "line 2 ('--index-url x') is not a requirement"),
    ("# nothing\n", "no pinned package (name==version lines)"),
])
def test_pins_that_do_not_name_one_version_each_are_refused(tmp_path: Path, text: str,
                                                             message: str) -> None:
    pins = tmp_path / "pins.txt"
    pins.write_text(text)
    with pytest.raises(FxmlError) as raised:
        image_pins(str(pins))
    assert str(raised.value).startswith(f"target_image={pins}: {message}")


def test_an_unknown_image_is_refused_naming_those_fxml_knows() -> None:
    with pytest.raises(FxmlError) as raised:
        image_pins("py3.9")
    assert str(raised.value) == ("target_image=py3.9: neither one of Numerai's images that fxml "
                                 "knows (py3.11, py3.12, py3.13) nor a requirements file")


def test_environments_are_kept_in_the_user_cache_folder(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache() == tmp_path / "fxml" / "images"


# --- what breaks a pickle -------------------------------------------------------------------------


def predict_inverting_a_singular_matrix(live: pd.DataFrame, benchmark: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"prediction": np.linalg.inv(np.zeros((2, 2)))[0]})


def write(tmp_path: Path, payload: bytes) -> Path:
    path = tmp_path / "model.pkl"
    path.write_bytes(payload)
    return path


@pytest.mark.parametrize(("payload", "module", "error"), [
    # protocol 0 pickles naming what a module does not have: numpy's own __getattr__ raises (its
    # frame is numpy's), for cloudpickle the attribute lookup does (the error holds the module)
    (b"cnumpy\nno_such_function\n.", "numpy",
     "AttributeError: module 'numpy' has no attribute 'no_such_function'"),
    (b"ccloudpickle\nno_such_function\n.", "cloudpickle",
     "AttributeError: module 'cloudpickle' has no attribute 'no_such_function'"),
])
def test_the_check_names_the_module_a_load_failed_in(tmp_path: Path, payload: bytes, module: str,
                                                     error: str) -> None:
    live, benchmark = live_shaped(["feature_a"], 5)
    run = run_pickle(sys.executable, write(tmp_path, payload), live, benchmark)
    assert run.phase == "load" and run.result is None
    assert run.error == error
    installed = importlib.metadata.version(module)
    assert run.suspect == {"module": module, "distribution": module, "version": installed}
    assert run.imports == [module] and run.versions == {module: installed}


def test_the_check_names_the_module_a_predict_failed_in(tmp_path: Path) -> None:
    live, benchmark = live_shaped(["feature_a"], 5)
    # predict raises inside numpy: the innermost frame outside the standard library is numpy's
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        payload = cloudpickle.dumps(predict_inverting_a_singular_matrix)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    run = run_pickle(sys.executable, write(tmp_path, payload), live, benchmark)
    assert (run.phase, run.error) == ("predict", "LinAlgError: Singular matrix")
    assert run.suspect is not None and run.suspect["module"].startswith("numpy.linalg")
    assert (run.suspect["distribution"], run.suspect["version"]) == ("numpy", np.__version__)
    assert run.imports == ["cloudpickle", "numpy", "pandas"] and run.versions["numpy"] == np.__version__


def pins_of(**versions: str) -> ImagePins:
    return ImagePins("test", "Numerai's test image", THIS_PYTHON, versions)


def failed(phase: str, suspect: str | None, **versions: str) -> PickleRun:
    found = None if suspect is None else {"module": f"{suspect}.core", "distribution": suspect,
                                          "version": versions[suspect]}
    return PickleRun(THIS_PYTHON, phase, sorted(versions), versions, error="ValueError: broken",
                     suspect=found)


def test_a_failure_names_the_version_that_breaks_the_pickle() -> None:
    here = {"numpy": np.__version__, "pandas": pd.__version__}
    pins = pins_of(numpy="1.0.0", pandas=here["pandas"])
    # the package the failing code belongs to, at a version other than the training environment's
    assert failure_line(pins, failed("load", "numpy", numpy="1.0.0", pandas=here["pandas"]),
                        THIS_PYTHON) == (
        f"the pickle does not load with numpy 1.0.0 (Numerai's test image; written with numpy "
        f"{here['numpy']}): ValueError: broken")
    # the failing package has the training environment's version: the ones that differ are named
    assert failure_line(pins, failed("predict", "pandas", numpy="1.0.0", pandas=here["pandas"]),
                        THIS_PYTHON) == (
        f"the pickle loads, but its predict fails in Numerai's test image, which has numpy 1.0.0 "
        f"(here {here['numpy']}): ValueError: broken")
    # nothing differs
    assert failure_line(pins, failed("load", None, **here), THIS_PYTHON) == (
        "the pickle does not load in Numerai's test image: ValueError: broken")
    # another Python ran it: the pickle holds this Python's bytecode
    assert failure_line(pins, failed("predict", "numpy", numpy="1.0.0"), "3.99") == (
        f"the pickle loads, but its predict fails with Python 3.99 (Numerai's test image; written "
        f"with Python {THIS_PYTHON}): ValueError: broken")


# --- the command ----------------------------------------------------------------------------------


def test_target_image_needs_the_check(workspace: Workspace, ridge_run: str) -> None:
    result = export(workspace, ridge_run, "check=false", "target_image=py3.12")
    assert_one_line_error(result, "target_image needs check=true (got 'py3.12')")


def test_a_package_the_image_does_not_pin_is_named(workspace: Workspace, ridge_run: str,
                                                   image_cache: Path) -> None:
    pins = workspace.root / "no-pyarrow.txt"
    pins.write_text("numpy==2.1.3\npandas==2.3.1\ncloudpickle==3.1.1\n")
    result = export(workspace, ridge_run, "file=unpinned.pkl", f"target_image={pins}",
                    f"image_cache={image_cache}")
    assert_one_line_error(result)
    assert result.stderr.strip() == (f"fxml: error: the image pinned in {pins} pins no version of "
                                     "pyarrow, which the pickle or Numerai's loader imports")
    assert not (workspace.root / "unpinned.pkl").exists()


def test_a_pin_that_cannot_load_the_pickle_is_named_and_nothing_is_uploaded(
        workspace: Workspace, ridge_run: str, image_cache: Path) -> None:
    assert int(np.__version__.split(".")[0]) >= 2, "the training environment must have numpy 2"
    pins = workspace.root / "old-numpy.txt"
    pins.write_text(OLD_NUMPY)
    result = export(workspace, ridge_run, "file=hosted/model.pkl", f"target_image={pins}",
                    f"image_cache={image_cache}", "upload=true", "numerai_model=fxml_test", FAKE_API,
                    keys=True)
    assert_one_line_error(result)
    assert result.stderr.strip() == (
        f"fxml: error: the pickle does not load with numpy 1.26.4 (the image pinned in {pins}; "
        f"written with numpy {np.__version__}): ModuleNotFoundError: No module named "
        "'numpy._core.numeric'")
    assert result.returncode == 2
    assert (f"note: the image pinned in {pins} names no Python version (a '# python: 3.x' line), so it "
            f"is checked with Python {THIS_PYTHON}") in result.stdout
    assert not (workspace.root / "hosted" / "model.pkl").exists()
    assert [call["call"] for call in recorded_calls(workspace.root / "fake-numerai" / "calls.jsonl")
            if call["call"] == "model_upload"] == []
    # the environment has the pinned versions
    (folder,) = (path for path in image_cache.glob("old-numpy-python*") if path.is_dir())
    listed = subprocess.run([str(folder / "bin" / "python"), "-c",
                             "import numpy, pandas; print(numpy.__version__, pandas.__version__)"],
                            capture_output=True, text=True, check=True)
    assert listed.stdout.split() == ["1.26.4", "2.3.3"]


def test_a_pin_pip_cannot_find_is_one_line(workspace: Workspace, ridge_run: str,
                                           image_cache: Path) -> None:
    pins = workspace.root / "no-such-numpy.txt"
    pins.write_text(OLD_NUMPY.replace("numpy==1.26.4", "numpy==0.0.1"))
    result = export(workspace, ridge_run, "file=missing.pkl", f"target_image={pins}",
                    f"image_cache={image_cache}")
    assert_one_line_error(result, "could not install cloudpickle 3.1.2, numpy 0.0.1, pandas 2.3.3, "
                                  f"pyarrow 25.0.1 (the image pinned in {pins}) into {image_cache}",
                          "No matching distribution found for numpy==0.0.1")
    assert not (workspace.root / "missing.pkl").exists()


# --- Numerai's py3.12 packages, for real --------------------------------------------------------


@pytest.mark.slow
def test_a_lightgbm_pickle_predicts_the_same_with_numerais_py312_packages(
        workspace: Workspace, image_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # whatever Pythons this machine has, check with this one (the case of a machine without 3.12)
    monkeypatch.setattr("fxml.submission.image.image_interpreter", lambda python: None)
    trained = workspace.train("model.n_estimators=20", "tracking.run_name=lgbm")
    assert trained.returncode == 0, trained.stderr
    run_id = next(r.info.run_id for r in workspace.runs() if r.info.run_name == "lgbm")
    result = export(workspace, run_id, "file=lgbm.pkl", "target_image=py3.12",
                    f"image_cache={image_cache}")
    assert result.returncode == 0, result.stderr
    installed = ("cloudpickle 3.1.1, lightgbm 4.5.0, numpy 2.1.3, pandas 2.3.1, pyarrow 18.1.0, "
                 "scipy 1.16.0")
    checked = re.search(
        rf"^checked in Numerai's py3\.12 image: with its {installed} \(Python {THIS_PYTHON}\) the pickle "
        rf"predicted 500 rows equal to the training environment's; environment "
        rf"({re.escape(str(image_cache))}/py3\.12-python{THIS_PYTHON}-[0-9a-f]{{16}}) \(built in \d+ s\)$",
        result.stdout, re.MULTILINE)
    assert checked, result.stdout
    note = (f"note: the Python minor version differs: Numerai's py3.12 image runs Python 3.12, which "
            f"is not installed here, so its packages are checked with Python {THIS_PYTHON}")
    assert (note in result.stdout) == (THIS_PYTHON != "3.12"), result.stdout

    # the environment's packages are the pins, and the pickle predicts there what the model does here
    python = str(Path(checked.group(1)) / "bin" / "python")
    versions = ("import lightgbm, numpy, pandas, scipy; "
                "print(lightgbm.__version__, numpy.__version__, pandas.__version__, scipy.__version__)")
    listed = subprocess.run([python, "-c", versions], capture_output=True, text=True, check=True)
    assert listed.stdout.split() == ["4.5.0", "2.1.3", "2.3.1", "1.16.0"]
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    live, benchmark = live_shaped(load_logged_model(f"runs:/{run_id}/model").features, 300, seed=7)
    there = run_pickle(python, workspace.root / "lgbm.pkl", live, benchmark)
    assert there.result is not None, there.error
    raw = pd.Series(np.asarray(model.predict(live)), index=live.index).rank()
    np.testing.assert_allclose(there.result["prediction"].loc[live.index], (raw - 0.5) / len(raw))

    # a second export reuses the environment; a pickle checked with another Python is not uploaded
    again = export(workspace, run_id, "file=lgbm.pkl", "target_image=py3.12", f"image_cache={image_cache}",
                   "upload=true", "numerai_model=fxml_test", FAKE_API, keys=True)
    assert f"environment {checked.group(1)} (reused)" in again.stdout, again.stdout
    uploads = [call for call in recorded_calls(workspace.root / "fake-numerai" / "calls.jsonl")
               if call["call"] == "model_upload"]
    if THIS_PYTHON == "3.12":
        assert again.returncode == 0 and len(uploads) == 1, again.stderr
    else:
        assert_one_line_error(again, f"wrote and checked lgbm.pkl but did not upload it: Numerai's py3.12 "
                                     f"image runs Python 3.12 and the pickle holds Python {THIS_PYTHON} "
                                     "code (the Python minor version differs)")
        assert uploads == [] and (workspace.root / "lgbm.pkl").is_file()
