"""Any fxml model as an MLflow pyfunc model that carries what it needs to predict.

The logged model holds the model's own saved state plus a manifest of the feature columns, the data
version and the target, so ``mlflow.pyfunc.load_model(uri).predict(frame)`` works on a frame of
Numerai features without fxml's config. fxml's own code travels inside the model (MLflow
``code_paths``) and its ``requirements.txt`` pins only the public distributions that loading this
model imports (``fxml.tracking.requirements``), so the model loads and serves in an environment
built from that file alone. This module is what MLflow unpickles there: it imports only MLflow,
NumPy, pandas and the light parts of fxml (no loader, config, tracking runs or sweeps).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types import ColSpec, DataType, Schema

from fxml.data.layout import era_numbers
from fxml.models.base import TabularModel, load_model
from fxml.tracking.requirements import copy_fxml_code, pip_requirements

MODEL_ARTIFACT = "model"
MANIFEST = "fxml_pyfunc.json"


class FxmlPyfunc(PythonModel):
    def load_context(self, context: Any) -> None:
        directory = Path(context.artifacts["fxml_model"])
        self.manifest = json.loads((directory / MANIFEST).read_text())
        self.model = load_model(directory)

    @property
    def feature_names(self) -> list[str]:
        return self.manifest["features"]

    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> np.ndarray:
        missing = [name for name in self.feature_names if name not in model_input.columns]
        if missing:
            raise ValueError(f"input lacks {len(missing)} feature column(s), e.g. {missing[0]}")
        # C order, as the runner predicts: a column-major copy would sum in another order (BLAS)
        features = np.ascontiguousarray(model_input[self.feature_names].to_numpy(dtype=np.int8))
        eras = era_numbers(model_input["era"].to_numpy()) if "era" in model_input else None
        return self.model.predict(features, eras)


def log_pyfunc_model(model: TabularModel, feature_names: list[str],
                     manifest: dict[str, Any]) -> str:
    """Log ``model`` to the active run; returns the model URI."""
    # a wrapper (post-processing, ensemble) may read more columns than the run's feature set,
    # and says what it does: the manifest records both
    feature_names = list(getattr(model, "input_features", None) or feature_names)
    manifest = {**manifest, **getattr(model, "describe", dict)()}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "fxml_model"
        model.save(directory)
        (directory / MANIFEST).write_text(json.dumps({**manifest, "features": feature_names}))
        example = pd.DataFrame(np.full((2, len(feature_names)), 2, dtype=np.int8),
                               columns=feature_names)
        signature = mlflow.models.infer_signature(example, model.predict(example.to_numpy()))
        if getattr(model, "per_era", False):
            # per-era steps (ranks, neutralisation) need the era column: keep it past the schema
            inputs = Schema([*signature.inputs.inputs, ColSpec(DataType.string, "era", required=False)])
            signature = ModelSignature(inputs=inputs, outputs=signature.outputs)
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=FxmlPyfunc(),
            artifacts={"fxml_model": str(directory)},
            signature=signature,
            # fxml's code goes with the model; its environment needs only public distributions
            code_paths=[str(copy_fxml_code(Path(tmp) / "code"))],
            pip_requirements=pip_requirements(model),
        )
    return info.model_uri
