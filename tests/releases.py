"""Releases written by another program than fxml's synthetic writer, and int8 store files made by
hand, for the store, memory and feeding tests."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fxml.data.layout import FEATURES_JSON
from fxml.data.loader import NumeraiData
from fxml.data.split import DataSplit
from fxml.data.store import BLOCK_COLUMNS

N_FEATURES = BLOCK_COLUMNS + 44  # more than one block of columns


class FolderSource:
    """A release folder that is simply there (what a user's own download looks like)."""

    def resolve(self, directory: Path, version: str) -> tuple[Path, str]:
        return Path(directory), "v5.2"

    def ensure(self, folder: Path, filename: str) -> Path:
        return folder / filename


def write_release(folder: Path, seed: int = 0, missing: bool = False) -> pd.DataFrame:
    """train.parquet and validation.parquet with eras shuffled, in row groups of 150 rows."""
    rng = np.random.default_rng(seed)
    names = [f"feature_{i:04d}" for i in range(N_FEATURES)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / FEATURES_JSON).write_text(json.dumps(
        {"feature_sets": {"small": names[:10], "all": names}, "targets": ["target"]}))
    frames = {}
    for split, eras, offset in (("train", 12, 0), ("validation", 6, 12)):
        n = eras * 70
        era = rng.integers(1 + offset, eras + 1 + offset, n)
        target = rng.choice([0.0, 0.25, 0.5, 0.75, 1.0], n).astype(np.float32)
        if split == "validation":
            target[era == era.max()] = np.nan  # the newest era is unresolved
        values = rng.integers(0, 5, (n, N_FEATURES))
        frame = pd.DataFrame(values.astype(np.int8), columns=names)
        frame[names[3]] = frame[names[3]].astype(np.int64)
        frame[names[5]] = frame[names[5]].astype(np.float32)
        if missing:
            frame.loc[[4, 77], names[5]] = np.nan
        frame.insert(0, "era", [f"{e:04d}" for e in era])
        frame.insert(0, "id", [f"{split[0]}{i:06d}" for i in range(n)])
        frame["target"] = target
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), folder / f"{split}.parquet",
                       row_group_size=150)
        frames[split] = frame
    return frames["validation"]


def reference(folder: Path, split: str, features: list[str], eras: list[int] | None = None) -> pd.DataFrame:
    frame = pd.read_parquet(folder / f"{split}.parquet")
    frame["era_number"] = frame["era"].astype(int)
    if eras is not None:
        frame = frame[frame["era_number"].isin(eras)]
    return frame.sort_values("era_number", kind="stable")


def resident_bytes(path: Path) -> int:
    """This process's resident bytes of its memory maps of ``path`` (from /proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):  # a mapping's first line ends with its file
            inside = line.endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1]) * 1024
    return total


def store_backed(source: DataSplit, path: Path) -> DataSplit:
    """``source`` with its features in a store-like file, memory-mapped read-only."""
    written = np.memmap(path, dtype=np.int8, mode="w+", shape=source.features.shape)
    written[:] = source.features
    written.flush()
    del written  # unmapped: only the reader's pages are counted
    stored = np.memmap(path, dtype=np.int8, mode="r", shape=source.features.shape)
    return dataclasses.replace(source, features=stored, storage="store")


def load_split(folder: Path, split: str, storage: str = "memory", **options):  # type: ignore[no-untyped-def]
    """The release in ``folder`` (feature set ``all`` unless given) and one split of it."""
    data = NumeraiData(FolderSource(), folder, feature_set=options.pop("feature_set", "all"), **options)
    return data, data.load(split, storage=storage, every_nth_train_era=options.pop("every", 1))
