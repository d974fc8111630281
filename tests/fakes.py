"""Stand-ins for numerapi's client: the network is the one dependency tests never touch.

Point ``data.source.api._target_`` at one of these. ``FakeNumerAPI`` serves the files of a
synthetic release folder named by $FXML_FAKE_NUMERAI_DIR as every version in ``VERSIONS``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

VERSIONS = ("v5.0", "v5.1", "v5.2")


class FakeNumerAPI:
    def __init__(self, public_id: str | None = None, secret_key: str | None = None) -> None:
        self.served = Path(os.environ["FXML_FAKE_NUMERAI_DIR"])
        self.downloads: list[str] = []

    def list_datasets(self, round_num: int | None = None) -> list[str]:
        files = sorted(p.name for p in self.served.iterdir() if not p.name.startswith("."))
        return ["v4.3/train_int8.parquet"] + [f"{v}/{name}" for v in VERSIONS for name in files]

    def download_dataset(self, filename: str, dest_path: str | None = None, round_num=None) -> str:
        version, name = filename.split("/", 1)
        if version not in VERSIONS or not (self.served / name).is_file():
            raise ValueError(f"dataset {filename} not found")
        self.downloads.append(filename)
        dest = Path(dest_path or filename)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.served / name, dest)
        return str(dest)


class OfflineNumerAPI:
    """Every call fails the way requests does without a network."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def list_datasets(self, round_num: int | None = None) -> list[str]:
        raise ConnectionError("Failed to resolve 'api-tournament.numer.ai'")

    def download_dataset(self, filename: str, dest_path: str | None = None, round_num=None) -> str:
        raise ConnectionError("Failed to resolve 'api-tournament.numer.ai'")
