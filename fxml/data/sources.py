"""Where the v5 files come from: written offline (synthetic) or downloaded with numerapi.

Both sources hand the loader a folder in the same layout; the loader never knows which it got.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from hydra.utils import instantiate

from fxml.data.layout import NEWEST_VERSION, version_key
from fxml.data.synthetic import SyntheticSpec, write_synthetic
from fxml.errors import FxmlError, describe

log = logging.getLogger(__name__)


class DataSource(Protocol):
    def resolve(self, directory: Path, version: str) -> tuple[Path, str]:
        """Return the folder holding ``version`` (resolved from 'latest') and the version."""
        ...

    def ensure(self, folder: Path, filename: str) -> Path:
        """Make ``filename`` present in ``folder`` and return its path."""
        ...


class SyntheticSource:
    """Deterministic synthetic data in the v5 layout, one folder per spec."""

    def __init__(self, **spec: Any) -> None:
        self.spec_options = spec

    def resolve(self, directory: Path, version: str) -> tuple[Path, str]:
        spec = SyntheticSpec(version=version if version != "latest" else NEWEST_VERSION, **self.spec_options)
        digest = hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode()).hexdigest()
        folder = Path(directory) / f"{spec.version}-{digest[:10]}"
        log.info("data: synthetic %s layout in %s", spec.version, folder)
        write_synthetic(folder, spec)
        return folder, spec.version

    def ensure(self, folder: Path, filename: str) -> Path:
        return folder / filename


class NumeraiSource:
    """Numerai's release files, downloaded on first use into ``directory/<version>/``."""

    def __init__(self, api: dict[str, Any]) -> None:
        self.api_config = api
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = instantiate(self.api_config)
        return self._client

    def resolve(self, directory: Path, version: str) -> tuple[Path, str]:
        directory = Path(directory)
        if version != "latest":
            version_key(version)
            if not (directory / version).is_dir():
                self._check_offered(version)
            return directory / version, version
        try:
            offered = self._offered_versions()
        except FxmlError:
            local = sorted((p.name for p in directory.glob("v5.*") if p.is_dir()), key=version_key)
            if not local:
                raise
            log.warning("data: cannot reach Numerai to find the newest release; using local %s",
                        local[-1])
            return directory / local[-1], local[-1]
        newest = offered[-1]
        log.info("data: newest Numerai release is %s", newest)
        return directory / newest, newest

    def ensure(self, folder: Path, filename: str) -> Path:
        path = folder / filename
        if path.is_file():
            return path
        remote = f"{folder.name}/{filename}"
        log.info("data: downloading %s", remote)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            # numerapi writes to <path>.temp and renames, and resumes an interrupted .temp file
            self.client.download_dataset(remote, dest_path=str(path))
        except Exception as error:  # network and API errors arrive as many types
            raise FxmlError(
                f"could not download {remote} into {folder} ({describe(error)}); "
                "check the network, or put the file there yourself"
            ) from None
        if not path.is_file():
            raise FxmlError(f"numerapi reported success but {path} is missing")
        return path

    def _offered_versions(self) -> list[str]:
        try:
            names = self.client.list_datasets()
        except Exception as error:
            raise FxmlError(
                f"could not list Numerai datasets ({describe(error)}); check the network"
            ) from None
        versions = {name.split("/", 1)[0] for name in names if name.startswith("v5.")}
        if not versions:
            raise FxmlError("Numerai lists no v5 datasets")
        return sorted(versions, key=version_key)

    def _check_offered(self, version: str) -> None:
        offered = self._offered_versions()
        if version not in offered:
            raise FxmlError(
                f"data.version={version} is not offered by Numerai (available: {', '.join(offered)})"
            )


