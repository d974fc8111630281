"""Bounded retries around the Optuna storage, so a database restart of some seconds is survived
(fxml's one retry policy, :func:`fxml.errors.retrying`); refused credentials fail at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import optuna
import sqlalchemy.exc

from fxml.errors import reported_as_store_error, retrying
from fxml.secrets import redact

T = TypeVar("T")
# what the storage raises (RDBStorage wraps SQLAlchemy's errors in StorageInternalError); other
# errors of a call are the caller's
STORAGE_ERRORS = (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError)


def storage_name(url: str) -> str:
    """How a one-line error names the Optuna storage at ``url`` (password masked)."""
    return f"the Optuna storage at {redact(url)}"


def with_retries(url: str, what: str, call: Callable[[], T], seconds: float) -> T:
    """``call()`` on the storage at ``url``, tried again while it does not answer, for at most
    ``seconds``; then, or at once for any other storage error, one line naming the storage and
    what could not be done."""
    with reported_as_store_error(storage_name(url), what, only=STORAGE_ERRORS):
        return retrying(call, seconds, storage_name(url))
