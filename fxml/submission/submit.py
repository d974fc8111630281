"""One daily submission: live data -> predictions -> ranked, validated file -> upload -> MLflow run.

Order of work, so that nothing unsafe happens silently:

1. load the model (``models:/<name>@<alias>`` or ``runs:/<id>/model``) and ask numerapi for the
   current round; unless ``dry_run``, do nothing (one line, exit 0) when an earlier submission run
   already uploaded this round for this Numerai model (``force=true`` uploads again, and says which
   run it replaces), and refuse when the round is not open (one line, exit 1): rounds open Tuesday
   to Saturday at 12:00 UTC for an hour (Saturday's over the weekend). An open round is one line too;
2. with keys, check the Numerai model name exists (``get_models``) before any work;
3. in an MLflow run (experiment ``fxml-submissions``): the round's live file (downloaded once per
   round, then reused), predict, rank into (0, 1), validate (an invalid file is never written as a
   submission, never uploaded); write ``<output_dir>/<numerai_model>_round<round>.csv`` and log it
   as an artifact;
4. stop there on ``dry_run`` or without keys (the latter is an error: exit code 1); else upload
   and record the submission id. The run's tags link it to the model version and the round.

``round=<n>`` and ``live=<parquet>`` replace numerapi's current round and live download: with both
and ``dry_run=true`` no Numerai client is even created, keys set or not, so nothing touches the
network (an offline rehearsal, e.g. of a model trained on the synthetic data, whose features are
not in Numerai's live file). A dry run given only one of them is refused by the config check,
before any network call.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import polars as pl
from filelock import FileLock
from mlflow.entities import Run
from omegaconf import DictConfig

from fxml import __version__
from fxml.console import console
from fxml.data.layout import ERA, ID, LIVE, check_parquet
from fxml.errors import FxmlError, describe
from fxml.submission.credentials import (
    Credentials,
    NumeraiFailure,
    ask_numerai,
    build_client,
    find_credentials,
    missing_credentials_hint,
)
from fxml.submission.registry import LoadedModel, load_logged_model
from fxml.submission.rounds import SCHEDULE, current_round, round_info
from fxml.submission.validation import check_raw_predictions, ranked_submission, validate_submission
from fxml.tracking.mlflow_run import tracked_run, tracking_uri, use_experiment
from fxml.tracking.stores import bound_retries, store_client

log = logging.getLogger(__name__)
UPLOADED, DRY_RUN, NO_CREDENTIALS, INVALID, FAILED = (
    "uploaded", "dry_run", "no_credentials", "invalid", "upload_failed")
ALREADY_UPLOADED = "already_uploaded"  # a Submission's status only: no run is opened for it


@dataclass
class Submission:
    path: Path | None
    round: int
    status: str
    run_id: str
    submission_id: str | None = None


def numerai_model_id(client: Any, name: str, credentials: Credentials | None) -> str:
    try:
        models = dict(ask_numerai(client.get_models, credentials))
    except NumeraiFailure as failure:
        raise FxmlError(f"could not list your Numerai models ({failure}); "
                        "check the API keys and their scopes") from None
    if name in models:
        return str(models[name])
    by_lower = {key.lower(): value for key, value in models.items()}
    if name.lower() in by_lower:
        return str(by_lower[name.lower()])
    names = ", ".join(sorted(models)) or "none"
    raise FxmlError(f"numerai_model={name} is not a model of this Numerai account (its models: {names})")


def previous_upload(experiment: str, numerai_model: str, round_number: int) -> Run | None:
    """The latest submission run that uploaded for this Numerai model and round, if any."""
    client = store_client()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    query = (f"tags.numerai_model = '{numerai_model}' and tags.round = '{round_number}' "
             f"and tags.upload_status = '{UPLOADED}'")
    runs = client.search_runs([found.experiment_id], query, max_results=1,
                              order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


def live_file(client: Any, directory: Path, version: str, round_number: int,
              credentials: Credentials | None) -> Path:
    """This round's live file, ``<directory>/<version>/live_<round>.parquet``: downloaded once per
    round (a later submission of the round reuses it; a damaged one is fetched again)."""
    folder = directory / version
    path = folder / f"live_{round_number}.parquet"
    if path.is_file():
        try:
            check_parquet(path)
            return path
        except FxmlError:
            path.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    remote = f"{version}/{LIVE}"
    # downloaded beside it, then renamed: an interrupted download never passes for the round's file
    partial = path.with_name(f"{path.name}.part")
    log.info("data: downloading %s for round %d", remote, round_number)
    try:
        ask_numerai(lambda: client.download_dataset(remote, dest_path=str(partial), round_num=round_number),
                    credentials)
    except NumeraiFailure as failure:
        partial.unlink(missing_ok=True)
        raise FxmlError(f"could not download {remote} ({failure})") from None
    check_parquet(partial)
    partial.replace(path)
    return path


def read_live(path: Path, features: list[str]) -> pd.DataFrame:
    present = set(pl.read_parquet_schema(path))
    missing = [name for name in (ID, *features) if name not in present]
    if missing:
        raise FxmlError(f"{path.name} lacks {len(missing)} column(s) the model needs, e.g. {missing[0]} "
                        "(was the model trained on another data version, or on synthetic data?)")
    columns = [ID, *([ERA] if ERA in present else []), *features]
    frame = pl.read_parquet(path, columns=columns)
    if frame.height == 0:
        raise FxmlError(f"{path.name} has no rows: nothing to predict, so no submission file is written")
    frame = frame.with_columns(pl.col(ID).cast(pl.String), *([pl.col(ERA).cast(pl.String)]
                                                             if ERA in present else []))
    # a row without an id would reach the file as "nan" or "", and no check downstream sees it
    blank = frame.select((pl.col(ID).is_null() | (pl.col(ID).str.strip_chars() == "")).sum()).item()
    if blank:
        raise FxmlError(f"{path.name} has {blank} row(s) with an empty or missing id: "
                        "refused before any submission file is written")
    return frame.to_pandas()


def predict_live(loaded: LoadedModel, live: pd.DataFrame) -> np.ndarray:
    columns = [*loaded.features, *([ERA] if loaded.per_era and ERA in live else [])]
    try:
        predictions = loaded.pyfunc.predict(live[columns])
    except Exception as error:
        raise FxmlError(f"the model failed on the live data: {describe(error)}") from None
    return np.asarray(predictions, dtype=np.float64).reshape(-1)


def submit(cfg: DictConfig) -> Submission:
    numerai_model, dry_run, force = str(cfg.numerai_model), bool(cfg.dry_run), bool(cfg.force)
    credentials = find_credentials()
    uri = tracking_uri(cfg.tracking_uri, "tracking_uri")
    bound_retries(cfg.tracking_retry_seconds)
    mlflow.set_tracking_uri(uri)
    loaded = load_logged_model(str(cfg.model_uri))
    version = str(cfg.data_version or loaded.manifest.get("data_version") or "")
    if not version:
        raise FxmlError(f"{cfg.model_uri} records no data version: pass data_version=v5.x")
    # a dry run given the round and the live file is offline: no client, so nothing can call out
    offline = dry_run and cfg.round is not None and bool(cfg.live)
    client = None if offline else build_client(cfg.api, credentials)
    round_number = int(cfg.round) if cfg.round is not None else current_round(client, credentials)
    use_experiment(uri, cfg.experiment)
    # the check for an earlier upload and the upload are one step per round and Numerai model: a
    # second submit started at the same time waits here, then finds the first one's upload
    with upload_claim(Path(cfg.output_dir), numerai_model, round_number, dry_run):
        earlier = previous_upload(cfg.experiment, numerai_model, round_number)
        if earlier is not None and not dry_run and not force:
            # nothing to do is no failure: a daily cron job may run again within the round
            console.print(f"round {round_number} was already submitted for {numerai_model} by run "
                          f"{earlier.info.run_id}: nothing uploaded (force=true uploads again)",
                          highlight=False, soft_wrap=True)
            return Submission(None, round_number, ALREADY_UPLOADED, earlier.info.run_id)
        if client is not None:
            window, now = round_info(client, round_number, credentials), datetime.now(UTC)
            if not window.is_open(now) and not dry_run:
                raise FxmlError(f"{window.status_line(now)}: nothing uploaded ({SCHEDULE})")
            console.print(window.status_line(now), highlight=False, soft_wrap=True)
        model_id = numerai_model_id(client, numerai_model, credentials) \
            if credentials and not offline else None

        ref = loaded.ref
        registered = f"version {ref.version}, " if ref.version else ""
        console.print(f"model {ref.uri} ({registered}run {ref.run_id}), data {version}, "
                      f"round {round_number}, Numerai model {numerai_model}", highlight=False, soft_wrap=True)
        tags = {"fxml_version": __version__, "model_uri": ref.uri, "numerai_model": numerai_model,
                "round": str(round_number), "dry_run": str(dry_run).lower(), "data_version": version,
                "model_source_run_id": ref.run_id or "", "credentials": "found" if credentials else "none"}
        if ref.name:
            tags.update({"registered_model_name": ref.name, "registered_model_version": ref.version or "",
                         "registered_model_alias": ref.alias or ""})
        if earlier is not None:
            tags["replaces_run"] = earlier.info.run_id
        with tracked_run(uri, cfg.experiment, f"{numerai_model}-round{round_number}", tags) as run:
            path = _prepare_file(cfg, client, loaded, version, round_number, credentials)
            run_id = run.info.run_id
            if dry_run:
                mlflow.set_tag("upload_status", DRY_RUN)
                note = "" if earlier is None else (
                    f" (round {round_number} was uploaded before by run {earlier.info.run_id})")
                console.print(f"dry run: wrote and validated {path}; nothing uploaded to Numerai{note}",
                              highlight=False, soft_wrap=True)
                return Submission(path, round_number, DRY_RUN, run_id)
            if credentials is None or model_id is None or client is None:
                mlflow.set_tag("upload_status", NO_CREDENTIALS)
                raise FxmlError(f"{missing_credentials_hint()}; wrote and validated {path} but did not "
                                "upload it")
            try:
                submission_id = ask_numerai(
                    lambda: client.upload_predictions(file_path=str(path), model_id=model_id), credentials)
            except NumeraiFailure as failure:
                mlflow.set_tag("upload_status", FAILED)
                raise FxmlError(f"upload to Numerai failed ({failure}); {path} is valid, run again to "
                                "retry") from None
            mlflow.set_tags({"upload_status": UPLOADED, "submission_id": str(submission_id)})
            if ref.name and ref.version:
                store_client().set_model_version_tag(
                    ref.name, ref.version, "last_submission",
                    f"round {round_number} to {numerai_model} (run {run_id})")
        console.print(f"uploaded {path} to Numerai model {numerai_model} for round {round_number} "
                      f"(submission {submission_id}); MLflow run {run_id}", highlight=False, soft_wrap=True)
        return Submission(path, round_number, UPLOADED, run_id, str(submission_id))


@contextmanager
def upload_claim(folder: Path, numerai_model: str, round_number: int, dry_run: bool) -> Iterator[None]:
    """Hold the round's claim for ``numerai_model`` (a lock file beside the submissions) while the
    earlier upload is looked up and the file uploaded; a dry run uploads nothing and claims nothing."""
    if dry_run:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / f".{numerai_model}_round{round_number}.lock")):
        yield


def _prepare_file(cfg: DictConfig, client: Any, loaded: LoadedModel, version: str,
                  round_number: int, credentials: Credentials | None) -> Path:
    """Live data to a validated CSV on disk, logged to the active run; FxmlError if invalid."""
    if cfg.live:
        path = Path(cfg.live)
        check_parquet(path)
    else:
        path = live_file(client, Path(cfg.data_directory), version, round_number, credentials)
    mlflow.set_tag("live_file", str(path))
    live = read_live(path, loaded.features)
    mlflow.log_metric("live_rows", len(live))
    raw = predict_live(loaded, live)
    name = f"{cfg.numerai_model}_round{round_number}.csv"
    try:
        check_raw_predictions(raw)
        submission = ranked_submission(live[ID].to_numpy(), raw)
        validate_submission(submission, live[ID].to_numpy())
    except FxmlError as error:
        mlflow.set_tag("upload_status", INVALID)
        rejected = pd.DataFrame({ID: live[ID].to_numpy(), "raw_prediction": raw})
        _log_csv(rejected, f"rejected_{name}", "rejected")
        raise FxmlError(f"invalid predictions, nothing written or uploaded: {error}") from None
    mlflow.log_metrics({"raw_prediction_mean": float(raw.mean()), "raw_prediction_std": float(raw.std())})
    target = Path(cfg.output_dir) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    submission.to_csv(target, index=False)
    mlflow.log_artifact(str(target), artifact_path="submission")
    return target


def _log_csv(frame: pd.DataFrame, name: str, folder: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        frame.to_csv(path, index=False)
        mlflow.log_artifact(str(path), artifact_path=folder)
