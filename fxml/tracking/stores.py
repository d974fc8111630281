"""Tracking stores that several processes share and that can go away: drivers, creation, outages.

- A database URL needs its SQLAlchemy driver; a missing one is one line naming the extra to install.
- Processes starting together (sweep workers, parallel launchers, cron jobs) race to create a new
  store's tables and the same experiment: creation runs under a lock the backend provides (a file
  lock beside a SQLite file, an advisory lock on PostgreSQL or MySQL), and "already exists" from a
  racing process means "use it".
- A tracking server or database that stops answering is retried for a bounded time
  (``tracking.retry_seconds``), then reported as one line.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from filelock import FileLock

from fxml.errors import FxmlError, error_chain, output_closed
from fxml.secrets import redact

if TYPE_CHECKING:
    from mlflow import MlflowClient

POSTGRES_EXTRA = 'pip install "fxml[postgres]"'
SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
# MLflow's HTTP client reads these per request (urllib3 retries with exponential backoff)
RETRY_ENV = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
             "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "MLFLOW_HTTP_REQUEST_TIMEOUT")
_LOCK_NAME = "fxml-store-creation"
log = logging.getLogger("fxml.tracking")
_opened_stores: set[str] = set()  # the URIs this process has opened a store of (store_client)
_connect_window: list[float] = [30.0]
T = TypeVar("T")
_UNREACHABLE = ("max retries exceeded", "connection refused", "failed to establish a new connection",
                "connection reset", "read timed out", "server closed the connection",
                "could not connect to server", "connection to server at", "terminating connection",
                "connection is closed", "remote end closed connection")
_ALREADY_EXISTS = ("already exists", "resource_already_exists", "uniqueviolation",
                   "unique constraint", "duplicate key", "duplicate entry", "integrityerror")


def is_database(uri: str) -> bool:
    return uri.split(":", 1)[0].split("+", 1)[0] in SQL_SCHEMES


def check_driver(uri: str, setting: str) -> None:
    """One line, without the password, when ``uri`` names a database whose driver is missing."""
    if not is_database(uri):
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        make_url(uri).get_dialect().import_dbapi()
    except (ArgumentError, NoSuchModuleError, ValueError) as error:
        raise FxmlError(f"{setting}={redact(uri)} is not a database URL SQLAlchemy understands "
                        f"({redact(str(error).splitlines()[0])})") from None
    except ImportError as error:
        hint = POSTGRES_EXTRA if uri.startswith("postgresql") else f"pip install {error.name or 'the driver'}"
        raise FxmlError(f"{setting}={redact(uri)} needs a database driver that is not installed "
                        f"(no module {error.name}): {hint}") from None


def bound_retries(seconds: float) -> None:
    """A tracking server or database that stops answering is retried for about ``seconds``:
    MLflow's HTTP client gives up then (its defaults retry each request for minutes; settings the
    user exported win), and new database connections are retried that long (a short restart of
    PostgreSQL is survived: pooled connections are pinged before use and reopened)."""
    seconds = max(float(seconds), 1.0)
    _connect_window[0] = seconds
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if not event.contains(Engine, "do_connect", _connect_with_retries):
        event.listen(Engine, "do_connect", _connect_with_retries)
    # urllib3 sleeps 0, 2b, 4b, ... between attempts: r retries with factor 1 wait ~2**r - 2 s
    retries = max(1, int(math.log2(seconds + 2)))
    defaults = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries),
                "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.2",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, math.ceil(seconds)))}
    for name in RETRY_ENV:
        os.environ.setdefault(name, defaults[name])


def _connect_with_retries(dialect, connection_record, cargs, cparams):  # type: ignore[no-untyped-def]
    """SQLAlchemy's ``do_connect`` hook: open a database connection, retrying a refused one."""
    if dialect.name == "sqlite":
        return None  # a file: nothing to wait for; SQLAlchemy connects as usual
    deadline, delay, warned = time.monotonic() + _connect_window[0], 0.5, False
    while True:
        try:
            return dialect.connect(*cargs, **cparams)
        except dialect.loaded_dbapi.OperationalError as error:
            if time.monotonic() + delay > deadline:
                raise
            if not warned:
                log.warning("tracking: the %s database does not answer (%s); retrying for up to %.0f s",
                            dialect.name, redact(str(error).strip().splitlines()[0]), _connect_window[0])
                warned = True
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def retrying(call: Callable[[], T]) -> T:
    """``call()``, repeated while the store does not answer, for the bounded retry window: a
    database connection dropped by a restart fails the statement it was running (a new
    connection is what ``_connect_with_retries`` waits for)."""
    deadline, delay = time.monotonic() + _connect_window[0], 0.5
    while True:
        try:
            return call()
        except Exception as error:
            if not is_unreachable(error) or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def is_unreachable(error: BaseException) -> bool:
    """Whether ``error`` says the tracking server or database stopped answering (a closed
    stdout is a ``BrokenPipeError`` too, a ``ConnectionError``, but says nothing of the server)."""
    if output_closed(error):
        return False
    for link in error_chain(error):
        if isinstance(link, (ConnectionError, TimeoutError)):
            return True
        text = f"{type(link).__name__}: {link}".lower()
        if any(marker in text for marker in _UNREACHABLE):
            return True
    return False


