"""A pickle for Numerai's hosted compute: what ``numerapi.NumerAPI().model_upload`` expects.

The file holds one function, ``predict(live_features, live_benchmark_models) -> DataFrame`` (index
``id``, column ``prediction``: per-era ranks in (0, 1)). It carries the fitted fxml model, and
fxml's own code is pickled by value (``cloudpickle.register_pickle_by_value``), so the hosted
environment needs only the libraries the model calls (numpy, pandas, and lightgbm or xgboost...;
the check below lists them) and the same Python minor version as the machine that wrote it.

:func:`check_in_fresh_process` unpickles it in a new Python process in which ``import fxml``
fails, calls it on live-shaped data and validates the result against Numerai's rules.
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
CHECK_SCRIPT = r'''
import builtins, importlib.abc, json, pickle, sys

class NoFxml(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "fxml" or name.startswith("fxml."):
            raise ImportError(f"no module named {name} (as on Numerai's hosted compute)")
        return None

sys.meta_path.insert(0, NoFxml())
import pandas as pd

pickle_path, live_path, benchmark_path, out_path = sys.argv[1:5]
live = pd.read_parquet(live_path)
benchmark = pd.read_parquet(benchmark_path)
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

builtins.__import__ = recording_import
with open(pickle_path, "rb") as handle:
    predict = pickle.load(handle)
result = predict(live, benchmark)
builtins.__import__ = real_import
if not isinstance(result, pd.DataFrame):
    raise TypeError(f"predict returned {type(result).__name__}, not a DataFrame")
result.to_parquet(out_path)
stdlib = set(sys.stdlib_module_names)
print(json.dumps(sorted(n for n in requested if n not in stdlib and not n.startswith("_"))))
'''


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
class CheckReport:
    rows: int
    imports: list[str]


def check_in_fresh_process(output: Path, model: TabularModel, features: list[str],
                           live: pd.DataFrame, benchmark: pd.DataFrame) -> CheckReport:
    """Call the pickle in a new process without fxml; its output must be a valid submission
    equal to what the model predicts here."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = [folder / name for name in ("check.py", "live.parquet", "benchmark.parquet",
                                            "out.parquet")]
        paths[0].write_text(CHECK_SCRIPT)
        live.to_parquet(paths[1])
        benchmark.to_parquet(paths[2])
        done = subprocess.run([sys.executable, "-I", *map(str, paths[:1]), str(output.resolve()),
                               *map(str, paths[1:])], cwd=folder, capture_output=True, text=True,
                              timeout=600)
        if done.returncode != 0:
            raise FxmlError(f"{output} fails in a fresh Python process: "
                            f"{child_failure(done.stderr, done.returncode)}")
        result = pd.read_parquet(paths[3])
    imports = json.loads(done.stdout.strip().splitlines()[-1])
    if list(result.columns) != ["prediction"]:
        raise FxmlError(f"{output}: predict returned columns {list(result.columns)}, not [prediction]")
    submission = result.reset_index().rename(columns={"index": ID})[[ID, "prediction"]]
    ids = live.index.to_numpy() if ID not in live.columns else live[ID].to_numpy()
    validate_submission(submission, ids)
    values = live[features].fillna(MISSING_FEATURE_VALUE).to_numpy(dtype=np.int8)
    expected = ranked_submission(ids, model.predict(values, None))
    merged = expected.merge(submission, on=ID, suffixes=("_here", "_pickle"))
    if len(merged) != len(expected) or not np.allclose(merged["prediction_here"],
                                                        merged["prediction_pickle"], atol=1e-12):
        raise FxmlError(f"{output} predicts differently from the registered model")
    return CheckReport(len(submission), imports)
