"""Numerai API keys: from the environment or a ``.env`` file, never logged, printed or stored.

The values live only in a :class:`Credentials` object (whose repr hides them) and are handed to the
numerapi client's constructor. Messages that could echo them go through :meth:`Credentials.redact`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from dotenv import dotenv_values
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fxml.config.schema import check_no_keys
from fxml.errors import FxmlError, describe

PUBLIC_ID, SECRET_KEY = "NUMERAI_PUBLIC_ID", "NUMERAI_SECRET_KEY"
KEY_NAMES = (PUBLIC_ID, SECRET_KEY)
DOTENV = ".env"
T = TypeVar("T")


@dataclass(frozen=True, repr=False)
class Credentials:
    public_id: str
    secret_key: str
    source: str

    def __repr__(self) -> str:
        return f"Credentials(<hidden>, from {self.source})"

    __str__ = __repr__

    def redact(self, text: str) -> str:
        for secret in (self.secret_key, self.public_id):
            if secret:
                text = text.replace(secret, "***")
        return text


def read_dotenv(path: Path) -> dict[str, str]:
    """The ``KEY=value`` pairs of a ``.env`` file (python-dotenv's syntax), without touching
    ``os.environ``; empty when there is no such file."""
    if not path.is_file():
        return {}
    return {key: value for key, value in dotenv_values(path).items() if value is not None}


def find_credentials(directory: Path | None = None) -> Credentials | None:
    """Both keys from the environment, else from ``.env`` in ``directory`` (the working folder);
    None when either is missing."""
    dotenv = read_dotenv((directory or Path.cwd()) / DOTENV)
    found: dict[str, str] = {}
    sources = set()
    for name in KEY_NAMES:
        for source, values in (("the environment", os.environ), (DOTENV, dotenv)):
            value = values.get(name, "").strip()
            if value:
                found[name] = value
                sources.add(source)
                break
    if len(found) < len(KEY_NAMES):
        return None
    return Credentials(found[PUBLIC_ID], found[SECRET_KEY], " and ".join(sorted(sources)))


def missing_credentials_hint() -> str:
    return (f"no Numerai API keys: set {PUBLIC_ID} and {SECRET_KEY} in the environment or in a "
            f"{DOTENV} file in this folder")


def build_client(api: DictConfig | dict[str, Any], credentials: Credentials | None) -> Any:
    """The numerapi client the config names (``api._target_``), given the keys if there are any."""
    settings = OmegaConf.to_container(api, resolve=True) if isinstance(api, DictConfig) else dict(api)
    assert isinstance(settings, dict)
    check_no_keys(settings)
    keys = {} if credentials is None else {"public_id": credentials.public_id,
                                           "secret_key": credentials.secret_key}
    try:
        return instantiate(settings, **keys)
    except InstantiationException as error:
        message = str(error.__cause__ or error).splitlines()[0]
        if credentials is not None:
            message = credentials.redact(message)
        raise FxmlError(f"cannot create the Numerai client {settings.get('_target_')}: {message}") from None


class NumeraiFailure(Exception):
    """A numerapi call that failed; its text is the reason in one line, keys masked."""


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def ask_numerai(call: Callable[[], T], credentials: Credentials | None) -> T:
    """``call()`` on a numerapi client, its log kept off the terminal. numerapi logs a failed
    request (an offline machine's DNS error fills several terminal lines) and then fails on the
    empty answer with a bare ``KeyError: 'data'``, so the reason is what it logged last."""
    logger = logging.getLogger("numerapi")
    kept, propagate = _Kept(), logger.propagate
    logger.addHandler(kept)
    logger.propagate = False
    try:
        return call()
    except Exception as error:  # network and API errors arrive as many types
        logged = [message.strip().splitlines()[0] for message in kept.messages if message.strip()]
        reason = logged[-1] if logged else describe(error)
        raise NumeraiFailure(credentials.redact(reason) if credentials else reason) from None
    finally:
        logger.removeHandler(kept)
        logger.propagate = propagate
