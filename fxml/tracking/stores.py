"""Tracking stores that several processes share and that can go away: drivers, creation, outages.

- A database URL needs its SQLAlchemy driver; a missing one is one line naming the extra to install.
- Processes starting together (sweep workers, parallel launchers, cron jobs) race to create a new
  store's tables and the same experiment: creation runs under a lock the backend provides (a file
  lock beside a SQLite file, an advisory lock on PostgreSQL or MySQL), and "already exists" from a
  racing process means "use it".
- A tracking server or database that stops answering is retried for a bounded time
  (``tracking.retry_seconds``), then reported as one line; refused credentials fail at once.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from filelock import FileLock

from fxml.errors import FxmlError, reported_as_store_error
from fxml.errors import retrying as retry_policy
from fxml.secrets import redact

if TYPE_CHECKING:
    from mlflow import MlflowClient

POSTGRES_EXTRA = 'pip install "fxml[postgres]"'
SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
# MLflow's HTTP client reads these per request (urllib3 retries with exponential backoff)
RETRY_ENV = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
             "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "MLFLOW_HTTP_REQUEST_TIMEOUT")
_LOCK_NAME = "fxml-store-creation"
_opened_stores: set[str] = set()  # the URIs this process has opened a store of (store_client)
_retry_window: list[float] = [30.0]  # tracking.retry_seconds of the running command
T = TypeVar("T")


def tracking_store(uri: str) -> str:
    """How a one-line error names the MLflow store at ``uri`` (password masked)."""
    return f"MLflow tracking at {redact(uri)}"


def is_database(uri: str) -> bool:
    return uri.split(":", 1)[0].split("+", 1)[0] in SQL_SCHEMES


DEFAULT_STORE = Path("mlruns")
DEFAULT_URI = f"sqlite:///{DEFAULT_STORE}/mlflow.db"


def tracking_uri(configured: str | None, setting: str = "tracking.uri") -> str:
    """The store to use; a database URL whose driver is missing is one line naming the extra."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    check_driver(uri, setting)
    return uri


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
    """A tracking server or database that stops answering is retried for about ``seconds``
    (a command calls this when it starts): fxml's calls to the store retry a lost connection that
    long (:func:`retrying`), and MLflow's HTTP client gives up then (its defaults retry each
    request for minutes; settings the user exported win). Nothing is changed in SQLAlchemy."""
    seconds = max(float(seconds), 1.0)
    _retry_window[0] = seconds
    # urllib3 sleeps 0, 2b, 4b, ... between attempts: r retries with factor 1 wait ~2**r - 2 s
    retries = max(1, int(math.log2(seconds + 2)))
    defaults = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries),
                "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.2",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, math.ceil(seconds)))}
    for name in RETRY_ENV:
        os.environ.setdefault(name, defaults[name])


def retrying(call: Callable[[], T]) -> T:
    """``call()`` on the tracking store, tried again while the store does not answer, for the
    window :func:`bound_retries` set (fxml's one retry policy, :func:`fxml.errors.retrying`)."""
    return retry_policy(call, _retry_window[0], "the MLflow tracking store")


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
    with reported_as_store_error(tracking_store(uri)), creation_lock(uri):
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
    connection = retry_policy(engine.connect, _retry_window[0], f"the database at {redact(uri)}")
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
