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
# train and validation in one file (eras 0001 on), from v5.3
FULL = "full.parquet"
SPLIT_FILES = {"train": TRAIN, "validation": VALIDATION, "live": LIVE, "full": FULL}
BENCHMARK_FILES = {split: f"{split}_benchmark_models.parquet" for split in SPLIT_FILES}
EXAMPLE_PREDS_FILES = {split: f"{split}_example_preds.parquet" for split in ("live", "validation")}
# the newest release layout fxml knows, and the first with full.parquet and the quantum features
NEWEST_VERSION = "v5.3"
FULL_SINCE = (5, 3)
QUANTUM = "quantum"

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


def release_files(version: str) -> tuple[str, ...]:
    """Every file of a v5 release, as numerapi lists them."""
    splits = [split for split in SPLIT_FILES if split != "full" or has_full_file(version)]
    return (FEATURES_JSON, *(SPLIT_FILES[s] for s in splits), META_MODEL,
            *EXAMPLE_PREDS_FILES.values(), *(BENCHMARK_FILES[s] for s in splits))


def has_full_file(version: str) -> bool:
    """Whether the release ships train and validation together as ``full.parquet`` (v5.3 on)."""
    return version_key(version if version.startswith("v") else f"v{version}") >= FULL_SINCE


def version_prefix(version: str) -> str:
    """Benchmark column prefix of a version label: "v5.2" -> "v52"."""
    digits = re.sub(r"[^0-9a-z]", "", version.lower())
    return digits if digits.startswith("v") else "v" + digits


def top_benchmark(version: str) -> str:
    """The benchmark model Numerai computes BMC against: its LightGBM on the main target
    (``v53_lgbm_ender20`` in v5.3)."""
    return f"{version_prefix(version)}_lgbm_ender20"


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
