"""``FXML_CONFIG_DIR``: a user's own config directory searched before fxml's packaged configs.

``--config-dir`` adds a directory after the packaged configs, so it can add options (a new model
preset, an experiment) but not replace one of fxml's. A directory named by ``FXML_CONFIG_DIR``
comes first, so its ``model/lgbm.yaml`` replaces the packaged one; other Hydra apps are untouched.
"""

from __future__ import annotations

import os
from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath, SearchPathQuery
from hydra.plugins.search_path_plugin import SearchPathPlugin

PACKAGED_CONFIGS = "pkg://fxml.conf"
ENV = "FXML_CONFIG_DIR"


class FxmlUserConfigDir(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        directory = os.environ.get(ENV)
        if not directory or not any(e.path == PACKAGED_CONFIGS for e in search_path.get_path()):
            return
        path = Path(directory).expanduser().resolve()
        if not path.is_dir():
            from fxml.errors import FxmlError

            raise FxmlError(f"{ENV}={directory} is not a directory")
        search_path.prepend("fxml-user", f"file://{path}", anchor=SearchPathQuery(path=PACKAGED_CONFIGS))
