"""Errors that reach users as one line, without a traceback, and the one retry policy.

- :func:`describe` is the one way to put an exception in one line (a database error by the
  driver's own words, passwords masked).
- Failures of a store (MLflow tracking, the Optuna storage) are classified by type:
  :func:`connection_lost` (retried by :func:`retrying`) or anything else, such as a refused
  password (:func:`access_denied`), which fails at once with :func:`store_error`'s one line.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from fxml.secrets import redact

if TYPE_CHECKING:  # imported where it is used: a logged model loads fxml.errors without it
    import tenacity

T = TypeVar("T")
log = logging.getLogger("fxml.retry")
FIRST_PAUSE, LONGEST_PAUSE = 0.5, 5.0
# SQLSTATE (PostgreSQL, and the standard): class 08 is a connection exception; 57P01-57P03 a
# server shutting down or starting up; class 28 refused credentials; 42501 a missing privilege
_LOST_SQLSTATES = ("57P01", "57P02", "57P03")
_DENIED_SQLSTATES = ("42501",)
# MySQL client error numbers: cannot connect / server gone away / connection lost; access denied
_MYSQL_LOST, _MYSQL_DENIED = (2002, 2003, 2006, 2013), (1044, 1045, 1142)
# MLflow's error codes (RestException, MlflowException) and the HTTP statuses behind them
_MLFLOW_DENIED = ("UNAUTHENTICATED", "PERMISSION_DENIED", "CUSTOMER_UNAUTHORIZED")
_MLFLOW_EXISTS = ("RESOURCE_ALREADY_EXISTS",)
_HTTP_DENIED = (401, 403)
_DRIVERS = ("psycopg", "psycopg2", "pymysql", "MySQLdb")


class FxmlError(Exception):
    """A problem with the user's input (config, data, credentials): reported as one line."""


def require(condition: bool, key: str, rule: str, value: object) -> None:
    """Raise the one-line error ``<key> <rule> (got <value>)`` unless ``condition`` holds."""
    if not condition:
        raise FxmlError(f"{key} {rule} (got {value!r})")


def one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    require(value in allowed, key, f"must be one of {', '.join(allowed)}", value)


def child_failure(stderr: str, returncode: int) -> str:
    """Why a child process failed, in one line: the last line it printed to stderr, else the signal
    that killed it (SIGKILL is most often the kernel's out-of-memory killer), else its exit code."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    if lines:
        return lines[-1].strip()
    if returncode < 0:
        return f"killed by signal {-returncode}" + (" (out of memory?)" if returncode == -9 else "")
    return f"exit code {returncode}"


class RunPruned(Exception):
    """A run stopped early on purpose (a sweep pruned its trial): the tracked run ends KILLED with
    a ``pruned`` tag. The sweep layer raises a subclass that Optuna recognises too, so tracking
    needs no Optuna."""


class LostJob(FxmlError):
    """A launcher's job that ended without a result: its worker, process or cluster job was
    killed (out of memory, cancelled, timed out) or its node went away. The job FAILs with this
    one line; the batch's other jobs keep theirs."""


class RunStopped(Exception):
    """A run stopped from outside on purpose (its sweep was stopped and ended its trial): the
    tracked run ends KILLED with a ``stopped`` tag."""


