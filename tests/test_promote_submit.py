"""The weekly job from the command line: train -> promote -> submit (dry run, fake upload) -> export.

Real MLflow (a SQLite store in a scratch project), a fake numerapi client that records uploads, and
fake keys that must never show up in output, the MLflow store or any file the commands write.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from numerai_tools.submissions import validate_submission_numerai

from tests.conftest import Workspace, assert_one_line_error, compose_fxml_config
from tests.fakes import FAKE_MODELS, UPLOAD_SECONDS_ENV, ConstantModel, NaNModel, recorded_calls
from tests.helpers import KEYS, PUBLIC_ID, SECRET_KEY, fxml_command, served_release

FAKE_API = "api._target_=tests.fakes.FakeNumerAPI"
REGISTERED = "fxml-weekly"


@dataclass
class Project:
    """A user's project folder: trained runs, the fake Numerai data, a log of fake uploads."""

    ws: Workspace
    served: Path
    runs: dict[str, str]
    outputs: list[str] = field(default_factory=list)

    @property
    def calls_log(self) -> Path:
        return self.ws.root / "fake-numerai" / "calls.jsonl"

    def uploads(self, call: str = "upload_predictions") -> list[dict]:
        return [entry for entry in recorded_calls(self.calls_log) if entry["call"] == call]

    def command(self, module: str, *args: str, keys: bool = False, round_number: int = 1000,
                cwd: Path | None = None, in_process: bool = False):  # type: ignore[no-untyped-def]
        """The command as a user types it, or (``in_process``, for the lines of errors) its config
        and task in this process."""
        return fxml_command(self.ws, module, *args, keys=keys, round_number=round_number, cwd=cwd,
                            served=self.served, outputs=self.outputs, in_process=in_process)

    def submit(self, *args: str, **options) -> subprocess.CompletedProcess:
        return self.command("fxml.submit", f"model_uri=models:/{REGISTERED}@champion",
                            "numerai_model=fxml_test", FAKE_API, *args, **options)

    def submission_runs(self) -> list:
        return self.ws.runs("fxml-submissions")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    ws = Workspace(tmp_path_factory.mktemp("weekly"))
    runs = {}
    for name, overrides in (("lgbm", ("model.n_estimators=20",)), ("ridge", ("model=ridge",))):
        result = ws.train(*overrides, f"tracking.run_name={name}")
        assert result.returncode == 0, result.stderr
        runs[name] = next(r.info.run_id for r in ws.runs() if r.info.run_name == name)
    return Project(ws, served_release(ws), runs)


@pytest.fixture(scope="module")
def promoted(project: Project) -> subprocess.CompletedProcess:
    result = project.command("fxml.promote", f"run_id={project.runs['lgbm']}", f"name={REGISTERED}",
                             "alias=champion")
    assert result.returncode == 0, result.stderr
    return result


def live_ids(project: Project) -> pd.Series:
    return pd.read_parquet(project.served / "live.parquet", columns=["era"]).index.to_series()


def assert_valid_submission(project: Project, path: Path) -> pd.DataFrame:
    submission = pd.read_csv(path)
    assert list(submission.columns) == ["id", "prediction"]
    ids = live_ids(project)
    _, _, filtered, invalid = validate_submission_numerai(ids, submission.copy())
    assert invalid == [] and len(filtered) == len(ids) == len(submission)
    assert submission["prediction"].between(0, 1, inclusive="neither").all()
    return submission


# --- promotion ------------------------------------------------------------------------------------


def test_promote_by_run_id_registers_a_version_with_an_alias(project: Project, promoted) -> None:
    assert REGISTERED in promoted.stdout and "version 1" in promoted.stdout
    assert f"models:/{REGISTERED}@champion" in promoted.stdout
    client = project.ws.client()
    version = client.get_model_version_by_alias(REGISTERED, "champion")
    assert str(version.version) == "1" and version.run_id == project.runs["lgbm"]
    tags = version.tags
    run = client.get_run(project.runs["lgbm"])
    assert tags["source_run_id"] == project.runs["lgbm"]
    assert tags["data_version"] == "v5.3" and tags["feature_set"] == "small"
    assert tags["promoted_metric"] == "corr_sharpe"
    assert float(tags["promoted_metric_value"]) == pytest.approx(run.data.metrics["corr_sharpe"], rel=1e-5)
    assert tags["postprocess"] == "none"


