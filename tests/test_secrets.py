"""No password or Numerai key is written anywhere a run writes, nor printed.

A real PostgreSQL server is the MLflow backend; its password (a sentinel) is put in the URL both
ways users do it, and a sentinel Numerai key sits in the environment. Afterwards every file of the
project folder (outputs/, multirun/, artifacts, Hydra's files and logs), everything printed, and a
dump of the tracking database (params, tags, ...) are searched for both.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from fxml.secrets import redact
from fxml.tracking.stores import store_client
from tests.conftest import Workspace
from tests.helpers import files_containing
from tests.postgres_server import PASSWORD, USER, postgres  # noqa: F401

NUMERAI_KEY = "NUMERAI-Key-Sentinel-4242"


def dump(server, database: str) -> str:  # type: ignore[no-untyped-def]
    return subprocess.run([str(server.bin / "pg_dump"), "-h", "127.0.0.1", "-p", str(server.port),
                           "-U", USER, database], capture_output=True, text=True, check=True,
                          env={**os.environ, "PGPASSWORD": PASSWORD}).stdout


@pytest.mark.parametrize("form", ["userinfo", "query"])
def test_no_secret_is_written_or_printed(postgres, tmp_path: Path, form: str) -> None:  # noqa: F811
    database = f"secrets_{form}"
    postgres.create_database(database)
    uri = postgres.url(database) if form == "userinfo" else \
        f"{postgres.url(database, with_password=False)}?password={PASSWORD}"
    workspace = Workspace(tmp_path)
    keys = {"NUMERAI_PUBLIC_ID": "NUMERAI-Id-Sentinel-1", "NUMERAI_SECRET_KEY": NUMERAI_KEY}
    single = workspace.run(f"tracking.uri='{uri}'", "model.n_estimators=5",
                           "+tracking.tags.origin=from-the-test", **keys)
    assert single.returncode == 0, redact(single.stderr)
    assert "MLflow run" in single.stdout and "***" in single.stdout
    assert list(tmp_path.glob("outputs/*/*/.hydra/overrides.yaml"))
    multi = subprocess.CompletedProcess([], 0, "", "")
    if form == "userinfo":
        # a multirun: Hydra logs a launch line per job with the overrides, and writes them again
        # to stderr for a job that fails (a bad value here), past fxml's own messages
        multi = workspace.run("-m", f"tracking.uri='{uri}'", "model.n_estimators=3,-4",
                              "tracking.log_model=false", "hydra.sweep.dir=multirun/secrets", **keys)
        assert multi.returncode == 2, redact(multi.stderr)
        assert "#1 :" in multi.stdout + multi.stderr, "Hydra's launch lines are shown (masked)"
        assert "Error executing job with overrides" in multi.stderr
        assert f"{USER}:***@" in multi.stderr
        assert (tmp_path / "multirun" / "secrets" / "multirun.yaml").is_file()

    database_text = dump(postgres, database)
    assert "tracking.uri" in database_text, "the params are in the dump"
    for secret in (PASSWORD, NUMERAI_KEY, "NUMERAI-Id-Sentinel-1"):
        assert secret not in single.stdout + single.stderr + multi.stdout + multi.stderr
        assert files_containing(tmp_path, secret) == []
        assert secret not in database_text


def test_credentials_from_the_environment(postgres, tmp_path: Path) -> None:  # noqa: F811
    """libpq's PGPASSWORD, or ${oc.env:...} in the URL: the password is never in the config."""
    postgres.create_database("from_env")
    workspace = Workspace(tmp_path)
    plain = workspace.run(f"tracking.uri={postgres.url('from_env', with_password=False)}",
                          "model.n_estimators=3", "tracking.log_model=false", PGPASSWORD=PASSWORD)
    assert plain.returncode == 0, plain.stderr
    interpolated = postgres.url("from_env", with_password=False).replace(
        f"{USER}@", f"{USER}:${{oc.env:FXML_TEST_PG_PASSWORD}}@")
    resolved = workspace.run(f"tracking.uri='{interpolated}'", "model.n_estimators=3",
                             "tracking.log_model=false", FXML_TEST_PG_PASSWORD=PASSWORD)
    assert resolved.returncode == 0, resolved.stderr
    assert files_containing(tmp_path, PASSWORD) == []
    assert PASSWORD not in dump(postgres, "from_env")
    assert len(workspace_runs(postgres.url("from_env"))) == 2


