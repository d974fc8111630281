"""Bad input: one clear line, non-zero exit, no traceback, the MLflow run marked FAILED.

The messages are checked in-process through the command's own error handling (fxml.cli.run_cli
around the composed config and fxml.run.train); two subprocess tests prove the command line wiring."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from fxml.cli import USER_ERROR
from fxml.errors import FxmlError, access_denied, child_failure, connection_lost, describe, retrying
from tests.conftest import Workspace, assert_one_line_error


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("model.learning_rate=-0.1", ("model.learning_rate", "must be > 0", "-0.1")),
        ("model.n_estimator=3", ("n_estimator",)),
        ("model.n_estimators=many", ("model.n_estimators", "many")),
        ("trainer.accelerator=tpu", ("trainer.accelerator", "tpu")),
        ("model=catboost", ("catboost",)),
        ("data.every_nth_era=0", ("data.every_nth_era",)),
    ],
)
def test_wrong_config_values_fail_before_any_work(workspace: Workspace, override, fragments) -> None:
    before = len(workspace.runs())
    result = workspace.train(override)
    assert_one_line_error(result, *fragments)
    assert len(workspace.runs()) == before, "a config error must not start an MLflow run"


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("data.feature_set=huge", ("data.feature_set=huge", "small")),
        ("data.target=target_nobody_20", ("data.target=target_nobody_20",)),
        ("data.features=[feature_does_not_exist]", ("feature_does_not_exist",)),
    ],
)
def test_a_data_value_the_release_lacks_fails_before_a_run(workspace: Workspace, override,
                                                          fragments) -> None:
    name = f"bad-{override.split('=')[0]}"
    result = workspace.train(override, f"tracking.run_name={name}")
    assert_one_line_error(result, *fragments)
    assert not [r for r in workspace.runs() if r.info.run_name == name], "no run, not even a FAILED one"


def test_eras_the_release_lacks_mark_the_run_failed(workspace: Workspace) -> None:
    """Found only once the era column is read, inside the run: FAILED, with what it logged."""
    result = workspace.train("data.train_eras=[900,950]", "tracking.run_name=bad-eras")
    assert_one_line_error(result, "data.train_eras")
    run = next(r for r in workspace.runs() if r.info.run_name == "bad-eras")
    assert run.info.status == "FAILED"
    assert "data.train_eras" in run.data.tags["error"]
    assert "model.n_estimators" in run.data.params, "what was logged before the failure stays"


@pytest.mark.parametrize(("override", "line"), [
    ("model.n_estimator=3", "fxml: config error: Key 'n_estimator' not in 'LightGBMParams'"),
    ("data.feature_set=huge", "fxml: error: data.feature_set=huge"),
    ("tracking.retry_seconds=-1", "fxml: error: tracking.retry_seconds must be >= 0 (got -1.0)"),
])
def test_the_command_prints_the_same_one_line(workspace: Workspace, override: str, line: str) -> None:
    """What a user types: the subprocess shows the line and exit code the in-process checks see."""
    typed, in_process = workspace.run(override, "tracking.log_model=false"), workspace.train(override)
    assert_one_line_error(typed, line.split(": ", 2)[-1])
    assert typed.stderr.startswith(line) and typed.stderr == in_process.stderr
    assert typed.returncode == in_process.returncode == USER_ERROR


@pytest.fixture(scope="module")
def synthetic_release(workspace: Workspace) -> Path:
    """The small synthetic release, made by one short run."""
    made = workspace.train("tracking.log_model=false", "model.n_estimators=5",
                           "tracking.run_name=prepare-copy")
    assert made.returncode == 0, made.stderr
    (release,) = (workspace.root / "data" / "synthetic").glob("v5.3-*")
    return release


@pytest.fixture()
def broken_copy(synthetic_release: Path, tmp_path: Path) -> Path:
    """The small synthetic release copied as a local Numerai v5.3 folder that a test may damage."""
    copy = tmp_path / "numerai" / "v5.3"
    shutil.copytree(synthetic_release, copy)
    return copy


def _small_features(folder: Path) -> list[str]:
    return json.loads((folder / "features.json").read_text())["feature_sets"]["small"]


def _run_on(workspace: Workspace, folder: Path, name: str):
    """Run on a local v5 folder with no network: nothing can be downloaded."""
    return workspace.train("data=v5", "data.version=v5.3", f"data.directory={folder.parent}",
                           "data.source.api._target_=tests.fakes.OfflineNumerAPI",
                           f"tracking.run_name={name}", "tracking.log_model=false", small=False)


def test_local_release_runs_offline(workspace: Workspace, broken_copy: Path) -> None:
    result = _run_on(workspace, broken_copy, "offline-ok")
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and "MLflow run" in result.stdout
    run = next(r for r in workspace.runs() if r.info.run_name == "offline-ok")
    made = next(r for r in workspace.runs() if r.info.run_name == "prepare-copy")
    assert run.info.status == "FINISHED" and result.value["mlflow_run_id"] == run.info.run_id
    # the copied release, read from the local folder: its resolved validation eras, every 4th training era
    assert run.data.tags["data_version"] == "v5.3"
    assert run.data.params["data.directory"] == str(broken_copy.parent)
    assert run.data.metrics["n_eras"] == made.data.metrics["n_eras"] == 10  # 14 eras, 4 unresolved
    assert "data: train 2,417 rows, 10 eras" in result.logs
    assert np.isfinite(run.data.metrics["corr_mean"])


def test_truncated_parquet(workspace: Workspace, broken_copy: Path) -> None:
    path = broken_copy / "validation.parquet"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    result = _run_on(workspace, broken_copy, "truncated")
    assert_one_line_error(result, "validation.parquet", "not a complete parquet file")
    run = next(r for r in workspace.runs() if r.info.run_name == "truncated")
    assert run.info.status == "FAILED"


def test_missing_parquet_without_network(workspace: Workspace, broken_copy: Path) -> None:
    (broken_copy / "train.parquet").unlink()
    result = _run_on(workspace, broken_copy, "missing-file")
    assert_one_line_error(result, "could not download v5.3/train.parquet", "ConnectionError",
                          "check the network")


def test_missing_column(workspace: Workspace, broken_copy: Path) -> None:
    path = broken_copy / "train.parquet"
    dropped = _small_features(broken_copy)[0]
    pl.read_parquet(path).drop(dropped).write_parquet(path)
    result = _run_on(workspace, broken_copy, "missing-column")
    assert_one_line_error(result, "train.parquet", dropped)


def test_missing_feature_values(workspace: Workspace, broken_copy: Path) -> None:
    path = broken_copy / "train.parquet"
    column = _small_features(broken_copy)[-1]
    frame = pl.read_parquet(path).with_columns(
        pl.when(pl.int_range(pl.len()) == 7).then(None).otherwise(pl.col(column)).alias(column))
    frame.write_parquet(path)
    result = _run_on(workspace, broken_copy, "nan-feature")
    assert_one_line_error(result, column, "missing values")


def test_a_failed_child_process_is_described_in_one_line() -> None:
    traceback = "Traceback (most recent call last):\n  File x\nFileNotFoundError: no such file\n\n"
    assert child_failure(traceback, 1) == "FileNotFoundError: no such file"
    assert child_failure("", -9) == "killed by signal 9 (out of memory?)"
    assert child_failure("", -15) == "killed by signal 15"
    assert child_failure(" \n", 3) == "exit code 3"


# --- the error toolkit: one line, classified by type, one retry policy --------------------------


def raised(call: Callable[[], object]) -> BaseException:
    try:
        call()
    except BaseException as error:  # what the library really raises
        return error
    raise AssertionError("it did not fail")


def test_describe_names_the_drivers_error_in_one_line_without_a_password(tmp_path: Path) -> None:
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path}/no/such/folder/x.db"
    error = raised(lambda: sa.create_engine(url).connect())
    assert describe(error) == "OperationalError: unable to open database file"  # .orig, one line
    secret = raised(lambda: open("/no/such/postgresql://fxml:hunter2@db/x"))  # noqa: SIM115
    assert "hunter2" not in describe(secret) and "postgresql://fxml:***@db/x" in describe(secret)
    assert describe(KeyError()) == "KeyError"


def test_connection_loss_is_told_by_type_and_a_user_error_is_not_one() -> None:
    import requests

    refused = raised(lambda: requests.get("http://127.0.0.1:1/", timeout=5))
    assert connection_lost(refused) and not access_denied(refused)
    assert not connection_lost(raised(lambda: int("x")))

    def reported() -> None:  # a one-line error raised while handling a lost connection
        try:
            raise ConnectionResetError("reset")
        except ConnectionResetError:
            raise FxmlError("the job's own line") from None

    assert not connection_lost(raised(reported))


def test_retrying_waits_out_a_lost_connection_and_not_anything_else() -> None:
    attempts: list[int] = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionRefusedError("not yet")
        return "answered"

    assert retrying(flaky, seconds=10) == "answered" and len(attempts) == 3
    attempts.clear()

    def broken() -> None:
        attempts.append(1)
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError):
        retrying(broken, seconds=10)
    assert len(attempts) == 1


class _RefusingServer(BaseHTTPRequestHandler):
    """An HTTP tracking server behind an authenticating proxy that refuses the credentials."""

    def do_GET(self) -> None:
        self.send_response(401)
        self.send_header("Content-Length", "12")
        self.end_headers()
        self.wfile.write(b"unauthorized")

    do_POST = do_GET

    def log_message(self, *args: object) -> None:
        pass


def test_a_tracking_server_that_refuses_the_credentials_fails_at_once(workspace: Workspace) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RefusingServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        result = workspace.train(f"tracking.uri=http://fxml:hunter2@127.0.0.1:{server.server_port}",
                                 "tracking.retry_seconds=120")
        seconds = time.monotonic() - started
    finally:
        server.shutdown()
    assert_one_line_error(result, "MLflow tracking at http://fxml:***@127.0.0.1:", "refused access", "401")
    assert seconds < 20, f"took {seconds:.0f} s: the refusal was retried"
    assert "hunter2" not in result.stdout + result.stderr + result.logs


def test_a_full_disk_is_one_line_and_the_run_failed(workspace: Workspace,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The MLflow artifact folder's disk fills up while the run logs its predictions."""
    from fxml import job

    def full(frame, artifact_path: str) -> None:  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device", f"mlruns/artifacts/{artifact_path}")

    monkeypatch.setattr(job, "log_frame", full)
    result = workspace.train("model=ridge", "tracking.run_name=full-disk", "scorer.mpc=false")
    assert_one_line_error(result, "no space left on the device writing mlruns/artifacts/metrics/per_era.csv",
                          "the MLflow run, if any, is marked FAILED")
    run = next(r for r in workspace.runs() if r.info.run_name == "full-disk")
    assert run.info.status == "FAILED"
    assert "corr_mean" in run.data.metrics, "what was logged before the failure stays"
