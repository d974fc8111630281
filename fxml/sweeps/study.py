"""Which experiment a study belongs to: every setting that is not searched, and its fingerprint.

A study's trials are only comparable when they share the data, feature set, target, objective,
cross-validation and every other fixed setting; where a machine keeps the data and what hardware
trains (cores, accelerator, memory policy) are not part of it, so workers on several machines
share one study. The default study name is the search preset plus a
short fingerprint of those settings, so the same command resumes its study and a changed command
starts its own. The settings are stored on the study, so a study named explicitly can be checked.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fxml.errors import FxmlError
from fxml.tracking.mlflow_run import redact

SETTINGS_ATTR = "fxml.settings"
FINGERPRINT_ATTR = "fxml.fingerprint"
# where results go or how a trial reaches its study: not part of what is being compared
NOT_SETTINGS = ("hydra", "sweep", "tracking", "output")
# where this machine keeps the data and how it trains, which differ between the workers of one
# study (a data folder, cores, a GPU, the memory it has) without changing the experiment
MACHINE_SETTINGS = ("data.directory", "data.source.api", "trainer.n_jobs", "trainer.accelerator",
                    "trainer.devices", "memory._target_", "memory.max_gib", "memory.headroom")
# the same, as the model parameters (an ensemble's members' too) that the trainer's settings fill
MACHINE_MODEL_PARAMS = ("n_jobs", "device", "devices")
FINGERPRINT_LENGTH = 8


def flat_settings(node: Any, prefix: str = "") -> dict[str, str]:
    """Dotted keys of a plain (resolved) config, each value as JSON text."""
    if isinstance(node, Mapping):
        flat: dict[str, str] = {}
        for key, value in node.items():
            flat.update(flat_settings(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: redact(json.dumps(node, sort_keys=True, default=str))}


def experiment_settings(config: DictConfig, searched: Iterable[str], objective: str,
                        direction: str) -> dict[str, str]:
    """Every fixed setting of a search, plus what it optimises and which keys it searches."""
    task = {k: v for k, v in config.items() if k not in NOT_SETTINGS}
    try:
        plain = OmegaConf.to_container(OmegaConf.create(task), resolve=True)
    except Exception:  # an interpolation only a job can resolve: compare the written form
        plain = OmegaConf.to_container(OmegaConf.create(task), resolve=False)
    searched = sorted(searched)
    settings = {key: value for key, value in flat_settings(plain).items()
                if not _within(key, searched) and not _machine_setting(key)}
    settings["sweeper.objective"] = json.dumps(objective)
    settings["sweeper.direction"] = json.dumps(direction)
    settings["sweeper.searched"] = json.dumps(searched)
    return dict(sorted(settings.items()))


def _within(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == prefix or key.startswith(f"{prefix}.") for prefix in prefixes)


def _machine_setting(key: str) -> bool:
    return _within(key, MACHINE_SETTINGS) or (
        key.startswith("model.") and key.rsplit(".", 1)[-1] in MACHINE_MODEL_PARAMS)


def fingerprint(settings: Mapping[str, str]) -> str:
    text = json.dumps(dict(sorted(settings.items())), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:FINGERPRINT_LENGTH]


def default_study_name(preset: str, settings: Mapping[str, str]) -> str:
    return f"{preset}-{fingerprint(settings)}"


def first_difference(stored: Mapping[str, str], current: Mapping[str, str]) -> str | None:
    """The first setting (in key order) that differs, written for a user; None if all agree."""
    for key in sorted(set(stored) | set(current)):
        was, now = stored.get(key), current.get(key)
        if was != now:
            return f"{key} is {_shown(now)} here but {_shown(was)} in the study"
    return None


def check_settings(study_name: str, stored: Mapping[str, str] | None,
                   current: Mapping[str, str]) -> None:
    """Refuse a named study that was made for other settings (one line, the first difference)."""
    if stored is None:
        return
    difference = first_difference(stored, current)
    if difference:
        raise FxmlError(f"study {study_name} belongs to another experiment: {difference}; leave "
                        "hydra.sweeper.study_name unset to get a study for this command")


def _shown(value: str | None) -> str:
    if value is None:
        return "unset"
    try:
        decoded = json.loads(value)
    except ValueError:
        return value
    return decoded if isinstance(decoded, str) else json.dumps(decoded)
