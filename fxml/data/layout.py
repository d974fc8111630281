"""Names and encodings of Numerai's v5 release, shared by the loader, the sources and the writer."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from fxml.errors import FxmlError

FEATURES_JSON = "features.json"
TRAIN = "train.parquet"
VALIDATION = "validation.parquet"
LIVE = "live.parquet"
META_MODEL = "meta_model.parquet"
META_MODEL_COLUMN = "numerai_meta_model"
SPLIT_FILES = {"train": TRAIN, "validation": VALIDATION, "live": LIVE}
BENCHMARK_FILES = {split: f"{split}_benchmark_models.parquet" for split in SPLIT_FILES}
EXAMPLE_PREDS_FILES = {split: f"{split}_example_preds.parquet" for split in ("live", "validation")}
# every file of a v5 release, as numerapi lists them
RELEASE_FILES: tuple[str, ...] = (FEATURES_JSON, *SPLIT_FILES.values(), META_MODEL,
                                  *EXAMPLE_PREDS_FILES.values(), *BENCHMARK_FILES.values())

ID, ERA, DATA_TYPE, PREDICTION = "id", "era", "data_type", "prediction"
# Live rows carry a non-numeric era ("X"); they get one sentinel era number.
LIVE_ERA = -1
PARQUET_MAGIC = b"PAR1"

_VERSION = re.compile(r"^v(\d+)\.(\d+)$")


def version_key(version: str) -> tuple[int, int]:
    match = _VERSION.match(version)
    if match is None:
        raise FxmlError(f"data.version {version!r} is not a release name such as v5.2")
    return int(match.group(1)), int(match.group(2))


def era_numbers(eras: np.ndarray) -> np.ndarray:
    """Zero-padded era strings to int32; the live era ("X") becomes LIVE_ERA."""
    text = np.asarray(eras, dtype=str)
    numeric = np.char.isdigit(text)
    out = np.full(text.shape, LIVE_ERA, dtype=np.int32)
    out[numeric] = text[numeric].astype(np.int32)
    return out


def check_parquet(path: Path) -> None:
    """Fail on a missing or truncated file before Polars reports something cryptic."""
    if not path.is_file():
        raise FxmlError(f"missing data file {path}")
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(4)
        handle.seek(max(size - 4, 0))
        tail = handle.read(4)
    if size < 12 or head != PARQUET_MAGIC or tail != PARQUET_MAGIC:
        raise FxmlError(
            f"{path} is not a complete parquet file (corrupt or partly downloaded): "
            "delete it to fetch it again"
        )


def read_feature_metadata(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FxmlError(f"missing data file {path}")
    try:
        metadata = json.loads(path.read_text())
        metadata["feature_sets"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise FxmlError(f"{path} is not a Numerai features.json ({error})") from None
    return metadata