def test_promote_best_run_by_metric_then_move_the_alias(project: Project) -> None:
    client = project.ws.client()
    metrics = {name: client.get_run(run_id).data.metrics["corr_mean"]
               for name, run_id in project.runs.items()}
    best, other = sorted(metrics, key=metrics.get, reverse=True)
    result = project.command("fxml.promote", "experiment=fxml", "metric=corr_mean", "name=fxml-best")
    assert result.returncode == 0, result.stderr
    assert project.runs[best] in result.stdout
    first = client.get_model_version_by_alias("fxml-best", "champion")
    assert first.run_id == project.runs[best]

    moved = project.command("fxml.promote", f"run_id={project.runs[other]}", "name=fxml-best")
    assert moved.returncode == 0, moved.stderr
    assert "moved from version 1 to version 2" in moved.stdout
    assert client.get_model_version_by_alias("fxml-best", "champion").run_id == project.runs[other]

    from fxml.submission.choice import RunSelection
    from fxml.submission.registry import promote

    again = promote(RunSelection(run_id=project.runs[other], metric="corr_mean"), "fxml-best",
                    "champion", project.ws.uri)
    assert again.reused and again.version == "2" and again.previous_version == "2"
    assert len(client.search_model_versions("name = 'fxml-best'")) == 2


def test_promote_rejects_a_metric_no_run_logged(project: Project) -> None:
    result = project.command("fxml.promote", "metric=no_such_metric", in_process=True)
    assert_one_line_error(result, "metric=no_such_metric", "corr_mean")


def test_promote_rejects_unknown_runs_experiments_and_settings(project: Project) -> None:
    from fxml.errors import FxmlError
    from fxml.submission.choice import RunSelection
    from fxml.submission.registry import promote

    with pytest.raises(FxmlError, match="no experiment 'nowhere'"):
        promote(RunSelection(experiment="nowhere"), None, "champion", project.ws.uri)
    with pytest.raises(FxmlError, match="run_id=0123456789abcdef: no such run"):
        promote(RunSelection(run_id="0123456789abcdef"), None, "champion", project.ws.uri)
    with pytest.raises(FxmlError, match="mode must be one of max, min"):
        compose_command("promote", "mode=median")
    with pytest.raises(FxmlError, match="alias must be a name other than"):
        compose_command("promote", "alias=v3")


def test_registered_model_predicts_a_live_frame(project: Project, promoted) -> None:
    mlflow.set_tracking_uri(project.ws.uri)
    model = mlflow.pyfunc.load_model(f"models:/{REGISTERED}@champion")
    live = pd.read_parquet(project.served / "live.parquet")
    predictions = np.asarray(model.predict(live))
    assert predictions.shape == (len(live),) and np.isfinite(predictions).all()
    assert predictions.std() > 0
    manifest = model.unwrap_python_model().manifest
    assert manifest["data_version"] == "v5.3" and manifest["target"] == "target"
    assert len(manifest["features"]) == len(set(manifest["features"])) > 0


# --- submission -----------------------------------------------------------------------------------


def test_dry_run_writes_a_valid_file_and_uploads_nothing(project: Project, promoted) -> None:
    result = project.submit("dry_run=true", round_number=1001)
    assert result.returncode == 0, result.stderr
    assert "dry run" in result.stdout and "nothing uploaded" in result.stdout
    path = project.ws.root / "submissions" / "fxml_test_round1001.csv"
    assert_valid_submission(project, path)
    assert (project.ws.root / "data" / "numerai" / "v5.3" / "live_1001.parquet").is_file()
    assert project.uploads() == []
    run = next(r for r in project.submission_runs() if r.data.tags.get("round") == "1001")
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["upload_status"] == "dry_run" and tags["dry_run"] == "true"
    assert tags["registered_model_name"] == REGISTERED and tags["registered_model_version"] == "1"
    assert tags["model_source_run_id"] == project.runs["lgbm"]
    artifacts = [a.path for a in project.ws.client().list_artifacts(run.info.run_id, "submission")]
    assert artifacts == ["submission/fxml_test_round1001.csv"]


