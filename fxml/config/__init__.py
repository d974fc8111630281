"""Config schemas and the checks that run right after Hydra composes a config."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fxml.config.schema import register_schemas
from fxml.errors import FxmlError

__all__ = ["register_schemas", "validate", "describe_config_error"]


def validate(cfg: DictConfig) -> None:
    """Build each group's schema object, which runs its range checks (``__post_init__``)."""
    for group in ("data", "model", "trainer", "memory", "scorer", "tracking"):
        try:
            OmegaConf.to_object(cfg[group])
        except OmegaConfBaseException as error:
            raise FxmlError(describe_config_error(error)) from None


def describe_config_error(error: BaseException) -> str:
    """One line for an OmegaConf/Hydra composition error: the message and the key it is about."""
    cause = error
    while cause.__cause__ is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__
    if isinstance(cause, FxmlError):
        return str(cause)
    if isinstance(cause.__cause__, FxmlError):
        return str(cause.__cause__)
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    message = lines[0] if lines else type(cause).__name__
    key = getattr(cause, "full_key", None)
    if key and key not in message:
        message = f"{message} (key: {key})"
    if cause is not error and not isinstance(error, OmegaConfBaseException):
        outer = str(error).splitlines()[0].strip()
        if outer and outer not in message:
            message = f"{outer}: {message}"
    return message
