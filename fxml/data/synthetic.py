"""Offline synthetic dataset in the exact layout of a Numerai v5 release.

``write_synthetic(directory, spec)`` writes the files of a real v5 release (``SYNTHETIC_FILES``) so
that the same loader reads either. Everything is a pure function of the spec: every era draws from
its own ``numpy.random.default_rng([seed, stream, era])``, so the same spec gives the same arrays.

Layout (as in Numerai's files): parquet with pandas metadata marking ``id`` as the index (pandas
reads ``id`` back as the index, Polars sees an ``id`` column, stored first); ``era`` zero-padded
strings ("0001", live "X"); ``data_type``; ``feature_*`` int8 in 0..4 (missing values filled with
2); float32 targets in {0, .25, .5, .75, 1} with 5/20/50/20/5 % per era, NaN stored as parquet
nulls (what ``pyarrow.Table.from_pandas`` writes for NaN); ``target == target_ender_20``. Rows are
sorted by era, then id.

Signal design. Features are quantised correlated Gaussians (one latent factor per named feature
group). A row's true score is, per era, ``x . w_era`` with ``w_era = base + r1[era] * load1 +
r2[era] * load2`` (AR(1) regimes: feature usefulness drifts and flips) mixed with fixed non-linear
terms (gated slopes ``x_b * 1[x_a >= 3]`` and U-shapes ``x_c**2``, 65 % of the variance), then
standardised per era. Each target is the per-era rank-binning (5/20/50/20/5 %) of ``snr[era] *
score_k + noise``: ``score_k`` mixes the common score with a target-specific linear score, and the
noise has a part common to all targets, one shared by the 20- and 60-day variants of a name and
one of its own. The meta model, benchmark models and example predictions are per-era ranks of a
"crowd" score (the same model with the weights averaged over the train eras, as a model fitted on
history would learn) plus noise, so the meta model is good but a typical model's MMC is small. The
small set holds the features with the largest weights and most of the non-linear terms. Defaults
(``_BASE_SNR``) are calibrated so that LightGBM (150 trees, depth 5) on the small set scores a
validation CORR mean of about 0.03 and a ridge model on the same features about 0.025.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fxml.data.layout import (
    BENCHMARK_FILES,
    DATA_TYPE,
    ERA,
    EXAMPLE_PREDS_FILES,
    FEATURES_JSON,
    ID,
    META_MODEL,
    META_MODEL_COLUMN,
    NEWEST_VERSION,
    PREDICTION,
    QUANTUM,
    SPLIT_FILES,
    has_full_file,
    release_files,
    version_prefix,
)
from fxml.data.leftovers import remove_dead_leftovers
from fxml.errors import FxmlError

__all__ = ["SYNTHETIC_FILES", "SyntheticSpec", "write_synthetic"]

GENERATOR_VERSION = 1
MARKER_NAME = ".synthetic.json"

# the files of the default (newest) layout; synthetic_files(version) for another
SYNTHETIC_FILES: tuple[str, ...] = release_files(NEWEST_VERSION)
# the share of v5.3's features that are its new `quantum` set (807 of about 3,555)
QUANTUM_SHARE = 807 / 3555

TARGET_NAMES: tuple[str, ...] = ("cyrusd", "ender", "jasper", "teager2b", "victor", "xerxes")
HORIZONS: tuple[int, ...] = (20, 60)
MAIN_TARGET_SOURCE = "target_ender_20"
BENCHMARK_NAMES: tuple[str, ...] = ("ender", "cyrusd", "teager2b")
FEATURE_GROUPS: tuple[str, ...] = (
    "intelligence",
    "charisma",
    "strength",
    "dexterity",
    "constitution",
    "wisdom",
    "agility",
    "serenity",
)
LIVE_ERA = "X"


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_ADJECTIVES = _words(
    "abating brackish cosmic damask eolithic feral gauzy hirsute inert jointed knobbed lucent "
    "mirthful nodal ornate palatal quaggy rimless sodden tonal umbral vernal wintry zonal"
)
_NOUNS = _words(
    "anchor bramble caldera delta estuary fathom gable harbour isthmus jetty keel lagoon "
    "meadow nimbus orchard plinth quarry rampart shoal tundra upland valley wharf zenith"
)
_WORDS = _words(
    "aftershock bulwark cinnabar dirigible ember filament granary halyard ingot juniper "
    "kestrel lattice monsoon nautilus obelisk pennant quadrant rosette sextant trellis "
    "undertow vortex windlass yardarm"
)

# Thresholds of the standard normal at its 20/40/60/80 % quantiles: equal-count feature bins.
_FEATURE_EDGES = np.array(
    [-0.8416212335729143, -0.2533471031357997, 0.2533471031357997, 0.8416212335729143],
    dtype=np.float32,
)
# Cumulative target bin proportions 5/20/50/20/5 %.
_TARGET_EDGES = np.array([0.05, 0.25, 0.75, 0.95])
_TARGET_VALUES = np.array([0.0, 0.25, 0.5, 0.75, 1.0], dtype=np.float32)

_CHUNK_ROWS = 65_536  # rows per parquet row group (whole eras)
_NONLINEAR_SHARE = 0.65  # share of the true score's variance from non-linear terms
_BASE_SNR = 0.08  # signal-to-noise of the targets at signal_strength 1
# Target noise = common (all targets) + per name (20 and 60 day) + own, unit variance.
_NOISE_MIX = np.sqrt([0.45, 0.25, 0.30])
_AUX_NAN_RATE = 0.02  # share of rows with a NaN auxiliary target (all but target/ender_20)
_META_Q = 2.5  # meta model = rank(q * crowd + noise): corr(meta, crowd) ~ 0.93
_BENCHMARK_Q = 0.6  # benchmark models: corr ~ 0.5 with the crowd score
_EXAMPLE_Q = 0.5  # example predictions: corr ~ 0.45 with the crowd score

# Streams of the seeded generators.
_S_PARAMS, _S_ERA, _S_SIZES, _S_IDS = 1, 2, 3, 4

_MASK60 = np.uint64((1 << 60) - 1)
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate; every field goes into the marker file, so any change regenerates."""

    version: str = NEWEST_VERSION
    train_eras: int = 120
    validation_eras: int = 40
    unresolved_eras: int = 4
    rows_per_era: int = 400
    live_rows: int = 500
    n_features: int = 120
    seed: int = 0
    signal_strength: float = 1.0  # multiplies the targets' signal-to-noise ratio
    regime_strength: float = 1.0  # multiplies the era drift of the feature weights