def test_offline_dry_run_with_the_real_client(project: Project, promoted) -> None:
    """numerapi's own client, no network: the round and the live file are given."""
    result = project.command("fxml.submit", f"model_uri=models:/{REGISTERED}@champion",
                             "numerai_model=my_model", "dry_run=true", "round=77",
                             f"live={project.served / 'live.parquet'}")
    assert result.returncode == 0, result.stderr
    assert "dry run" in result.stdout
    assert_valid_submission(project, project.ws.root / "submissions" / "my_model_round77.csv")


@pytest.mark.parametrize("blank", [None, "", "  "])
def test_a_live_file_with_a_blank_id_is_refused_before_a_file_is_written(project: Project, promoted,
                                                                          tmp_path: Path, blank) -> None:
    live = pd.read_parquet(project.served / "live.parquet").reset_index()  # Numerai's: id as the index
    live["id"] = live["id"].astype(object)
    live.loc[3, "id"] = blank
    path = tmp_path / "live.parquet"
    live.to_parquet(path, index=False)
    result = project.command("fxml.submit", f"model_uri=models:/{REGISTERED}@champion",
                             "numerai_model=my_model", "dry_run=true", "round=79", f"live={path}",
                             in_process=True)
    assert_one_line_error(result, "live.parquet has 1 row(s) with an empty or missing id")
    assert not (project.ws.root / "submissions" / "my_model_round79.csv").exists()


def test_an_empty_live_file_is_one_line(project: Project, promoted, tmp_path: Path) -> None:
    live = pd.read_parquet(project.served / "live.parquet").reset_index()
    path = tmp_path / "live.parquet"
    live.iloc[:0].to_parquet(path, index=False)
    result = project.command("fxml.submit", f"model_uri=models:/{REGISTERED}@champion",
                             "numerai_model=my_model", "dry_run=true", "round=78", f"live={path}",
                             in_process=True)
    assert_one_line_error(result, "live.parquet has no rows: nothing to predict")
    assert not (project.ws.root / "submissions" / "my_model_round78.csv").exists()


@pytest.mark.parametrize("api", ["tests.fakes.NoNetworkNumerAPI", "numerapi.NumerAPI"])
def test_offline_dry_run_with_keys_never_creates_a_client(project: Project, promoted, api) -> None:
    """Keys set, round and live given, dry run: no client, so no network and no model lookup."""
    result = project.command("fxml.submit", f"model_uri=models:/{REGISTERED}@champion",
                             "numerai_model=not_even_on_numerai", f"api._target_={api}", "dry_run=true",
                             "round=78", f"live={project.served / 'live.parquet'}", keys=True,
                             in_process=True)
    assert result.returncode == 0, result.stderr
    assert "dry run" in result.stdout
    assert_valid_submission(project, project.ws.root / "submissions" / "not_even_on_numerai_round78.csv")
    run = next(r for r in project.submission_runs() if r.data.tags.get("round") == "78")
    assert run.data.tags["upload_status"] == "dry_run" and run.data.tags["credentials"] == "found"


