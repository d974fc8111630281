"""A pickle for Numerai's hosted compute: what ``numerapi.NumerAPI().model_upload`` expects.

The file holds one function, ``predict(live_features, live_benchmark_models) -> DataFrame`` (index
``id``, column ``prediction``: per-era ranks in (0, 1)). It carries the fitted fxml model, and
fxml's own code is pickled by value (``cloudpickle.register_pickle_by_value``), so the hosted
environment needs only the libraries the model calls (numpy, pandas, and lightgbm or xgboost...;
the check below lists them) and the same Python minor version as the machine that wrote it.

:func:`check_in_fresh_process` unpickles it in a new Python process in which ``import fxml``
fails, calls it on live-shaped data and validates the result against Numerai's rules;
:func:`run_pickle` does the same with any interpreter (the one of an image's environment, see
:mod:`fxml.submission.image`) and reports how far the pickle got and what raised.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cloudpickle
import numpy as np
import pandas as pd

import fxml
from fxml.data.layout import DATA_TYPE, ERA, ID
from fxml.errors import FxmlError, child_failure
from fxml.models.base import TabularModel
from fxml.submission.validation import ranked_submission, validate_submission

MISSING_FEATURE_VALUE = 2  # Numerai fills missing feature values with the middle bin
CHECK_TIMEOUT = 600  # seconds: Numerai's hosted compute gives a pickle 10 minutes
# Run by another interpreter, which may have none of fxml's packages: the standard library only
# until pandas is imported. It writes a JSON report of how far it got, so that a crash without a
# traceback (a signal) still says whether loading or predicting failed.
CHECK_SCRIPT = r"""
import builtins, importlib.abc, importlib.metadata, json, os, sys, types

