"""From a trained run to a Numerai submission: promotion into the MLflow registry, live predictions,
validation, upload, and export for Numerai's hosted compute."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fxml.errors import FxmlError, describe_config_error


def checked(cfg: DictConfig) -> Any:
    """Run a command config's schema checks (``__post_init__``); a bad value becomes one line."""
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as error:
        raise FxmlError(describe_config_error(error)) from None
