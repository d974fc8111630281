"""One loader for every source: lazy Polars scans of only the needed columns, int8 features.

The feature matrix goes from parquet to an int8 numpy array without ever passing through a float
copy; targets are float32 and eras integers.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from fxml.data.layout import (
    BENCHMARK_FILES,
    DATA_TYPE,
    ERA,
    FEATURES_JSON,
    ID,
    LIVE_ERA,
    META_MODEL,
    META_MODEL_COLUMN,
    SPLIT_FILES,
    check_parquet,
    era_numbers,
    read_feature_metadata,
)
from fxml.data.memory import InMemory, MemoryPolicy
from fxml.data.sources import DataSource
from fxml.errors import FxmlError

log = logging.getLogger(__name__)


@dataclass
class DataSplit:
    """Rows of one split, aligned arrays; ``features`` is int8 (rows, features), C order."""

    name: str
    ids: np.ndarray
    eras: np.ndarray
    features: np.ndarray
    target: np.ndarray | None
    feature_names: list[str]
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_eras(self) -> int:
        return len(np.unique(self.eras))


class NumeraiData:
    """Reads train / validation / live splits of one v5 release folder."""

    def __init__(
        self,
        source: DataSource,
        directory: str | Path,
        version: str = "latest",
        feature_set: str = "small",
        features: list[str] | None = None,
        target: str = "target",
        extra_targets: list[str] | None = None,
        train_eras: list[int] | None = None,
        validation_eras: list[int] | None = None,
        every_nth_era: int = 1,
        memory: MemoryPolicy | None = None,
    ) -> None:
        self.source = source
        self.folder, self.version = source.resolve(Path(directory), version)
        self.target = target
        # auxiliary targets some models train on as extra outputs; carried in DataSplit.extra
        self.extra_targets = [name for name in extra_targets or [] if name != target]
        self.era_spans = {"train": train_eras, "validation": validation_eras}
        self.every_nth_era = every_nth_era
        self.memory = memory or InMemory()
        self.metadata = read_feature_metadata(self.path(FEATURES_JSON))
        self.feature_names = self._select_features(feature_set, features)
        targets = self.metadata.get("targets", [])
        for key, name in [("data.target", target)] + [("data.extra_targets", n) for n in self.extra_targets]:
            if targets and name not in targets:
                raise FxmlError(
                    f"{key}={name} is not a target in {FEATURES_JSON} "
                    f"(for example: {', '.join(targets[:4])})"
                )
        self.feature_set = feature_set if features is None else "custom"

    @classmethod
    def from_config(cls, data_cfg: Any, memory: MemoryPolicy, source: DataSource) -> NumeraiData:
        options = {k: data_cfg[k] for k in ("version", "feature_set", "target", "every_nth_era")}
        for key in ("features", "extra_targets", "train_eras", "validation_eras"):
            value = data_cfg[key]
            options[key] = list(value) if value is not None else None
        return cls(source=source, directory=data_cfg.directory, memory=memory, **options)

    def path(self, filename: str) -> Path:
        return self.source.ensure(self.folder, filename)

    def _select_features(self, feature_set: str, explicit: list[str] | None) -> list[str]:
        sets = self.metadata["feature_sets"]
        if explicit is not None:
            return list(explicit)
        if feature_set not in sets:
            raise FxmlError(
                f"data.feature_set={feature_set} is not in {FEATURES_JSON} "
                f"(available: {', '.join(sorted(sets))})"
            )
        return list(sets[feature_set])

    def load(self, split: str) -> DataSplit:
        """Read one split; train honours era spans, every_nth_era and the memory policy."""
        path = self.path(SPLIT_FILES[split])
        frame = self._scan(path, split)
        labels = [self.target, *self.extra_targets] if split != "live" else []
        wanted = [ID, ERA, *self.feature_names, *labels]
        self._check_columns(path, frame, wanted)
        frame = frame.select(
            pl.col(ID).cast(pl.String),
            pl.col(ERA).cast(pl.String),
            # non-strict: NaN or out-of-range values become nulls, reported below by name
            pl.col(self.feature_names).cast(pl.Int8, strict=False),
            *(pl.col(name).cast(pl.Float32) for name in labels),
        )
        eras = self._eras_to_read(frame, split)
        if eras is not None:
            frame = frame.filter(pl.col(ERA).is_in([f"{era:04d}" for era in eras]))
        try:
            table = frame.collect()
        except pl.exceptions.PolarsError as error:
            raise FxmlError(f"cannot read {path}: {str(error).splitlines()[0]}") from None
        if table.height == 0:
            raise FxmlError(f"no rows left in {path.name} after the era selection")
        self._check_no_missing_features(path, table)
        features = table.select(self.feature_names).to_numpy(order="c")
        target = table[self.target].to_numpy() if split != "live" else None
        if split == "train" and np.isnan(target).any():
            raise FxmlError(f"{path.name}: column {self.target} has NaN in training rows")
        result = DataSplit(
            name=split,
            ids=table[ID].to_numpy(),
            eras=era_numbers(table[ERA].to_numpy()),
            features=features,
            target=target,
            feature_names=self.feature_names,
            extra={name: table[name].to_numpy() for name in labels[1:]},
        )
        log.info("data: %s %s rows, %s eras, %d features (int8, %.1f MiB)", split,
                 f"{len(result):,}", result.n_eras, len(self.feature_names), features.nbytes / 2**20)
        return result

    def column_for(self, split: DataSplit, filename: str, column: str | None) -> tuple[str, np.ndarray]:
        """A float column from another file (meta model, benchmarks), aligned to ``split`` by id.

        ``column=None`` takes the file's first prediction column. Ids missing there get NaN.
        """
        path = self.path(filename)
        frame = self._scan(path, split.name)
        names = frame.collect_schema().names()
        candidates = [n for n in names if n not in (ID, ERA, DATA_TYPE, "__index_level_0__")]
        column = column or (candidates[0] if candidates else None)
        if column is None or column not in names:
            raise FxmlError(f"{path.name} has no column {column!r} (columns: {', '.join(candidates)})")
        values = frame.select(pl.col(ID).cast(pl.String), pl.col(column).cast(pl.Float64)).collect()
        aligned = pl.DataFrame({ID: split.ids}).join(values, on=ID, how="left", maintain_order="left")
        return column, aligned[column].to_numpy().astype(np.float64)

    def meta_model(self, split: DataSplit) -> np.ndarray:
        return self.column_for(split, META_MODEL, META_MODEL_COLUMN)[1]

    def benchmark(self, split: DataSplit, column: str | None) -> tuple[str, np.ndarray]:
        return self.column_for(split, BENCHMARK_FILES[split.name], column)

    def fingerprint(self) -> str:
        """Cheap content hash: each file's size and parquet footer, plus the column selection."""
        digest = hashlib.sha256()
        for filename in (FEATURES_JSON, *SPLIT_FILES.values()):
            path = self.folder / filename
            if not path.is_file():
                continue
            size = path.stat().st_size
            with path.open("rb") as handle:
                handle.seek(max(size - 65536, 0))
                digest.update(f"{filename}:{size}".encode())
                digest.update(handle.read())
        digest.update(repr((self.feature_names, self.target, self.extra_targets, self.era_spans,
                            self.every_nth_era)).encode())
        return digest.hexdigest()[:16]

    def _scan(self, path: Path, split: str) -> pl.LazyFrame:
        check_parquet(path)
        try:
            frame = pl.scan_parquet(path)
            frame.collect_schema()
        except Exception as error:
            raise FxmlError(f"cannot read {path}: {str(error).splitlines()[0]}") from None
        return frame

    def _check_columns(self, path: Path, frame: pl.LazyFrame, wanted: list[str]) -> None:
        present = set(frame.collect_schema().names())
        missing = [name for name in wanted if name not in present]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise FxmlError(f"{path.name} is missing column(s) {shown}")

    def _eras_to_read(self, frame: pl.LazyFrame, split: str) -> list[int] | None:
        if split == "live":
            return None
        counts = frame.group_by(ERA).len().collect()
        rows = dict(zip(era_numbers(counts[ERA].to_numpy()).tolist(), counts["len"].to_list(),
                        strict=True))
        rows.pop(LIVE_ERA, None)
        span = self.era_spans[split]
        if span is not None:
            rows = {era: n for era, n in rows.items() if span[0] <= era <= span[1]}
            if not rows:
                raise FxmlError(f"data.{split}_eras={list(span)} selects no era in {split}")
        if split == "train":
            kept = sorted(rows)[:: self.every_nth_era]
            rows = {era: rows[era] for era in kept}
            return self.memory.select_train_eras(rows, row_bytes=len(self.feature_names))
        return sorted(rows)

    def _check_no_missing_features(self, path: Path, table: pl.DataFrame) -> None:
        nulls = table.select(pl.col(self.feature_names).null_count()).row(0)
        bad = [name for name, count in zip(self.feature_names, nulls, strict=True) if count]
        if bad:
            raise FxmlError(
                f"{path.name}: feature column {bad[0]} has missing values"
                + (f" (and {len(bad) - 1} more columns)" if len(bad) > 1 else "")
                + "; Numerai fills missing features with 2"
            )