def test_upload_once_per_round_unless_forced(project: Project, promoted) -> None:
    before = len(project.uploads())
    result = project.submit(keys=True, round_number=1002)
    assert result.returncode == 0, result.stderr
    assert "uploaded" in result.stdout
    uploads = project.uploads()[before:]
    assert len(uploads) == 1
    assert uploads[0]["model_id"] == FAKE_MODELS["fxml_test"] and uploads[0]["round"] == 1002
    uploaded = assert_valid_submission(project, Path(uploads[0]["file"]))
    written = pd.read_csv(project.ws.root / "submissions" / "fxml_test_round1002.csv")
    pd.testing.assert_frame_equal(uploaded, written)
    run = next(r for r in project.submission_runs()
               if r.data.tags.get("round") == "1002" and r.data.tags.get("upload_status") == "uploaded")
    assert run.data.tags["submission_id"].startswith("fake-upload_predictions-")
    version = project.ws.client().get_model_version(REGISTERED, "1")
    assert run.info.run_id in version.tags["last_submission"]

    again = project.submit(keys=True, round_number=1002)  # nothing to do: no failure for a cron job
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [f"round 1002 was already submitted for fxml_test by run "
                                         f"{run.info.run_id}: nothing uploaded (force=true uploads again)"]
    assert len(project.uploads()) == before + 1

    forced = project.submit("force=true", keys=True, round_number=1002)
    assert forced.returncode == 0, forced.stderr
    assert len(project.uploads()) == before + 2
    latest = project.submission_runs()[0]
    assert latest.data.tags["replaces_run"] == run.info.run_id


def test_missing_credentials_stop_before_the_upload(project: Project, promoted) -> None:
    before = len(project.uploads())
    result = project.submit(round_number=1003, in_process=True)
    assert_one_line_error(result, "NUMERAI_PUBLIC_ID", "NUMERAI_SECRET_KEY", "did not upload")
    assert len(project.uploads()) == before
    run = next(r for r in project.submission_runs() if r.data.tags.get("round") == "1003")
    assert run.info.status == "FAILED" and run.data.tags["upload_status"] == "no_credentials"


