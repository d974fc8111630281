"""Opening a tracking store that another process may be creating at the same moment."""

from __future__ import annotations

import threading
from pathlib import Path

import mlflow

from fxml.tracking.stores import creation_lock, store_client


def test_a_client_opens_a_new_store_only_under_the_creation_lock(tmp_path: Path) -> None:
    # MLflow's client creates (migrates) a new database's tables as it is constructed; two
    # processes doing that to one SQLite file at once fail, so fxml's clients wait for the lock
    database = tmp_path / "mlruns" / "mlflow.db"
    uri = f"sqlite:///{database}"
    opened: list[mlflow.MlflowClient] = []
    with creation_lock(uri):  # held as a run creating this store would hold it
        opener = threading.Thread(target=lambda: opened.append(store_client(uri)))
        opener.start()
        opener.join(timeout=3)
        assert opener.is_alive() and not database.exists(), "the store was opened under another's lock"
    opener.join(timeout=300)
    assert opened, "the client never opened the store once the lock was free"
    assert [e.name for e in opened[0].search_experiments()] == ["Default"]


def test_a_store_once_opened_gives_clients_without_the_lock(tmp_path: Path) -> None:
    # MLflow keeps the opened store for the process: later clients need no lock, nor the database
    # connection a lock on PostgreSQL takes (refused at once while it restarts, before the retries
    # around the client's calls could wait for it)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store_client(uri).search_experiments()
    opened: list[mlflow.MlflowClient] = []
    with creation_lock(uri):
        opener = threading.Thread(target=lambda: opened.append(store_client(uri)))
        opener.start()
        opener.join(timeout=20)
        assert not opener.is_alive() and opened, "a client of an opened store waited for the lock"
