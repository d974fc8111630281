"""Bounded retries around the Optuna storage, so a database restart of some seconds is survived."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import optuna
import sqlalchemy.exc

from fxml.errors import FxmlError

log = logging.getLogger(__name__)
T = TypeVar("T")
# a connection lost or refused; RDBStorage wraps SQLAlchemy's errors in StorageInternalError
TRANSIENT = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
             optuna.exceptions.StorageInternalError)
FIRST_PAUSE, LONGEST_PAUSE = 0.5, 5.0


def with_retries(what: str, call: Callable[[], T], seconds: float) -> T:
    """``call()``, tried again while the storage is unreachable, for at most ``seconds``; then one
    line naming what could not be done."""
    deadline = time.monotonic() + seconds
    pause = FIRST_PAUSE
    while True:
        try:
            return call()
        except TRANSIENT as error:
            left = deadline - time.monotonic()
            if left <= 0:
                raise FxmlError(f"the Optuna storage did not answer for {seconds:g} s while trying "
                                f"to {what}: {first_line(error)}") from None
            log.warning("sweep: the Optuna storage is unreachable (%s); trying again to %s",
                        first_line(error), what)
            time.sleep(min(pause, left))
            pause = min(pause * 2, LONGEST_PAUSE)


def first_line(error: BaseException) -> str:
    cause = error.__cause__ or error
    text = str(getattr(cause, "orig", None) or cause).strip()
    return text.splitlines()[0] if text else type(error).__name__