class NoFxml(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "fxml" or name.startswith("fxml."):
            raise ImportError(f"no module named {name} (as on Numerai's hosted compute)", name=name)
        return None

sys.meta_path.insert(0, NoFxml())
pickle_path, live_path, benchmark_path, out_path, report_path = sys.argv[1:6]
stdlib = set(sys.stdlib_module_names)
# Numerai's loader (pd.read_pickle) is on the stack of every failed load: not what broke it
LOADER = ("pandas.io.pickle", "pandas.compat.pickle_compat")
report = {"phase": "start", "imports": [], "error": None, "suspect": None, "versions": {},
          "python": "%d.%d" % sys.version_info[:2]}

def save():
    with open(report_path + ".tmp", "w") as handle:
        json.dump(report, handle)
    os.replace(report_path + ".tmp", report_path)

# record the modules the pickle itself asks for (not what those modules import in turn)
real_import, requested, depth = builtins.__import__, set(), [0]

def recording_import(name, globals=None, locals=None, fromlist=(), level=0):
    if depth[0] == 0 and level == 0:
        requested.add(name.split(".")[0])
    depth[0] += 1
    try:
        return real_import(name, globals, locals, fromlist, level)
    finally:
        depth[0] -= 1

def installed(module):
    names = importlib.metadata.packages_distributions().get(module.split(".")[0], [])
    return (names[0], importlib.metadata.version(names[0])) if names else None

def raised_by(error):
    # the module an import error names, the module pickle found no such name in, else the
    # innermost frame outside the standard library, the loader and this script
    if isinstance(error, ImportError) and error.name:
        return error.name
    if isinstance(error, AttributeError) and isinstance(getattr(error, "obj", None), types.ModuleType):
        return error.obj.__name__
    names, trace = [], error.__traceback__
    while trace is not None:
        names.append(trace.tb_frame.f_globals.get("__name__") or "")
        trace = trace.tb_next
    for name in reversed(names):
        if name.split(".")[0] not in stdlib and name != "__main__" and not name.startswith(LOADER):
            return name
    return None

save()
try:
    import pandas as pd
    live = pd.read_parquet(live_path)
    benchmark = pd.read_parquet(benchmark_path)
    report["phase"] = "load"
    save()
    builtins.__import__ = recording_import
    predict = pd.read_pickle(pickle_path)  # as numerai-predict loads it
    report["phase"] = "predict"
    save()
    result = predict(live, benchmark)
    builtins.__import__ = real_import
    if not isinstance(result, pd.DataFrame):
        raise TypeError(f"predict returned {type(result).__name__}, not a DataFrame")
    result.to_parquet(out_path)
    report["phase"] = "done"
except Exception as error:
    builtins.__import__ = real_import
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    report["error"] = type(error).__name__ + (f": {lines[0]}" if lines else "")
    module = raised_by(error)
    if module is not None:
        found = installed(module)
        report["suspect"] = {"module": module, "distribution": found and found[0],
                             "version": found and found[1]}
finally:
    builtins.__import__ = real_import
    report["imports"] = sorted(n for n in requested if n not in stdlib and not n.startswith("_"))
    report["versions"] = dict(filter(None, map(installed, report["imports"])))
    save()
sys.exit(0 if report["phase"] == "done" else 1)
"""


def hosted_predict(model: TabularModel, features: list[str]) -> Callable[..., pd.DataFrame]:
    """The function Numerai calls each round, closing over the fitted model."""

    def predict(live_features: pd.DataFrame,
                live_benchmark_models: pd.DataFrame | None = None) -> pd.DataFrame:
        frame = live_features.set_index("id") if "id" in live_features.columns else live_features
        missing = [name for name in features if name not in frame.columns]
        if missing:
            raise ValueError(f"live_features lacks {len(missing)} feature column(s), e.g. {missing[0]}")
        values = frame[features].fillna(MISSING_FEATURE_VALUE).to_numpy(dtype=np.int8)
        raw = np.asarray(model.predict(values, None), dtype=np.float64)
        ranks = pd.Series(raw, index=frame.index).rank(method="average")
        result = ((ranks - 0.5) / ranks.notna().sum()).to_frame("prediction")
        result.index.name = "id"
        return result

    return predict


def write_pickle(model: TabularModel, features: list[str], output: Path) -> int:
    """Pickle the hosted predict function with fxml's code embedded; returns the file size."""
    function = hosted_predict(model, features)
    cloudpickle.register_pickle_by_value(fxml)
    try:
        payload = cloudpickle.dumps(function)
    finally:
        cloudpickle.unregister_pickle_by_value(fxml)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(payload)
    return len(payload)


def live_shaped(features: list[str], rows: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Synthetic live and live-benchmark frames in Numerai's layout (index id, era X, int8 features)."""
    rng = np.random.default_rng(seed)
    ids = pd.Index([f"n{value:015x}" for value in rng.choice(2**60, rows, replace=False)], name=ID)
    live = pd.DataFrame(rng.integers(0, 5, (rows, len(features)), dtype=np.int8), index=ids,
                        columns=features)
    live.insert(0, DATA_TYPE, "live")
    live.insert(0, ERA, "X")
    benchmark = pd.DataFrame({ERA: "X", DATA_TYPE: "live",
                              "v5_lgbm_ender20": rng.random(rows).astype(np.float32)}, index=ids)
    return live, benchmark


@dataclass
class PickleRun:
    """What the pickle did when another interpreter loaded and called it."""

    python: str  # that interpreter's version, major.minor
    phase: str  # how far it got: "start", "load", "predict" or "done"
    imports: list[str]  # the top-level modules the pickle asked for
    versions: dict[str, str]  # distribution -> version there, of those modules
    result: pd.DataFrame | None = None  # what predict returned, when it got through
    error: str | None = None  # why not, in one line
    suspect: dict[str, str | None] | None = None  # the module that raised, its distribution, version


def run_pickle(python: str, output: Path, live: pd.DataFrame, benchmark: pd.DataFrame) -> PickleRun:
    """Load ``output`` with ``python`` (as Numerai does, with pandas and without fxml) and call it
    on ``live`` and ``benchmark``."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        script, live_path, benchmark_path, out_path, report_path = (
            folder / name for name in ("check.py", "live.parquet", "benchmark.parquet", "out.parquet",
                                       "report.json"))
        script.write_text(CHECK_SCRIPT)
        live.to_parquet(live_path)
        benchmark.to_parquet(benchmark_path)
        try:
            done = subprocess.run([python, "-I", str(script), str(output.resolve()), str(live_path),
                                   str(benchmark_path), str(out_path), str(report_path)],
                                  cwd=folder, capture_output=True, text=True, timeout=CHECK_TIMEOUT)
            failure = None if done.returncode == 0 else child_failure(done.stderr, done.returncode)
        except subprocess.TimeoutExpired:
            failure = f"it did not finish within {CHECK_TIMEOUT} s"
        report = json.loads(report_path.read_text()) if report_path.is_file() else {}
        run = PickleRun(report.get("python", "?"), report.get("phase", "start"),
                        report.get("imports", []), report.get("versions", {}),
                        error=report.get("error") or failure, suspect=report.get("suspect"))
        if failure is None and run.phase == "done":
            run.result = pd.read_parquet(out_path)
    return run


def prediction_problem(result: pd.DataFrame, live: pd.DataFrame, model: TabularModel,
                       features: list[str]) -> str | None:
    """What is wrong with the pickle's ``result`` for ``live``, compared with the predictions of
    ``model`` in this (the training) environment; None when it is a valid submission equal to them."""
    if list(result.columns) != ["prediction"]:
        return f"returned columns {list(result.columns)}, not [prediction]"
    submission = result.reset_index().rename(columns={"index": ID})[[ID, "prediction"]]
    ids = live.index.to_numpy() if ID not in live.columns else live[ID].to_numpy()
    try:
        validate_submission(submission, ids)
    except FxmlError as error:
        return f"returned an invalid submission: {error}"
    values = live[features].fillna(MISSING_FEATURE_VALUE).to_numpy(dtype=np.int8)
    expected = ranked_submission(ids, model.predict(values, None))
    merged = expected.merge(submission, on=ID, suffixes=("_here", "_pickle"))
    gap = (merged["prediction_here"] - merged["prediction_pickle"]).abs().to_numpy()
    differ = int((gap > 1e-12).sum())
    if differ == 0:
        return None
    return (f"predicts differently from the training environment in {differ} of {len(gap)} rows "
            f"(largest difference {gap.max():.3g})")


@dataclass
class CheckReport:
    rows: int
    imports: list[str]


def check_in_fresh_process(output: Path, model: TabularModel, features: list[str],
                           live: pd.DataFrame, benchmark: pd.DataFrame) -> CheckReport:
    """Call the pickle in a new process of this interpreter, without fxml; its output must be a
    valid submission equal to what the model predicts here."""
    run = run_pickle(sys.executable, output, live, benchmark)
    if run.result is None:
        raise FxmlError(f"{output} fails in a fresh Python process: {run.error}")
    problem = prediction_problem(run.result, live, model, features)
    if problem is not None:
        raise FxmlError(f"{output} (in a fresh Python process) {problem}")
    return CheckReport(len(run.result), run.imports)