@pytest.mark.slow
def test_submits_started_together_upload_the_round_once(project: Project, promoted) -> None:
    """Three daily jobs racing for one round: one uploads, the others find its upload."""
    fake = {"FXML_FAKE_NUMERAI_LOG": str(project.calls_log), "FXML_FAKE_NUMERAI_ROUND": "1011",
            "FXML_FAKE_NUMERAI_DIR": str(project.served), UPLOAD_SECONDS_ENV: "3", **KEYS}
    command = [sys.executable, "-m", "fxml.submit", f"model_uri=models:/{REGISTERED}@champion",
               "numerai_model=fxml_test", FAKE_API]
    racing = [subprocess.Popen(command, cwd=project.ws.root, env=project.ws.env(**fake), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
    outputs = [process.communicate(timeout=300) for process in racing]
    assert [process.returncode for process in racing] == [0, 0, 0], [err for _, err in outputs]
    uploads = [call for call in project.uploads() if call.get("round") == 1011]
    assert len(uploads) == 1, uploads
    skipped = [out for out, _ in outputs if "round 1011 was already submitted for fxml_test" in out]
    assert len(skipped) == 2 and all(SECRET_KEY not in out + err for out, err in outputs)


def test_keys_from_a_dotenv_file(project: Project, promoted) -> None:
    folder = project.ws.root / "dotenv-project"
    folder.mkdir()
    (folder / ".env").write_text(f"# Numerai keys\nNUMERAI_PUBLIC_ID={PUBLIC_ID}\n"
                                 f"export NUMERAI_SECRET_KEY='{SECRET_KEY}'\n")
    before = len(project.uploads())
    result = project.submit(f"tracking_uri={project.ws.uri}", round_number=1004, cwd=folder)
    assert result.returncode == 0, result.stderr
    assert len(project.uploads()) == before + 1
    assert (folder / "submissions" / "fxml_test_round1004.csv").is_file()


@pytest.fixture(scope="module")
def broken_models(project: Project) -> dict[str, str]:
    """Models that predict NaN or a constant, logged as fxml pyfunc models."""
    from fxml.tracking.pyfunc import log_pyfunc_model

    mlflow.set_tracking_uri(project.ws.uri)
    features = mlflow.pyfunc.load_model(f"runs:/{project.runs['ridge']}/model") \
        .unwrap_python_model().feature_names
    experiment = project.ws.client().create_experiment("fxml-broken")
    uris = {}
    for name, model in (("nan", NaNModel()), ("constant", ConstantModel())):
        with mlflow.start_run(run_name=name, experiment_id=experiment), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # MLflow's hints about signatures
            log_pyfunc_model(model, features, {"data_version": "v5.2", "target": "target",
                                               "feature_set": "small"})
            uris[name] = f"runs:/{mlflow.active_run().info.run_id}/model"
    return uris


@pytest.mark.parametrize(("kind", "round_number", "fragment"), [
    ("nan", 1005, "NaN"), ("constant", 1006, "non-zero spread")])
def test_invalid_predictions_are_never_uploaded(project: Project, broken_models, kind, round_number,
                                                fragment) -> None:
    before = len(project.uploads())
    result = project.command("fxml.submit", f"model_uri={broken_models[kind]}",
                             "numerai_model=fxml_test", FAKE_API, keys=True, round_number=round_number,
                             in_process=True)
    assert_one_line_error(result, "invalid predictions", fragment)
    assert len(project.uploads()) == before
    assert not (project.ws.root / "submissions" / f"fxml_test_round{round_number}.csv").exists()
    run = next(r for r in project.submission_runs() if r.data.tags.get("round") == str(round_number))
    assert run.info.status == "FAILED" and run.data.tags["upload_status"] == "invalid"


def test_unknown_numerai_model_lists_names_not_ids(project: Project, monkeypatch) -> None:
    from fxml.errors import FxmlError
    from fxml.submission.submit import numerai_model_id
    from tests.fakes import FakeNumerAPI

    monkeypatch.setenv("FXML_FAKE_NUMERAI_DIR", str(project.served))
    client = FakeNumerAPI(public_id=PUBLIC_ID, secret_key=SECRET_KEY)
    assert numerai_model_id(client, "FXML_Test", None) == FAKE_MODELS["fxml_test"]
    with pytest.raises(FxmlError) as error:
        numerai_model_id(client, "not_mine", None)
    assert "not_mine" in str(error.value) and "fxml_other, fxml_test" in str(error.value)
    assert not any(model_id in str(error.value) for model_id in FAKE_MODELS.values())
    with pytest.raises(FxmlError, match="could not list your Numerai models"):
        numerai_model_id(FakeNumerAPI(), "fxml_test", None)


def test_submit_an_unknown_model_is_one_line(project: Project, promoted) -> None:
    result = project.command("fxml.submit", "model_uri=models:/no-such-model@champion",
                             "numerai_model=fxml_test", FAKE_API, round_number=1008, in_process=True)
    assert_one_line_error(result, "no registered model version at models:/no-such-model@champion")


def test_submit_config_checks() -> None:
    from fxml.errors import FxmlError
    from fxml.submission.credentials import build_client

    with pytest.raises(FxmlError, match="numerai_model"):
        compose_command("submit", "model_uri=models:/a@champion")
    with pytest.raises(FxmlError, match="model_uri must be a models:/"):
        compose_command("submit", "model_uri=my_model.pkl", "numerai_model=fxml_test")
    with pytest.raises(FxmlError, match="numerai_model must be a Numerai model name"):
        compose_command("submit", "model_uri=models:/a@champion", "numerai_model=a b")
    with pytest.raises(FxmlError, match="do not put Numerai keys in the config"):
        build_client({"_target_": "tests.fakes.FakeNumerAPI", "secret_key": "abc"}, None)
    with pytest.raises(FxmlError, match=r"^api.secret_key: do not put Numerai keys") as refused:
        compose_command("submit", "model_uri=models:/a@champion", "numerai_model=fxml_test",
                        "+api.secret_key=KEYSENTINEL42")
    assert "KEYSENTINEL42" not in str(refused.value)


def test_a_key_in_the_config_is_refused_even_on_an_offline_dry_run(project: Project, promoted) -> None:
    result = project.command("fxml.submit", f"model_uri=models:/{REGISTERED}@champion",
                             "numerai_model=my_model", "dry_run=true", "round=80",
                             f"live={project.served / 'live.parquet'}", "+api.secret_key=KEYSENTINEL42")
    assert_one_line_error(result, "api.secret_key: do not put Numerai keys in the config")
    assert "KEYSENTINEL42" not in result.stdout + result.stderr
    assert not (project.ws.root / "submissions" / "my_model_round80.csv").exists()


def compose_command(name: str, *overrides: str):  # type: ignore[no-untyped-def]
    """Compose a command's config as Hydra does and run its schema checks, in this process."""
    from fxml.config import register_schemas
    from fxml.submission import checked

    register_schemas()
    return checked(compose_fxml_config(list(overrides), name))


# --- hosted compute ---------------------------------------------------------------------------


FRESH_CHECK = r"""
import importlib.abc, pickle, sys
class NoFxml(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "fxml":
            raise ImportError(name)
sys.meta_path.insert(0, NoFxml())
import pandas as pd
live = pd.read_parquet(sys.argv[2])
benchmark = pd.read_parquet(sys.argv[3])
with open(sys.argv[1], "rb") as handle:
    predict = pickle.load(handle)
predict(live, benchmark).to_csv(sys.argv[4])
"""


def test_export_model_pickle_predicts_in_a_process_without_fxml(project: Project, promoted,
                                                                tmp_path: Path) -> None:
    result = project.command("fxml.export_model", f"model_uri=models:/{REGISTERED}@champion",
                             "file=hosted/model.pkl", FAKE_API, "upload=true",
                             "numerai_model=fxml_test", keys=True)
    assert result.returncode == 0, result.stderr
    assert "checked" in result.stdout and "lightgbm" in result.stdout
    pickle_path = project.ws.root / "hosted" / "model.pkl"
    uploads = project.uploads("model_upload")
    assert len(uploads) == 1 and uploads[0]["model_id"] == FAKE_MODELS["fxml_test"]

    script, out = tmp_path / "check.py", tmp_path / "predictions.csv"
    script.write_text(FRESH_CHECK)
    done = subprocess.run([sys.executable, "-I", str(script), str(pickle_path),
                           str(project.served / "live.parquet"),
                           str(project.served / "live_benchmark_models.parquet"), str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    submission = pd.read_csv(out)
    assert list(submission.columns) == ["id", "prediction"]
    ids = live_ids(project)
    validate_submission_numerai(ids, submission.copy())
    # the same ranking as the registered model's live predictions
    mlflow.set_tracking_uri(project.ws.uri)
    live = pd.read_parquet(project.served / "live.parquet")
    expected = pd.Series(np.asarray(mlflow.pyfunc.load_model(f"models:/{REGISTERED}@champion")
                                    .predict(live)), index=live.index).rank(pct=False)
    expected = (expected - 0.5) / len(expected)
    np.testing.assert_allclose(submission.set_index("id")["prediction"].loc[live.index], expected)


def test_export_model_without_keys_does_not_upload(project: Project, monkeypatch, tmp_path) -> None:
    from fxml.errors import FxmlError
    from fxml.export_model import _upload

    for name in KEYS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    before = len(project.uploads("model_upload"))
    settings = compose_command("export_model", f"model_uri=models:/{REGISTERED}@champion",
                               "upload=true", "numerai_model=fxml_test", FAKE_API)
    with pytest.raises(FxmlError, match="NUMERAI_PUBLIC_ID.*did not upload"):
        _upload(settings, tmp_path / "model.pkl")
    assert len(project.uploads("model_upload")) == before


# --- keys ---------------------------------------------------------------------------------------


def test_keys_are_never_printed_logged_or_written(project: Project, promoted) -> None:
    if not project.uploads():  # run alone: make one upload with keys first
        result = project.submit(keys=True, round_number=1010)
        assert result.returncode == 0, result.stderr
    for output in project.outputs:
        assert PUBLIC_ID not in output and SECRET_KEY not in output
    checked = 0
    for path in project.ws.root.rglob("*"):
        if not path.is_file() or path.name == ".env":
            continue
        content = path.read_bytes()
        assert PUBLIC_ID.encode() not in content and SECRET_KEY.encode() not in content, path
        checked += 1
    assert (project.ws.root / "mlruns" / "mlflow.db").is_file() and checked > 10