def is_already_exists(error: BaseException) -> bool:
    return any(marker in f"{type(link).__name__}: {link}".lower()
               for link in error_chain(error) for marker in _ALREADY_EXISTS)


@contextmanager
def creation_lock(uri: str, create_folder: bool = True) -> Iterator[None]:
    """Serialise store and experiment creation across processes on the same backend. A SQLite
    file's folder is created first, or with ``create_folder=False`` left alone: where it is
    missing nothing is locked, and opening the database fails as it would without the lock."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0]
    if scheme == "sqlite" and uri.startswith("sqlite:///") and ":memory:" not in uri:
        database = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
        if create_folder:
            database.parent.mkdir(parents=True, exist_ok=True)
        elif not database.parent.is_dir():
            yield
            return
        with FileLock(str(database) + ".lock"):
            yield
    elif scheme in ("postgresql", "mysql"):
        with _database_lock(uri, scheme):
            yield
    else:
        yield


def store_client(uri: str | None = None) -> MlflowClient:
    """MLflow's client for ``uri`` (the current tracking URI when None). The first one a process
    constructs for a store opens it, which creates or migrates a new database's tables: under the
    creation lock, since two processes migrating one SQLite file at once fail ("Online migration
    expected to match one row"). MLflow keeps the opened store for the process, so later clients
    take no lock (nor its connection, which a database that is restarting would refuse at once,
    before the retries around the client's calls could wait for it)."""
    import mlflow

    uri = uri or mlflow.get_tracking_uri()
    if uri in _opened_stores:
        return mlflow.MlflowClient(uri)
    with creation_lock(uri):
        client = mlflow.MlflowClient(uri)
    _opened_stores.add(uri)
    return client


@contextmanager
def _database_lock(uri: str, scheme: str) -> Iterator[None]:
    import sqlalchemy as sa

    key = int.from_bytes(hashlib.sha256(_LOCK_NAME.encode()).digest()[:7], "big")
    if scheme == "postgresql":
        take, release = f"SELECT pg_advisory_lock({key})", f"SELECT pg_advisory_unlock({key})"
    else:
        take, release = f"SELECT GET_LOCK('{_LOCK_NAME}', 120)", f"SELECT RELEASE_LOCK('{_LOCK_NAME}')"
    engine = sa.create_engine(uri, poolclass=sa.pool.NullPool)
    try:
        connection = engine.connect()
    except Exception as error:
        raise FxmlError(f"cannot connect to {redact(uri)}: {redact(first_line(error))}") from None
    try:
        connection.execute(sa.text(take))
        connection.commit()
        yield
    finally:
        try:
            connection.execute(sa.text(release))
            connection.commit()
        finally:
            connection.close()
            engine.dispose()


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__