# ----------------------------------------------------------------------------------------------
# Public entry point


def write_synthetic(directory: Path, spec: SyntheticSpec = SyntheticSpec()) -> Path:  # noqa: B008
    """Write the dataset into ``directory`` (created if needed) and return it.

    Does nothing when the directory already holds a complete dataset for the same spec (the
    marker file ``.synthetic.json``, written last, matches and every file exists). Every file is
    written under a temporary name and renamed, so no half-written file carries a real name.
    """
    validate_spec(spec)
    directory = Path(directory)
    marker = directory / MARKER_NAME
    expected = _marker_payload(spec)
    remove_dead_leftovers(directory)
    if _is_complete(directory, expected):
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)  # an interrupted rewrite must not look complete
    _Generator(spec).write(directory)
    _write_text_atomic(marker, json.dumps(expected, indent=2, sort_keys=True) + "\n")
    return directory


def feature_set_sizes(n_features: int) -> tuple[int, int]:
    """(small, medium) sizes for ``n_features`` features: medium ~30 %, small half of it <= 42."""
    medium = max(1, round(0.3 * n_features))
    small = min(42, max(1, medium // 2))
    return small, medium


# ----------------------------------------------------------------------------------------------
# Spec checks and the marker


def validate_spec(spec: SyntheticSpec, key_prefix: str = "synthetic data: ") -> None:
    """Reject a spec that cannot be generated; ``key_prefix`` names where the values came from."""
    ints = {
        "train_eras": 1,
        "validation_eras": 1,
        "unresolved_eras": 0,
        "rows_per_era": 20,
        "live_rows": 1,
        "n_features": 10,
        "seed": 0,
    }
    for name, low in ints.items():
        value = getattr(spec, name)
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise FxmlError(f"{key_prefix}{name} must be an integer >= {low}, got {value!r}")
    if spec.unresolved_eras >= spec.validation_eras:
        raise FxmlError(
            f"{key_prefix}unresolved_eras must be smaller than validation_eras "
            f"({spec.unresolved_eras} >= {spec.validation_eras})"
        )
    max_features = len(_ADJECTIVES) * len(_NOUNS) * len(_WORDS)
    if spec.n_features > max_features:
        raise FxmlError(f"{key_prefix}n_features must be <= {max_features}")
    for name in ("signal_strength", "regime_strength"):
        value = getattr(spec, name)
        if not isinstance(value, int | float) or not np.isfinite(value) or value < 0:
            raise FxmlError(f"{key_prefix}{name} must be a finite number >= 0, got {value!r}")
    if not re.fullmatch(r"v?\d+(\.\d+)*", str(spec.version)):
        raise FxmlError(f"{key_prefix}version must look like 'v5.2', got {spec.version!r}")


def _marker_payload(spec: SyntheticSpec) -> dict[str, Any]:
    spec_dict = {k: (float(v) if isinstance(v, float) else v) for k, v in asdict(spec).items()}
    return {"generator": GENERATOR_VERSION, "spec": spec_dict, "files": list(release_files(spec.version))}


def _is_complete(directory: Path, expected: dict[str, Any]) -> bool:
    marker = directory / MARKER_NAME
    try:
        found = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if found != json.loads(json.dumps(expected)):
        return False
    return all((directory / name).is_file() for name in found["files"])


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = _tmp_path(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------
# Small numeric helpers


def _ar1(rng: np.random.Generator, n: int, phi: float) -> np.ndarray:
    """Stationary AR(1) series with unit variance."""
    shocks = rng.standard_normal(n)
    out = np.empty(n)
    out[0] = shocks[0]
    scale = np.sqrt(1.0 - phi * phi)
    for i in range(1, n):
        out[i] = phi * out[i - 1] + scale * shocks[i]
    return out


def _standardise(x: np.ndarray) -> np.ndarray:
    std = x.std()
    return (x - x.mean()) / std if std > 0 else np.zeros_like(x)


def _matvec(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """``matrix @ vector`` in float32 without BLAS: its thread pool is slow on small, busy hosts."""
    return np.einsum("nf,f->n", matrix, vector.astype(np.float32))


def _bin_targets(values: np.ndarray) -> np.ndarray:
    """Per-column rank-binning of continuous values into 0, .25, .5, .75, 1 (5/20/50/20/5 %).

    Equivalent to binning (rank + 0.5) / n at the cumulative edges, in linear time: the value of
    rank ceil(edge * n - 0.5) is the first one of the next bin.
    """
    n = values.shape[0]
    cuts = np.ceil(_TARGET_EDGES * n - 0.5).astype(np.intp)
    thresholds = np.partition(values, cuts, axis=0)[cuts]
    bins = np.zeros(values.shape, dtype=np.intp)
    for threshold in thresholds:
        bins += values >= threshold
    return _TARGET_VALUES[bins]


def _squash(values: np.ndarray, scale: float) -> np.ndarray:
    """Predictions in (0, 1): a logistic of values of standard deviation ``scale``."""
    p = 1.0 / (1.0 + np.exp(-1.7 * values / scale))
    return np.clip(p, 1e-6, 1 - 1e-6).astype(np.float32)


def _mix60(x: np.ndarray) -> np.ndarray:
    """A bijection of 60-bit integers (odd multiplications, xor-shifts) scrambling row indices."""
    x = x & _MASK60
    x = (x * np.uint64(0x9E3779B97F4A7C15)) & _MASK60
    x ^= x >> np.uint64(31)
    x = (x * np.uint64(0xBF58476D1CE4E5B9)) & _MASK60
    x ^= x >> np.uint64(29)
    x = (x * np.uint64(0x94D049BB133111EB)) & _MASK60
    x ^= x >> np.uint64(32)
    return x


def _id_strings(values: np.ndarray) -> pa.Array:
    """Ids "n" + 15 lowercase hex digits of 60-bit values, as a pyarrow string array."""
    n = len(values)
    shifts = np.arange(56, -1, -4, dtype=np.uint64)
    digits = ((values[:, None] >> shifts[None, :]) & np.uint64(15)).astype(np.intp)
    chars = np.empty((n, 16), dtype=np.uint8)
    chars[:, 0] = ord("n")
    chars[:, 1:] = _HEX[digits]
    offsets = np.arange(0, 16 * (n + 1), 16, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(chars.tobytes()))


def _repeat_strings(labels: list[str], counts: list[int]) -> pa.Array:
    indices = np.repeat(np.arange(len(labels), dtype=np.int32), counts)
    return pa.DictionaryArray.from_arrays(indices, pa.array(labels, pa.string())).cast(pa.string())


def _float_column(values: np.ndarray, nan_mask: np.ndarray | None = None) -> pa.Array:
    values = np.ascontiguousarray(values, dtype=np.float32)
    if nan_mask is None or not nan_mask.any():
        return pa.array(values, type=pa.float32())
    return pa.array(values, type=pa.float32(), mask=nan_mask)


def _pandas_metadata(schema: pa.Schema) -> bytes:
    """pandas metadata marking ``id`` as the index, as ``DataFrame.to_parquet`` writes it."""

    def describe(field: pa.Field) -> dict[str, Any]:
        if pa.types.is_string(field.type):
            kind = ("unicode", "object")
        else:
            kind = (np.dtype(field.type.to_pandas_dtype()).name,) * 2
        return {
            "name": field.name,
            "field_name": field.name,
            "pandas_type": kind[0],
            "numpy_type": kind[1],
            "metadata": None,
        }

    try:
        pandas_version = importlib.metadata.version("pandas")
    except importlib.metadata.PackageNotFoundError:
        pandas_version = "2.2.3"
    meta = {
        "index_columns": [ID],
        "column_indexes": [
            {
                "name": None,
                "field_name": None,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": {"encoding": "UTF-8"},
            }
        ],
        "columns": [describe(f) for f in schema if f.name != ID] + [describe(schema.field(ID))],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": pandas_version,
    }
    return json.dumps(meta).encode()


class _Sink:
    """A parquet file written row group by row group under a temporary name, renamed on commit."""

    def __init__(self, path: Path, fields: list[pa.Field]):
        schema = pa.schema(fields)
        self.schema = schema.with_metadata({b"pandas": _pandas_metadata(schema)})
        self.path = path
        self.tmp = _tmp_path(path)
        self.writer = pq.ParquetWriter(self.tmp, self.schema, compression="snappy")

    def write(self, columns: list[pa.Array]) -> None:
        if len(columns[0]):
            self.writer.write_table(pa.Table.from_arrays(columns, schema=self.schema))

    def commit(self) -> None:
        self.writer.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Drop the temporary file unless committed (a no-op after ``commit``)."""
        with contextlib.suppress(Exception):
            self.writer.close()
        self.tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------
# The generator


@dataclass
class _Era:
    """One era's generated data."""

    label: str
    number: int  # 0-based era index of the release (the live era last)
    ids: np.ndarray  # uint64, sorted
    features: np.ndarray  # (n, F) int8
    targets: np.ndarray  # (n, T) float32 (NaN where unresolved)
    nan: np.ndarray  # (n, T) bool
    benchmarks: np.ndarray  # (n, B) float32
    example: np.ndarray  # (n,) float32
    meta: np.ndarray | None  # (n,) float32 or None where the meta model does not cover the era


class _Generator:
    def __init__(self, spec: SyntheticSpec):
        self.spec = spec
        seed = int(spec.seed)
        self.seed = seed
        n_feat = spec.n_features
        self.n_eras = spec.train_eras + spec.validation_eras
        rng = np.random.default_rng([seed, _S_PARAMS])

        # Names and sets.
        combos = rng.choice(len(_ADJECTIVES) * len(_NOUNS) * len(_WORDS), n_feat, replace=False)
        a, rest = np.divmod(combos, len(_NOUNS) * len(_WORDS))
        b, c = np.divmod(rest, len(_WORDS))
        self.feature_names = [
            f"feature_{_ADJECTIVES[i]}_{_NOUNS[j]}_{_WORDS[k]}"
            for i, j, k in zip(a, b, c, strict=True)
        ]
        self.small, self.medium = feature_set_sizes(n_feat)
        self.group = rng.permutation(np.arange(n_feat) % len(FEATURE_GROUPS))
        self.aux_targets = sorted(f"target_{n}_{h}" for n in TARGET_NAMES for h in HORIZONS)
        self.target_columns = ["target", *self.aux_targets]
        prefix = version_prefix(spec.version)
        self.benchmark_columns = [
            f"{prefix}_lgbm_{n}{h}" for n in BENCHMARK_NAMES for h in HORIZONS
        ]

        # Feature correlation: loading of each feature on its group factor.
        self.rho = rng.uniform(0.1, 0.5, n_feat).astype(np.float32)

        # Linear weights: base + two regime loadings; the small set carries the largest ones.
        scale = np.full(n_feat, 0.6)
        scale[: self.medium] = 1.0
        scale[: self.small] = 1.8
        informative = rng.random(n_feat) < 0.6
        informative[: self.small] |= rng.random(self.small) < 0.5
        scale *= informative
        self.base = rng.standard_normal(n_feat) * scale
        self.load = rng.standard_normal((2, n_feat)) * scale * 0.8

        # Non-linear terms: products of feature pairs (half inside the small set) and squares.
        n_pairs = max(2, n_feat // 12)
        in_small = (3 * n_pairs) // 4 if self.small >= 2 else 0
        pairs = [rng.choice(self.small, 2, replace=False) for _ in range(in_small)]
        pairs += [rng.choice(n_feat, 2, replace=False) for _ in range(n_pairs - in_small)]
        self.pair_a = np.array([p[0] for p in pairs])
        self.pair_b = np.array([p[1] for p in pairs])
        self.pair_w = rng.choice([-1.0, 1.0], n_pairs) * rng.uniform(0.5, 1.5, n_pairs)
        n_sq = max(1, n_feat // 30)
        self.sq_idx = np.concatenate(
            [
                rng.choice(self.small, min(self.small, (n_sq + 1) // 2), replace=False),
                rng.choice(n_feat, n_sq // 2, replace=False),
            ]
        )
        self.sq_w = rng.choice([-1.0, 1.0], len(self.sq_idx)) * rng.uniform(
            0.5, 1.5, len(self.sq_idx)
        )

        # Target-specific linear scores and their mixing weight (ender is the common score).
        self.target_w = rng.standard_normal((len(TARGET_NAMES), n_feat)) * scale
        self.target_gamma = rng.uniform(0.3, 0.8, len(TARGET_NAMES))
        self.target_gamma[TARGET_NAMES.index("ender")] = 0.0

        # Missing values: a quarter of the features lose 0.5-5 % of values, and a few features
        # outside the medium set only exist from a later era (filled with 2 before).
        self.miss_idx = np.flatnonzero(rng.random(n_feat) < 0.25)
        self.miss_rate = rng.uniform(0.005, 0.05, len(self.miss_idx))
        late = np.arange(self.medium, n_feat)
        late = late[rng.random(len(late)) < 0.1]
        self.late_idx = late
        self.late_start = rng.integers(
            max(1, self.n_eras // 10), max(2, self.n_eras // 2), len(late)
        )

        # Era-level series (one more for live): regimes and signal-to-noise.
        n_series = self.n_eras + 1
        self.regimes = np.stack([_ar1(rng, n_series, 0.95), _ar1(rng, n_series, 0.8)])
        train_regime = self.regimes[:, : spec.train_eras].mean(axis=1)
        self.crowd_w = self.base + spec.regime_strength * (train_regime @ self.load)
        snr_wobble = np.clip(1.0 + 0.35 * _ar1(rng, n_series, 0.7), 0.2, None)
        self.snr = _BASE_SNR * float(spec.signal_strength) * snr_wobble

        # Era sizes (+-20 %), then the row-index offsets that feed the ids.
        size_rng = np.random.default_rng([seed, _S_SIZES])
        jitter = size_rng.uniform(-0.2, 0.2, self.n_eras)
        sizes = np.maximum(5, np.rint(spec.rows_per_era * (1.0 + jitter))).astype(np.int64)
        self.sizes = np.append(sizes, spec.live_rows)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        id_rng = np.random.default_rng([seed, _S_IDS])
        self.id_offset = np.uint64(id_rng.integers(0, 1 << 60, dtype=np.uint64))

        # Resolution: the last unresolved eras have no targets, 60-day targets lag three times
        # longer, the meta model misses the unresolved eras.
        val0 = spec.train_eras
        self.unresolved_from = self.n_eras - spec.unresolved_eras
        self.unresolved60_from = max(val0, self.n_eras - 3 * spec.unresolved_eras)
        self.meta_until = self.unresolved_from
        self.h60 = np.array([t.endswith("_60") for t in self.aux_targets])
        self.aux_nan_ok = np.array([t != MAIN_TARGET_SOURCE for t in self.aux_targets])

    # -- feature sets ------------------------------------------------------------------------

    def features_json(self) -> dict[str, Any]:
        names = self.feature_names
        sets: dict[str, list[str]] = {
            "small": names[: self.small],
            "medium": names[: self.medium],
            "all": list(names),
        }
        for g, group in enumerate(FEATURE_GROUPS):
            sets[group] = [n for n, gg in zip(names, self.group, strict=True) if gg == g]
        if has_full_file(self.spec.version):
            # v5.3's new features: the last ones here, outside small and medium
            sets[QUANTUM] = names[len(names) - max(1, round(QUANTUM_SHARE * len(names))):]
        return {"feature_sets": sets, "targets": list(self.target_columns)}

    # -- one era -------------------------------------------------------------------------------

    def era_label(self, e: int) -> str:
        return LIVE_ERA if e == self.n_eras else f"{e + 1:04d}"

    def era(self, e: int) -> _Era:
        n = int(self.sizes[e])
        n_feat = self.spec.n_features
        rng = np.random.default_rng([self.seed, _S_ERA, e])

        # Features: correlated Gaussians quantised into five equal-count bins.
        factors = rng.standard_normal((n, len(FEATURE_GROUPS)), dtype=np.float32)
        z = rng.standard_normal((n, n_feat), dtype=np.float32)
        z *= np.sqrt(1.0 - self.rho)
        z += factors[:, self.group] * np.sqrt(self.rho)
        x = np.zeros((n, n_feat), dtype=np.int8)
        for edge in _FEATURE_EDGES:
            x += z > edge
        xc = x.astype(np.float32) - 2.0

        # True score: drifting linear weights plus fixed non-linear terms (gated slopes: feature
        # b counts only where feature a is high; U-shapes). The "crowd" score uses the weights
        # averaged over the train eras, as a model fitted on history would.
        gate = (x[:, self.pair_a] >= 3).astype(np.float32) - 0.4
        nonlinear = _matvec(xc[:, self.pair_b] * gate, self.pair_w)
        nonlinear += _matvec(xc[:, self.sq_idx] ** 2 - 2.0, self.sq_w)
        nonlinear = _standardise(nonlinear)

        def combine(weights: np.ndarray) -> np.ndarray:
            linear = _standardise(_matvec(xc, weights))
            mixed = np.sqrt(1 - _NONLINEAR_SHARE) * linear + np.sqrt(_NONLINEAR_SHARE) * nonlinear
            return _standardise(mixed).astype(np.float64)

        w_era = self.base + self.spec.regime_strength * (self.regimes[:, e] @ self.load)
        score = combine(w_era)
        crowd = combine(self.crowd_w)

        # Targets: per name a mix of the common and a specific score, plus layered noise.
        specific = np.einsum("nf,kf->nk", xc, self.target_w.astype(np.float32))
        specific = (specific - specific.mean(0)) / np.maximum(specific.std(0), 1e-12)
        gamma = self.target_gamma
        name_scores = (score[:, None] + gamma * specific) / np.sqrt(1 + gamma**2)
        common = rng.standard_normal((n, 1, 1))
        shared = rng.standard_normal((n, len(TARGET_NAMES), 1))
        own = rng.standard_normal((n, len(TARGET_NAMES), len(HORIZONS)))
        noise = _NOISE_MIX[0] * common + _NOISE_MIX[1] * shared + _NOISE_MIX[2] * own
        noisy = self.snr[e] * name_scores[:, :, None] + noise
        by_column = {
            f"target_{name}_{h}": noisy[:, i, j]
            for i, name in enumerate(TARGET_NAMES)
            for j, h in enumerate(HORIZONS)
        }
        aux = np.stack([by_column[c] for c in self.aux_targets], axis=1)
        aux_values = _bin_targets(aux)
        aux_nan = (rng.random(aux.shape) < _AUX_NAN_RATE) & self.aux_nan_ok
        if e >= self.unresolved_from:
            aux_nan[:] = True
        elif e >= self.unresolved60_from:
            aux_nan[:, self.h60] = True
        main = self.aux_targets.index(MAIN_TARGET_SOURCE)
        targets = np.concatenate([aux_values[:, [main]], aux_values], axis=1)
        nan = np.concatenate([aux_nan[:, [main]], aux_nan], axis=1)
        targets[nan] = np.nan

        # Predictions: per-era ranks of noisy copies of the crowd scores.
        crowd_names = (crowd[:, None] + gamma * specific) / np.sqrt(1 + gamma**2)
        bench_scores = [
            crowd_names[:, TARGET_NAMES.index(name)] for name in BENCHMARK_NAMES for _ in HORIZONS
        ]
        bench = _BENCHMARK_Q * np.stack(bench_scores, axis=1)
        bench += rng.standard_normal(bench.shape)
        example = _EXAMPLE_Q * crowd + rng.standard_normal(n)
        meta = _META_Q * crowd + rng.standard_normal(n)

        # Stored features lose some values (filled with 2) after the signal was computed.
        if len(self.miss_idx):
            sub = x[:, self.miss_idx]
            sub[rng.random(sub.shape) < self.miss_rate] = 2
            x[:, self.miss_idx] = sub
        x[:, self.late_idx[e < self.late_start]] = 2

        start = self.offsets[e]
        rows = np.arange(start, start + n, dtype=np.uint64)
        ids = np.sort(_mix60(rows + self.id_offset))
        return _Era(
            label=self.era_label(e),
            number=e,
            ids=ids,
            features=x,
            targets=targets.astype(np.float32),
            nan=nan,
            benchmarks=_squash(bench, np.sqrt(1 + _BENCHMARK_Q**2)),
            example=_squash(example, np.sqrt(1 + _EXAMPLE_Q**2)),
            meta=_squash(meta, np.sqrt(1 + _META_Q**2)) if e < self.meta_until else None,
        )

    # -- writing -------------------------------------------------------------------------------

    def _chunks(self, eras: range) -> Iterator[list[_Era]]:
        chunk: list[_Era] = []
        rows = 0
        for e in eras:
            chunk.append(self.era(e))
            rows += len(chunk[-1].ids)
            if rows >= _CHUNK_ROWS:
                yield chunk
                chunk, rows = [], 0
        if chunk:
            yield chunk

    def write(self, directory: Path) -> None:
        _write_text_atomic(
            directory / FEATURES_JSON, json.dumps(self.features_json(), indent=2) + "\n"
        )
        spec = self.spec
        splits = [
            ("train", range(0, spec.train_eras)),
            ("validation", range(spec.train_eras, self.n_eras)),
            ("live", range(self.n_eras, self.n_eras + 1)),
        ]
        if has_full_file(spec.version):
            splits.append(("full", range(0, self.n_eras)))
        for split, eras in splits:
            self._write_split(directory, split, eras)

    def data_type(self, e: int) -> str:
        return "train" if e < self.spec.train_eras else "validation" if e < self.n_eras else "live"

    def _write_split(self, directory: Path, split: str, eras: range) -> None:
        idx = [
            pa.field(ID, pa.string()),
            pa.field(ERA, pa.string()),
            pa.field(DATA_TYPE, pa.string()),
        ]
        main_fields = (
            idx
            + [pa.field(name, pa.int8()) for name in self.feature_names]
            + [pa.field(name, pa.float32()) for name in self.target_columns]
        )
        outputs: dict[str, tuple[str, list[pa.Field]]] = {
            "main": (SPLIT_FILES[split], main_fields),
            "bench": (
                BENCHMARK_FILES[split],
                idx + [pa.field(c, pa.float32()) for c in self.benchmark_columns],
            ),
        }
        if split in ("validation", "live"):
            outputs["example"] = (
                EXAMPLE_PREDS_FILES[split],
                [pa.field(ID, pa.string()), pa.field(PREDICTION, pa.float32())],
            )
        if split == "validation":
            outputs["meta"] = (
                META_MODEL,
                idx + [pa.field(META_MODEL_COLUMN, pa.float32())],
            )
        sinks: dict[str, _Sink] = {}
        try:
            for key, (name, fields) in outputs.items():
                sinks[key] = _Sink(directory / name, fields)
            for chunk in self._chunks(eras):
                self._write_chunk(sinks, chunk)
            for sink in sinks.values():
                sink.commit()
        finally:
            for sink in sinks.values():
                sink.abort()

    def _write_chunk(self, sinks: dict[str, _Sink], chunk: list[_Era]) -> None:
        labels = [era.label for era in chunk]
        counts = [len(era.ids) for era in chunk]
        ids = _id_strings(np.concatenate([era.ids for era in chunk]))
        era_col = _repeat_strings(labels, counts)
        type_col = _repeat_strings([self.data_type(era.number) for era in chunk], counts)
        index = [ids, era_col, type_col]

        features = np.ascontiguousarray(np.concatenate([era.features for era in chunk]).T)
        targets = np.concatenate([era.targets for era in chunk]).T
        nan = np.concatenate([era.nan for era in chunk]).T
        sinks["main"].write(
            index
            + [pa.array(col, type=pa.int8()) for col in features]
            + [_float_column(t, m) for t, m in zip(targets, nan, strict=True)]
        )
        bench = np.concatenate([era.benchmarks for era in chunk]).T
        sinks["bench"].write(index + [_float_column(col) for col in bench])
        if "example" in sinks:
            example = np.concatenate([era.example for era in chunk])
            sinks["example"].write([ids, _float_column(example)])
        if "meta" in sinks:
            covered = [era for era in chunk if era.meta is not None]
            if covered:
                sizes = [len(era.ids) for era in covered]
                sinks["meta"].write(
                    [
                        _id_strings(np.concatenate([era.ids for era in covered])),
                        _repeat_strings([era.label for era in covered], sizes),
                        _repeat_strings(["validation"], [sum(sizes)]),
                        _float_column(np.concatenate([era.meta for era in covered])),
                    ]
                )