def describe_config_error(error: BaseException) -> str:
    """One line for an OmegaConf/Hydra composition error: the message and the key it is about."""
    from omegaconf.errors import OmegaConfBaseException  # here: errors stays a dependency-free leaf

    cause = error
    while cause.__cause__ is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__
    for candidate in (cause, cause.__cause__):
        if isinstance(candidate, FxmlError):
            return str(candidate)
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    message = lines[0] if lines else type(cause).__name__
    key = getattr(cause, "full_key", None)
    if key and key not in message:
        message = f"{message} (key: {key})"
    if key and "not in" in message:
        prefix, _, name = key.rpartition(".")
        guess = closest(name, known_keys(cause))
        if guess:
            message = f"{message}; did you mean {prefix + '.' if prefix else ''}{guess}?"
    if "Available options" in str(cause):
        start = next(i for i, line in enumerate(lines) if line.startswith("Available options"))
        options = [line for line in lines[start + 1 :] if " " not in line and ":" not in line]
        missing = re.search(r"Could not find '([^']+)'", message)
        group, _, option = missing.group(1).rpartition("/") if missing else ("", "", "")
        guess = closest(option, options)
        message += f"; did you mean {group}={guess}? Available: " if guess else "; available: "
        message += ", ".join(options)
    return message


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice a misspelt ``word`` most likely meant, if one is close."""
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def known_keys(error: BaseException) -> list[str]:
    """The keys the node an unknown key was set on has: its schema's fields, or its own keys."""
    schema = getattr(error, "object_type", None)
    if isinstance(schema, type) and dataclasses.is_dataclass(schema):
        return [field.name for field in dataclasses.fields(schema)]
    parent: Any = getattr(error, "parent_node", None)
    return [str(key) for key in parent] if hasattr(parent, "keys") else []


OUTPUT_CLOSED = "the output was closed (broken pipe)"


def output_closed(error: BaseException) -> bool:
    """Whether ``error`` is a write to a closed stdout (``fxml.run | head``): Python's own
    ``BrokenPipeError``, or the ``SystemExit(1)`` that rich raises in its place. A tracking
    server that drops a connection surfaces as its client library's error instead."""
    return isinstance(error, (SystemExit, BrokenPipeError)) \
        and any(isinstance(link, BrokenPipeError) for link in error_chain(error))


def error_chain(error: BaseException) -> Iterator[BaseException]:
    """``error``, then what caused it or was being handled when it was raised (unless it was
    raised ``from None``), and so on (each exception once: a chain can loop)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)


def describe(error: BaseException) -> str:
    """``error`` in one line, ``Type: first line of the message``, passwords masked. An error a
    library raised from a database driver's (SQLAlchemy's ``.orig``, Optuna's storage errors) is
    described by the driver's error, which says what the server answered."""
    for link in (error, error.__cause__):
        inner = getattr(link, "orig", None)
        if isinstance(inner, BaseException):
            error = inner
            break
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return redact(f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__)


def _driver_errors(error: BaseException) -> Iterator[BaseException]:
    """Each link of ``error``'s chain, and the DB-API error a SQLAlchemy error wraps."""
    for link in error_chain(error):
        yield link
        inner = getattr(link, "orig", None)
        if isinstance(inner, BaseException):
            yield inner


def _sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE of a database driver's error (psycopg 3: ``sqlstate``, psycopg2: ``pgcode``)."""
    code = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    return code if isinstance(code, str) else None


def _is_driver_error(error: BaseException, name: str) -> bool:
    """Whether ``error`` is a DB-API driver's exception class ``name`` (or a subclass of it): the
    drivers are optional, so their classes are recognised without importing them."""
    return any(cls.__name__ == name and cls.__module__.split(".")[0] in _DRIVERS
               for cls in type(error).__mro__)


def _server_checked_credentials(error: BaseException) -> bool:
    """A psycopg connection failure carries no SQLSTATE; its connection says whether the server
    got as far as asking for or checking a password (then it answered, and refused)."""
    pgconn = getattr(error, "pgconn", None)
    return bool(pgconn is not None and (getattr(pgconn, "used_password", False)
                                        or getattr(pgconn, "needs_password", False)))


def _http_status(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int):
        return status
    get_status = getattr(error, "get_http_status_code", None)  # MlflowException
    return get_status() if callable(get_status) and getattr(error, "error_code", None) else None


def access_denied(error: BaseException) -> bool:
    """Whether a store refused the credentials or the permission: SQLSTATE class 28 or 42501,
    MySQL's access denied, a psycopg connection refused after the password, MLflow's
    UNAUTHENTICATED / PERMISSION_DENIED, HTTP 401 / 403."""
    for link in _driver_errors(error):
        state = _sqlstate(link)
        if state is not None and (state.startswith("28") or state in _DENIED_SQLSTATES):
            return True
        if _is_driver_error(link, "OperationalError") and state is None and _server_checked_credentials(link):
            return True
        if _is_driver_error(link, "OperationalError") and link.args and link.args[0] in _MYSQL_DENIED:
            return True
        if getattr(link, "error_code", None) in _MLFLOW_DENIED or _http_status(link) in _HTTP_DENIED:
            return True
    return False