def workspace_runs(uri: str) -> list:
    client = store_client(uri)
    return client.search_runs([client.get_experiment_by_name("fxml").experiment_id])


@pytest.mark.parametrize(("text", "masked"), [
    ("postgresql://fxml:s3cr@t:x@db:5432/mlflow", "postgresql://fxml:***@db:5432/mlflow"),
    ("postgresql://fxml@db/mlflow?sslmode=require&password=s3cret", "postgresql://fxml@db/mlflow?sslmode=require&password=***"),
    ("mysql+pymysql://u:p@h/d and https://:token@host/x", "mysql+pymysql://u:***@h/d and https://:***@host/x"),
    ("uri: 'postgresql://u:p/q@h:1'\nnext: x@y", "uri: 'postgresql://u:***@h:1'\nnext: x@y"),
    ("sqlite:///mlruns/mlflow.db", "sqlite:///mlruns/mlflow.db"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    # where the password comes from is no secret: the saved command must still run
    ("postgresql://fxml:${oc.env:PGPASSWORD}@db/mlflow", "postgresql://fxml:${oc.env:PGPASSWORD}@db/mlflow"),
    ("postgresql://fxml@db/m?password=${oc.env:PG}", "postgresql://fxml@db/m?password=${oc.env:PG}"),
    ("postgresql://fxml:${oc.env:PG}x}@db/mlflow", "postgresql://fxml:***@db/mlflow"),
])
def test_redact(text: str, masked: str) -> None:
    assert redact(text) == masked


def test_a_search_hands_its_jobs_passwords_masked_in_every_file(postgres, tmp_path: Path) -> None:  # noqa: F811
    """The study's storage and the tracking URI reach each job in its config (sweep.storage,
    tracking.uri), with the password: masked in .hydra/*.yaml, multirun.yaml, logs and output."""
    postgres.create_database("secret_search")
    postgres.create_database("secret_study")
    workspace = Workspace(tmp_path)
    result = workspace.run("-m", "hparams_search=lgbm", f"tracking.uri={postgres.url('secret_search')}",
                           f"hydra.sweeper.storage={postgres.url('secret_study')}",
                           "hydra.sweeper.n_trials=1", "hydra.sweeper.pruner.name=none",
                           "model.n_estimators=5", "tracking.log_model=false",
                           "hydra.sweep.dir=multirun/secret")
    assert result.returncode == 0, redact(result.stderr)
    job_overrides = (tmp_path / "multirun" / "secret" / "0" / ".hydra" / "overrides.yaml").read_text()
    assert "sweep.storage='postgresql://fxml:***@" in job_overrides
    assert "tracking.uri=postgresql://fxml:***@" in job_overrides
    assert PASSWORD not in result.stdout + result.stderr
    assert files_containing(tmp_path, PASSWORD) == []
    assert PASSWORD not in dump(postgres, "secret_search")


def test_whatever_a_library_prints_is_masked(capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow writes its "View run" line straight to sys.stdout, Hydra its failed job's overrides to
    sys.stderr: both pass through the masked streams every command runs with."""
    import sys

    from fxml.secrets import redact_output_streams

    monkeypatch.setattr(sys, "stdout", sys.stdout)  # given back after the test
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    redact_output_streams()
    redact_output_streams()  # idempotent: one wrapper
    assert not getattr(sys.stdout.stream, "fxml_redacts", False)
    sys.stdout.write("🏃 View run ridge at: http://fxml:Sentinel-77@127.0.0.1:5055/#/experiments/1\n")
    sys.stderr.write("Error executing job with overrides: ['tracking.uri=postgresql://u:Sentinel-77@db/m']\n")
    out, err = capsys.readouterr()
    assert out == "🏃 View run ridge at: http://fxml:***@127.0.0.1:5055/#/experiments/1\n"
    assert err == "Error executing job with overrides: ['tracking.uri=postgresql://u:***@db/m']\n"
