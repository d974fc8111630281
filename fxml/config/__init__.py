"""Config schemas and the checks that run right after Hydra composes a config."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fxml.config.schema import register_schemas
from fxml.errors import FxmlError, describe_config_error

__all__ = ["register_schemas", "validate", "describe_config_error"]


def validate(cfg: DictConfig) -> None:
    """Build each group's schema object, which runs its range checks (``__post_init__``)."""
    for group in ("data", "model", "trainer", "memory", "scorer", "cv", "postprocess", "tracking"):
        if cfg.get(group) is None:
            continue
        try:
            OmegaConf.to_object(cfg[group])
        except OmegaConfBaseException as error:
            raise FxmlError(describe_config_error(error)) from None