def connection_lost(error: BaseException) -> bool:
    """Whether a store stopped answering (worth trying again): a refused, reset or timed-out
    connection (Python's, requests', urllib3's), a database connection error (SQLSTATE class 08,
    57P01-57P03, a psycopg connection failure before any password was checked, MySQL's lost
    connection). A closed stdout is a ``BrokenPipeError`` too but says nothing of a store."""
    if output_closed(error) or access_denied(error):
        return False
    import requests.exceptions  # here: most commands never ask
    import urllib3.exceptions

    network = (ConnectionError, TimeoutError, requests.exceptions.ConnectionError,
               requests.exceptions.Timeout, urllib3.exceptions.MaxRetryError,
               urllib3.exceptions.NewConnectionError, urllib3.exceptions.ProtocolError,
               urllib3.exceptions.TimeoutError)
    for link in _driver_errors(error):
        if isinstance(link, network):
            return True
        state = _sqlstate(link)
        if state is not None and (state.startswith("08") or state in _LOST_SQLSTATES):
            return True
        if _is_driver_error(link, "OperationalError"):
            if state is None and getattr(link, "pgconn", None) is not None:
                return True  # psycopg could not connect, and no password was refused
            if link.args and link.args[0] in _MYSQL_LOST:
                return True
        if getattr(link, "connection_invalidated", False):  # SQLAlchemy saw the connection drop
            return True
    return False


def already_exists(error: BaseException) -> bool:
    """Whether a create lost a race to another process: a unique-key violation (SQLSTATE 23505,
    SQLAlchemy's ``IntegrityError``), a table created meanwhile (42P07), MLflow's
    RESOURCE_ALREADY_EXISTS."""
    from sqlalchemy.exc import IntegrityError

    return any(isinstance(link, IntegrityError) or _sqlstate(link) in ("23505", "42P07")
               or getattr(link, "error_code", None) in _MLFLOW_EXISTS
               for link in _driver_errors(error))


def store_error(store: str, error: BaseException, doing: str = "") -> FxmlError:
    """The one line for a store (``MLflow tracking at <url>``, ``the Optuna storage at <url>``)
    that failed: refused access, stopped answering, or failed otherwise; passwords masked."""
    how = "refused access" if access_denied(error) else \
        "stopped answering" if connection_lost(error) else "failed"
    doing = f" while trying to {doing}" if doing else ""
    return FxmlError(redact(f"{store} {how}{doing} ({describe(error)})"))


@contextmanager
def reported_as_store_error(store: str, doing: str = "",
                            only: type[BaseException] | tuple[type[BaseException], ...] = Exception,
                            ) -> Iterator[None]:
    """Inside, a failure of ``store`` (an exception of the types ``only``) is raised as
    :func:`store_error`'s one line; fxml's own one-line errors, and anything else, pass as they
    are."""
    try:
        yield
    except FxmlError:
        raise
    except only as error:
        raise store_error(store, error, doing) from None


def retrying(call: Callable[[], T], seconds: float, what: str = "a store") -> T:
    """``call()``, tried again while :func:`connection_lost` says the store is away, with growing
    pauses for at most ``seconds``; any other error, or the last one, is raised as it is."""
    import tenacity

    def warn(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        if state.attempt_number == 1 and error is not None:
            log.warning("%s does not answer (%s); trying again for up to %.0f s", redact(what),
                        describe(error), seconds)

    policy = tenacity.Retrying(
        retry=tenacity.retry_if_exception(connection_lost),
        stop=tenacity.stop_after_delay(max(seconds, 0.0)),
        wait=tenacity.wait_exponential(multiplier=FIRST_PAUSE, max=LONGEST_PAUSE),
        before_sleep=warn, reraise=True)
    return policy(call)
