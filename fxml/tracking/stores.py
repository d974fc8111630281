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
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock

from fxml.errors import FxmlError
from fxml.secrets import redact

POSTGRES_EXTRA = 'pip install "fxml[postgres]"'
SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
# MLflow's HTTP client reads these per request (urllib3 retries with exponential backoff)
RETRY_ENV = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
             "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "MLFLOW_HTTP_REQUEST_TIMEOUT")
_LOCK_NAME = "fxml-store-creation"
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


def bound_http_retries(seconds: float) -> None:
    """Make MLflow's HTTP client give up on an unreachable server after about ``seconds``
    (its defaults retry each request for minutes). Settings the user exported win."""
    seconds = max(float(seconds), 1.0)
    # urllib3 sleeps 0, 2b, 4b, ... between attempts: r retries with factor 1 wait ~2**r - 2 s
    retries = max(1, int(math.log2(seconds + 2)))
    defaults = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries),
                "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.2",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, math.ceil(seconds)))}
    for name in RETRY_ENV:
        os.environ.setdefault(name, defaults[name])


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_unreachable(error: BaseException) -> bool:
    """Whether ``error`` says the tracking server or database stopped answering."""
    for link in _chain(error):
        if isinstance(link, (ConnectionError, TimeoutError)):
            return True
        text = f"{type(link).__name__}: {link}".lower()
        if any(marker in text for marker in _UNREACHABLE):
            return True
    return False


def is_already_exists(error: BaseException) -> bool:
    return any(marker in f"{type(link).__name__}: {link}".lower()
               for link in _chain(error) for marker in _ALREADY_EXISTS)


@contextmanager
def creation_lock(uri: str) -> Iterator[None]:
    """Serialise store and experiment creation across processes on the same backend."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0]
    if scheme == "sqlite" and uri.startswith("sqlite:///") and ":memory:" not in uri:
        database = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
        database.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(database) + ".lock"):
            yield
    elif scheme in ("postgresql", "mysql"):
        with _database_lock(uri, scheme):
            yield
    else:
        yield


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
