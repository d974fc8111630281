"""Stand-ins for numerapi's client: the network is the one dependency tests never touch.

Point ``data.source.api._target_`` at one of these. ``FakeNumerAPI`` serves the files of a
synthetic release folder named by $FXML_FAKE_NUMERAI_DIR as every version in ``VERSIONS``.

For live scores it answers ``submission_scores`` and ``round_model_performances_v2`` with the
recorded-shape entries of the JSON file named by $FXML_FAKE_NUMERAI_SCORES (see
``recorded_round_scores``).

For submissions it also answers the current round ($FXML_FAKE_NUMERAI_ROUND, default 1000) and the
account's models (``FAKE_MODELS``, keys required), and records what would have been uploaded: each
``upload_predictions`` / ``model_upload`` call is appended as a JSON line to $FXML_FAKE_NUMERAI_LOG,
with a copy of the uploaded file beside it (fxml's commands run in a subprocess).

``list_rounds`` answers in numerapi 3.1's shape (``round_entry``): the round's submission window
($FXML_FAKE_NUMERAI_WINDOW, ``<openTime>/<closeStakingTime>`` in ISO; default: open since 10 minutes
ago for an hour) and its payout configurations ($FXML_FAKE_NUMERAI_MULTIPLIERS, ``name=multiplier``
pairs by numerapi's score names; default Numerai's 2024 ``correlation=0.5,meta_model_contribution=2``).
``get_current_round``, ``list_rounds`` and ``download_dataset`` are logged too, when the log is set.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from fxml.models.base import TabularModel
from fxml.models.params import ModelParams

VERSIONS = ("v5.0", "v5.1", "v5.2", "v5.3")
ROUND_ENV, LOG_ENV = "FXML_FAKE_NUMERAI_ROUND", "FXML_FAKE_NUMERAI_LOG"
SCORES_ENV = "FXML_FAKE_NUMERAI_SCORES"
UPLOAD_SECONDS_ENV = "FXML_FAKE_NUMERAI_UPLOAD_SECONDS"
WINDOW_ENV, MULTIPLIERS_ENV = "FXML_FAKE_NUMERAI_WINDOW", "FXML_FAKE_NUMERAI_MULTIPLIERS"
DEFAULT_MULTIPLIERS = "correlation=0.5,meta_model_contribution=2"
FAKE_MODELS = {"fxml_test": "6f0c1d2e-0000-4000-8000-00000000a001",
               "fxml_other": "6f0c1d2e-0000-4000-8000-00000000a002"}


def recorded_calls(log: Path) -> list[dict]:
    """The calls a FakeNumerAPI appended to ``log`` (empty if none)."""
    if not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def round_entry(number: int, opens: datetime, closes: datetime, multipliers: dict[str, float]) -> dict:
    """One ``list_rounds`` entry as numerapi 3.1 returns it (datetimes parsed), with a payout
    configuration per ``multipliers`` item and a score Numerai reports but does not pay on."""
    configs = [{"id": f"rsc-{number}-{i}", "scoreConfigId": f"sc-{name}", "roundNumberStart": 1000,
                "roundNumberEnd": None, "name": name, "version": "2", "displayName": name[:4],
                "totalScoreDays": 20, "returnsLagDays": 2, "dataDelayDays": 0, "universe": None,
                "isCanonScore": True, "isPayout": value != 0, "scoringStart": closes + timedelta(days=2),
                "scoringEnd": closes + timedelta(days=31), "minMultiplier": value, "maxMultiplier": value,
                "defaultMultiplier": value, "clipThreshold": 0.05, "stakeThreshold": None,
                "payoutFactor": None}
               for i, (name, value) in enumerate({**multipliers, "benchmark_model_contribution": 0}.items())]
    return {"id": f"round-{number}", "tournament": 8, "number": number, "target": "ender20",
            "closeTime": closes + timedelta(hours=24), "closeStakingTime": closes, "openTime": opens,
            "scoreTime": None, "resolveTime": closes + timedelta(days=33), "resolvedGeneral": False,
            "resolvedStaking": False, "payoutFactor": 1.0, "stakeThreshold": None,
            "dataDatestamp": int(f"{opens:%Y%m%d}"), "roundScoreConfigs": configs}


class FakeNumerAPI:
    def __init__(self, public_id: str | None = None, secret_key: str | None = None) -> None:
        self.served = Path(os.environ.get("FXML_FAKE_NUMERAI_DIR", "no-release-served"))
        self.downloads: list[str] = []
        # like numerapi, authenticated only with both keys; the keys themselves are not kept
        self.authenticated = bool(public_id and secret_key)

    def get_current_round(self, tournament: int | None = None) -> int:
        self._log("get_current_round")
        return _current_round()

    def list_rounds(self, number: int | None = None, target: str | None = None, status: str | None = None,
                    limit: int | None = None) -> list[dict]:
        self._log("list_rounds", number=number)
        current = _current_round()
        if number is not None and number != current:
            return []
        window = os.environ.get(WINDOW_ENV)
        if window:
            opens, closes = (datetime.fromisoformat(moment) for moment in window.split("/"))
        else:
            opens = datetime.now(UTC) - timedelta(minutes=10)
            closes = opens + timedelta(hours=1)
        pairs = (pair.split("=") for pair in os.environ.get(MULTIPLIERS_ENV, DEFAULT_MULTIPLIERS).split(","))
        return [round_entry(current, opens, closes, {name: float(value) for name, value in pairs})]

    def get_models(self, tournament: int | None = None) -> dict[str, str]:
        self._require_keys()
        return dict(FAKE_MODELS)

    def upload_predictions(self, file_path: str = "predictions.csv", model_id: str | None = None,
                           df=None, data_datestamp: int | None = None, timeout=None) -> str:
        self._require_keys()
        if model_id not in FAKE_MODELS.values():
            raise ValueError(f"model {model_id} not found")
        recorded = self._record("upload_predictions", file_path, model_id=model_id)
        # an upload that takes a while: submits racing for one round all reach it without a claim
        time.sleep(float(os.environ.get(UPLOAD_SECONDS_ENV, "0")))
        return recorded

    def model_upload(self, file_path: str, tournament: int | None = None, model_id: str | None = None,
                     data_version: str | None = None, docker_image: str | None = None) -> str:
        self._require_keys()
        if not file_path.endswith(".pkl"):
            raise ValueError("file_path needs to end with .pkl")
        return self._record("model_upload", file_path, model_id=model_id, data_version=data_version)

    def submission_scores(self, model_id: str, display_name: str | None = None,
                          version: str | None = None, day: int | None = None,
                          resolved: bool | None = None, last_n_rounds: int | None = None,
                          distinct_on_round: bool | None = None) -> list[dict]:
        entries = self._scores(model_id)["submission_scores"]
        return [dict(e, date=_parse(e["date"]), roundResolveTime=_parse(e["roundResolveTime"]))
                for e in entries if resolved is None or e["resolved"] == resolved]

    def round_model_performances_v2(self, model_id: str) -> list[dict]:
        return [dict(p, roundOpenTime=_parse(p["roundOpenTime"]))
                for p in self._scores(model_id)["performances"]]

    def _scores(self, model_id: str) -> dict:
        path = os.environ.get(SCORES_ENV)
        recorded = json.loads(Path(path).read_text()) if path else {}
        return recorded.get(model_id, {"submission_scores": [], "performances": []})

    def _require_keys(self) -> None:
        if not self.authenticated:
            raise ValueError("API keys required for this action.")

    def _record(self, call: str, file_path: str, **details) -> str:
        log = Path(os.environ[LOG_ENV])
        log.parent.mkdir(parents=True, exist_ok=True)
        number = len(recorded_calls(log)) + 1
        copy = log.parent / f"{number:03d}_{Path(file_path).name}"
        shutil.copyfile(file_path, copy)
        entry = {"call": call, "file": str(copy), "filename": Path(file_path).name,
                 "round": _current_round(), **details}
        with log.open("a") as handle:
            handle.write(json.dumps(entry) + "\n")
        return f"fake-{call}-{number}"

    def _log(self, call: str, **details) -> None:
        """A call that uploads nothing, logged where a test set the log."""
        if LOG_ENV in os.environ:
            log = Path(os.environ[LOG_ENV])
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("a") as handle:
                handle.write(json.dumps({"call": call, **details}) + "\n")

    def list_datasets(self, round_num: int | None = None) -> list[str]:
        files = sorted(p.name for p in self.served.iterdir() if not p.name.startswith("."))
        return ["v4.3/train_int8.parquet"] + [f"{v}/{name}" for v in VERSIONS for name in files]

    def download_dataset(self, filename: str, dest_path: str | None = None, round_num=None) -> str:
        version, name = filename.split("/", 1)
        if version not in VERSIONS or not (self.served / name).is_file():
            raise ValueError(f"dataset {filename} not found")
        self.downloads.append(filename)
        self._log("download_dataset", filename=filename, round=round_num)
        dest = Path(dest_path or filename)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.served / name, dest)
        return str(dest)


def _current_round() -> int:
    return int(os.environ.get(ROUND_ENV, "1000"))


def _parse(text: str | None):  # numerapi returns datetimes
    return None if text is None else datetime.fromisoformat(text)


def recorded_round_scores(rounds: dict[int, dict[str, float]], unresolved: tuple[int, ...] = ()) -> dict:
    """The fake's responses for one model, in numerapi's shapes: per round, one
    ``submission_scores`` entry per score and day (day 20 is the final value; an earlier day carries
    an intermediate one that must be ignored), and a ``round_model_performances_v2`` entry with the
    settled payout. ``unresolved`` rounds appear with ``resolved: False`` only."""
    scores, performances = [], []
    for number, values in sorted(rounds.items()):
        resolved = number not in unresolved
        for name, value in values.items():
            for day, shown in ((11, value / 2), (20, value)):
                scores.append({"roundId": f"r{number}", "submissionId": f"s{number}",
                               "roundNumber": number, "roundResolveTime": "2026-10-01T20:00:00+00:00",
                               "roundScoreTime": None, "roundCloseStakingTime": None,
                               "value": shown, "percentile": 0.5, "displayName": name,
                               "version": "1", "date": "2026-09-20T00:00:00+00:00", "day": day,
                               "resolveDate": None, "resolved": resolved})
        performances.append({"atRisk": 10.0, "payoutMultipliers": [], "roundPayoutFactor": 0.8,
                             "roundNumber": number, "roundOpenTime": "2026-09-01T13:00:00+00:00",
                             "roundResolveTime": None, "roundResolved": resolved,
                             "roundTarget": "ender20",
                             "submissionScores": [{"displayName": n, "payoutSettled": 0.01 * v,
                                                   "payoutPending": None, "value": v, "day": 20,
                                                   "date": None, "percentile": 0.5}
                                                  for n, v in values.items()]})
    return {"submission_scores": scores, "performances": performances}


class OfflineNumerAPI:
    """Every call fails the way requests does without a network; the round queries fail as
    numerapi's do: it logs the connection error, then fails on the empty answer."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def get_current_round(self, tournament: int | None = None) -> int:
        return self._query()

    def list_rounds(self, number: int | None = None, **filters) -> list[dict]:
        return self._query()

    def _query(self):
        logging.getLogger("numerapi.utils").error(
            "Error Connecting: HTTPSConnectionPool(host='api-tournament.numer.ai', port=443): Max retries "
            "exceeded with url: / (Caused by NameResolutionError(\"Failed to resolve "
            "'api-tournament.numer.ai'\"))")
        return {}["data"]

    def list_datasets(self, round_num: int | None = None) -> list[str]:
        raise ConnectionError("Failed to resolve 'api-tournament.numer.ai'")

    def download_dataset(self, filename: str, dest_path: str | None = None, round_num=None) -> str:
        raise ConnectionError("Failed to resolve 'api-tournament.numer.ai'")


# --- broken models, logged with fxml.tracking.pyfunc.log_pyfunc_model to test submission checks ---


class ConstantModel(TabularModel):
    """Predicts the same value for every row: a submission without spread."""

    params_class = ModelParams

    def fit(self, train, validation=None, on_step=None) -> ConstantModel:
        return self

    def predict_float32(self, features: np.ndarray) -> np.ndarray:
        return np.full(len(features), 0.5)

    def save_state(self, directory: Path) -> None:
        pass

    def load_state(self, directory: Path) -> None:
        pass


class NaNModel(ConstantModel):
    """Predicts NaN for every other row."""

    def predict_float32(self, features: np.ndarray) -> np.ndarray:
        values = np.linspace(0.0, 1.0, len(features))
        values[::2] = np.nan
        return values


class NoNetworkNumerAPI:
    """For commands that must stay offline: creating the client at all fails the command."""

    def __init__(self, *args, **kwargs) -> None:
        raise AssertionError("a Numerai client was created by a command that must stay offline")
