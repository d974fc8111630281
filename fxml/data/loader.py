"""One loader for every source: only the needed columns, int8 features in the era-indexed store.

Ids, eras and targets come from a lazy Polars scan; the feature matrix goes from parquet row
groups straight into one preallocated int8 matrix (``fxml.data.store``), never through a table
of the whole split or a float copy. Rows are sorted by era; targets are float32, eras integers.
"""

from __future__ import annotations

import hashlib
import logging
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
    has_full_file,
    read_feature_metadata,
    top_benchmark,
)
from fxml.data.memory import MemoryNeed, MemoryProfile, return_freed_memory
from fxml.data.sources import DataSource
from fxml.data.split import MAIN_TARGET, DataSplit, Storage
from fxml.data.store import (
    FilePart,
    MissingFeatures,
    RowPlan,
    StoreUnavailable,
    disk_matrix,
    memory_matrix,
    plan_rows,
)
from fxml.errors import FxmlError, closest

log = logging.getLogger(__name__)
# int8 store files of a release live beside its parquet files
STORE_FOLDER = ".fxml-store"


def check_appended(parts: list[FilePart], each_file_eras: list[np.ndarray]) -> None:
    """Files appended in one matrix must follow each other in era order and share no era: a final
    fit never counts an era twice."""
    kept = [np.unique(eras[part.plan.source]) for part, eras in zip(parts, each_file_eras, strict=True)]
    for index in range(1, len(parts)):
        first, second = kept[index - 1], kept[index]
        if len(first) and len(second) and second[0] <= first[-1]:
            raise FxmlError(f"{parts[index - 1].path.name} and {parts[index].path.name} overlap (eras up "
                            f"to {first[-1]} and from {second[0]}): they cannot be appended as one split")


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
        missing_features: str = "error",
        missing_fill: int = 2,
    ) -> None:
        self.source = source
        self.folder, self.version = source.resolve(Path(directory), version)
        # the target the run's model trains on; splits are scored on MAIN_TARGET, whatever it is
        self.target = target
        self.era_spans = {"train": train_eras, "validation": validation_eras}
        self.every_nth_era = every_nth_era
        self.missing = MissingFeatures(missing_features, missing_fill)
        self.filled: dict[str, int] = {}
        self.metadata = read_feature_metadata(self.path(FEATURES_JSON))
        self.feature_names = self._select_features(feature_set, features)
        # targets loaded beside the main one (DataSplit.extra): the training target, auxiliary
        # outputs, ensemble members' own targets, targets scored for comparison
        self.extra_targets: list[str] = []
        self.also_load({target: "data.target"})
        self.also_load({name: "data.extra_targets" for name in extra_targets or []})
        self.feature_set = feature_set if features is None else "custom"

    def also_load(self, targets: dict[str, str]) -> None:
        """Load the target columns ``targets`` too (each name with the setting that names it, for
        the error a name that is not a target of the release gets)."""
        known = self.metadata.get("targets", [])
        for name, key in targets.items():
            if known and name not in known:
                raise FxmlError(f"{key}={name} is not a target in {FEATURES_JSON} "
                                f"(for example: {', '.join(known[:4])})")
            if name != MAIN_TARGET and name not in self.extra_targets:
                self.extra_targets.append(name)

    @classmethod
    def from_config(cls, data_cfg: Any, source: DataSource) -> NumeraiData:
        options = {k: data_cfg[k] for k in ("version", "feature_set", "target", "every_nth_era",
                                            "missing_features", "missing_fill")}
        for key in ("features", "extra_targets", "train_eras", "validation_eras"):
            value = data_cfg[key]
            options[key] = list(value) if value is not None else None
        return cls(source=source, directory=data_cfg.directory, **options)

    def path(self, filename: str) -> Path:
        return self.source.ensure(self.folder, filename)

    def _select_features(self, feature_set: str, explicit: list[str] | None) -> list[str]:
        sets = self.metadata["feature_sets"]
        if explicit is not None:
            known = {name for members in sets.values() for name in members}
            unknown = [name for name in explicit if name not in known]
            if known and unknown:
                guess = closest(unknown[0], known)
                raise FxmlError(f"data.features: {', '.join(unknown)} not in {FEATURES_JSON}"
                                + (f"; did you mean {guess}?" if guess else ""))
            return list(explicit)
        if feature_set not in sets:
            raise FxmlError(
                f"data.feature_set={feature_set} is not in {FEATURES_JSON} "
                f"(available: {', '.join(sorted(sets))})"
            )
        return list(sets[feature_set])

    def load(self, split: str, extra_features: list[str] | None = None,
             storage: Storage = "memory", every_nth_train_era: int = 1,
             with_ids: bool = True) -> DataSplit:
        """Read one split's int8 features into memory or into its int8 store file (``storage``,
        see ``fxml.data.split.Storage``; a memory plan's ``train_storage`` for train).

        Train honours the era spans, ``every_nth_era`` and ``every_nth_train_era`` (a memory
        plan's subsampling); ``full`` (a final fit's training rows: v5.3's ``full.parquet``, or
        train's and validation's files appended in one matrix) every era, with the same strides.
        ``extra_features`` are more int8 columns after the run's features (neutralisers outside
        the model's set). Where a store file cannot be written (no space, a read-only folder),
        ``store`` reads the rows into memory with a warning, while ``disk`` (a plan made because
        memory does not suffice) fails with one line.
        Without ``with_ids`` the ids are not read (``DataSplit.ids`` is None).
        """
        labels = [MAIN_TARGET, *self.extra_targets] if split != "live" else []
        columns = [*self.feature_names, *[c for c in extra_features or [] if c not in self.feature_names]]
        paths = [self.path(filename) for filename in self.split_files(split)]
        smalls = []
        for path in paths:
            frame = self._scan(path, split)
            self._check_columns(path, frame, [ID, ERA, *columns, *labels])
            smalls.append(self._small_columns(path, frame, labels, with_ids))
        each_file_eras = [era_numbers(small[ERA].to_numpy()) for small in smalls]
        kept = self._kept_eras(np.concatenate(each_file_eras), split, every_nth_train_era)
        plans = [plan_rows(file_eras, np.isin(file_eras, kept)) for file_eras in each_file_eras]
        parts = [FilePart(path, plan) for path, plan in zip(paths, plans, strict=True)]
        check_appended(parts, each_file_eras)
        if not sum(plan.n_rows for plan in plans):
            raise FxmlError(f"no rows left in {paths[0].name} after the era selection")
        if storage != "memory":
            try:
                features, filled = disk_matrix(parts, columns, self.missing, self.folder / STORE_FOLDER,
                                               split)
            except StoreUnavailable as error:
                if storage == "disk":
                    raise
                log.warning("data: %s; reading %s into memory instead", error, split)
                storage = "memory"
        if storage == "memory":
            features, filled = memory_matrix(parts, columns, self.missing)
        return_freed_memory()  # the decoded parquet blocks, before the next stage's peak
        if filled:
            log.warning("data: %s had %s missing feature value(s), filled with %d "
                        "(data.missing_features=fill)", " and ".join(p.name for p in paths), f"{filled:,}",
                        self.missing.fill)
        self.filled[split] = filled
        orders = [plan.source[np.argsort(plan.destination)] for plan in plans]
        small = pl.concat([small[order] for small, order in zip(smalls, orders, strict=True)])
        target = small[MAIN_TARGET].to_numpy() if split != "live" else None
        result = DataSplit(
            name=split,
            ids=small[ID].to_numpy() if with_ids else None,
            eras=np.concatenate([eras[order] for eras, order in zip(each_file_eras, orders, strict=True)]),
            features=features,
            target=target,
            feature_names=columns,
            extra={name: small[name].to_numpy() for name in labels[1:]},
            storage=storage,
            # rows of one file can be read again for more columns (read_features)
            file_rows=orders[0] if len(orders) == 1 else None,
        )
        log.info("data: %s %s rows, %s eras, %d features (int8, %.1f MiB, %s)", split,
                 f"{len(result):,}", result.n_eras, len(columns), features.nbytes / 2**20, storage)
        return result

    def read_features(self, split: DataSplit, names: list[str]) -> np.ndarray:
        """More int8 feature columns for the rows of ``split`` (in its row order), from its file."""
        if split.file_rows is None:
            raise FxmlError(f"the {split.name} split was not read from a release file")
        path = self.path(SPLIT_FILES[split.name])
        self._check_columns(path, self._scan(path, split.name), names)
        positions = np.argsort(split.file_rows, kind="stable")
        plan = RowPlan(source=split.file_rows[positions], destination=positions)
        return memory_matrix([FilePart(path, plan)], names, self.missing)[0]

    def memory_need(self, profile: MemoryProfile, training: str = "train") -> MemoryNeed:
        """What loading the ``training`` split (``full``: a final fit, which loads no validation)
        and validation would hold for a model of this memory profile, for a memory policy."""
        train = self.era_rows(training)
        validation = self.era_rows("validation") if training == "train" else {}
        n_train, n_validation, k = sum(train.values()), sum(validation.values()), len(self.feature_names)
        return MemoryNeed(train_features=n_train * k, validation_features=n_validation * k,
                          model_dataset=int(n_train * k * profile.dataset_bytes_per_value),
                          rows=n_train + n_validation, train_eras=len(train),
                          streamed_model_dataset=int(n_train * k * profile.streamed_bytes_per_value),
                          train_rows_from_store=profile.reads_rows_from_store,
                          validation_rows=n_validation,
                          training_bytes_per_train_row=profile.bytes_per_train_row,
                          library_bytes=profile.library_bytes)

    def era_rows(self, split: str) -> dict[int, int]:
        """Rows per era of the eras a split would load (before any memory plan)."""
        counted = []
        for filename in self.split_files(split):
            path = self.path(filename)
            try:
                # only the era column, counted by Polars: no ids, no per-row era strings in Python
                counted.append(self._scan(path, split).group_by(ERA).len().collect())
            except pl.exceptions.PolarsError as error:
                raise FxmlError(f"cannot read {path}: {str(error).splitlines()[0]}") from None
        counts = pl.concat(counted)
        eras, rows = era_numbers(counts[ERA].to_numpy()), counts["len"].to_numpy()
        keep = np.isin(eras, self._kept_eras(eras, split, 1))
        return dict(sorted(zip(eras[keep].tolist(), rows[keep].tolist(), strict=True)))

    def split_files(self, split: str) -> list[str]:
        """The files a split's rows come from: its own, or for ``full`` in a release without
        ``full.parquet`` (before v5.3) train's and validation's, appended in one matrix."""
        if split == "full" and not has_full_file(self.version):
            return [SPLIT_FILES["train"], SPLIT_FILES["validation"]]
        return [SPLIT_FILES[split]]

    def column_for(self, split: DataSplit, filename: str, column: str,
                   setting: str = "") -> tuple[str, np.ndarray]:
        """A float column from another file (meta model, benchmarks), aligned to ``split`` by id;
        ids missing there get NaN. ``setting``: what chooses the column, for the error."""
        path = self.path(filename)
        frame = self._scan(path, split.name)
        names = frame.collect_schema().names()
        if column not in names:
            candidates = [n for n in names if n not in (ID, ERA, DATA_TYPE, "__index_level_0__")]
            hint = f"; set {setting}" if setting else ""
            raise FxmlError(f"{path.name} has no column {column!r} (columns: {', '.join(candidates)}){hint}")
        values = frame.select(pl.col(ID).cast(pl.String), pl.col(column).cast(pl.Float64)).collect()
        aligned = pl.DataFrame({ID: split.ids}).join(values, on=ID, how="left", maintain_order="left")
        return column, aligned[column].to_numpy().astype(np.float64)

    def meta_model(self, split: DataSplit) -> np.ndarray:
        return self.column_for(split, META_MODEL, META_MODEL_COLUMN)[1]

    def benchmark(self, split: DataSplit, column: str | None) -> tuple[str, np.ndarray]:
        """A benchmark model's predictions: ``column``, or the release's top benchmark (never
        whichever column comes first)."""
        return self.column_for(split, BENCHMARK_FILES[split.name], column or top_benchmark(self.version),
                               "scorer.benchmark_column")

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

    def _small_columns(self, path: Path, frame: pl.LazyFrame, labels: list[str],
                       with_ids: bool) -> pl.DataFrame:
        """Ids (``with_ids``), eras and targets of every row in file order (the features go to
        the store)."""
        ids = [pl.col(ID).cast(pl.String)] if with_ids else []
        try:
            return frame.select(*ids, pl.col(ERA).cast(pl.String),
                                *(pl.col(name).cast(pl.Float32) for name in labels)).collect()
        except pl.exceptions.PolarsError as error:
            raise FxmlError(f"cannot read {path}: {str(error).splitlines()[0]}") from None

    def _kept_eras(self, file_eras: np.ndarray, split: str, every_nth_train_era: int) -> np.ndarray:
        """Which eras of a split's rows the run reads: era spans, then every nth training era."""
        if split == "live":
            return np.unique(file_eras)
        eras = np.unique(file_eras[file_eras != LIVE_ERA])
        span = self.era_spans.get(split)
        if span is not None:
            eras = eras[(eras >= span[0]) & (eras <= span[1])]
            if not len(eras):
                raise FxmlError(f"data.{split}_eras={list(span)} selects no era in {split}")
        if split in ("train", "full"):
            eras = eras[:: self.every_nth_era][::every_nth_train_era]
        return eras
