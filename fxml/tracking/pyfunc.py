"""Any fxml model as an MLflow pyfunc model that carries what it needs to predict.

The logged model holds the model's own saved state plus a manifest of the feature columns, the data
version and the target, so ``mlflow.pyfunc.load_model(uri).predict(frame)`` works on a frame of
Numerai features without fxml's config.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from fxml import __version__
from fxml.data.layout import era_numbers
from fxml.models.base import TabularModel, load_model

MODEL_ARTIFACT = "model"
MANIFEST = "fxml_pyfunc.json"


class FxmlPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        directory = Path(context.artifacts["fxml_model"])
        self.manifest = json.loads((directory / MANIFEST).read_text())
        self.model = load_model(directory)

    @property
    def feature_names(self) -> list[str]:
        return self.manifest["features"]

    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict | None = None) -> np.ndarray:
        missing = [name for name in self.feature_names if name not in model_input.columns]
        if missing:
            raise ValueError(f"input lacks {len(missing)} feature column(s), e.g. {missing[0]}")
        features = model_input[self.feature_names].to_numpy(dtype=np.int8)
        eras = era_numbers(model_input["era"].to_numpy()) if "era" in model_input else None
        return self.model.predict(features, eras)


def log_pyfunc_model(model: TabularModel, feature_names: list[str],
                     manifest: dict[str, Any]) -> str:
    """Log ``model`` to the active run; returns the model URI."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "fxml_model"
        model.save(directory)
        (directory / MANIFEST).write_text(json.dumps({**manifest, "features": feature_names}))
        example = pd.DataFrame(np.full((2, len(feature_names)), 2, dtype=np.int8),
                               columns=feature_names)
        signature = mlflow.models.infer_signature(example, model.predict(example.to_numpy()))
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=FxmlPyfunc(),
            artifacts={"fxml_model": str(directory)},
            signature=signature,
            # fxml itself must be importable where the model is loaded
            pip_requirements=[f"fxml=={__version__}", "lightgbm", "xgboost", "numpy", "pandas"],
        )
    return info.model_uri
