"""Config schemas and the checks that run right after Hydra composes a config."""

from __future__ import annotations

import dataclasses
from importlib import import_module
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fxml.config.schema import register_schemas
from fxml.errors import FxmlError, describe_config_error
from fxml.models.params import MEMBER_TARGET

__all__ = ["CONFIG_PATH", "register_schemas", "validate", "describe_config_error"]

# the configs ship inside the package (conf/ mapped to fxml.conf at build time); a user's own
# directory adds to or overrides them with --config-dir or hydra.searchpath
CONFIG_PATH = "pkg://fxml.conf"


def validate(cfg: DictConfig) -> None:
    """Build each group's schema object, which runs its range checks (``__post_init__``)."""
    for group in ("data", "model", "trainer", "memory", "scorer", "cv", "postprocess", "tracking"):
        if cfg.get(group) is None:
            continue
        try:
            OmegaConf.to_object(cfg[group])
        except OmegaConfBaseException as error:
            raise FxmlError(describe_config_error(error)) from None
    if cfg.get("model") is not None:
        if cfg.model.get(MEMBER_TARGET) is not None:
            raise FxmlError(f"model.{MEMBER_TARGET} sets an ensemble member's own target "
                            f"(model.members.<name>.{MEMBER_TARGET}); a model trains on data.target")
        resolve_model_classes(cfg.model)


def resolve_model_classes(model: Any) -> None:
    """Resolve the class of the model (and of each ensemble member) and check its parameters
    before any work: a family whose optional extra is missing fails here with one line naming the
    extra, and a family without a registered schema (one of the user's own) has its parameters
    checked by its ``params_class``."""
    target = model.get("_target_") if hasattr(model, "get") else None
    if isinstance(target, str) and "." in target:
        module, _, name = target.rpartition(".")
        family = getattr(import_module(module), name, None)
        params_class = getattr(family, "params_class", None)
        # a registered schema ran the same checks when the config was built (validate)
        unchecked = not OmegaConf.is_config(model) or OmegaConf.get_type(model) is dict
        if params_class is not None and unchecked:
            options = OmegaConf.to_container(model, resolve=True) if OmegaConf.is_config(model) else model
            assert isinstance(options, dict)
            names = {field.name for field in dataclasses.fields(params_class)}
            params_class(**{key: value for key, value in options.items() if key in names})
    members = model.get("members") if hasattr(model, "get") else None
    for member in (members or {}).values():
        resolve_model_classes(member)


