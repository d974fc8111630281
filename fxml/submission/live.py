"""Numerai's resolved round scores of a submitted model, logged onto the MLflow runs behind them.

Numerai computes TC (and CORR, MMC, ...) for every submitted model from the whole tournament; the
API publishes each round's scores once resolved. For each round this module finds the fxml
submission run that uploaded that round's file for the Numerai model (the latest upload, the one
Numerai scored) and logs the round's scores on it, and on the training run of the model version it
came from, as metrics ``live_<score>`` with the round number as step. A round already logged on a
run is skipped, so re-running adds only new rounds. The churn between consecutive submitted files
(``live_churn``: 1 - Spearman over the shared ids) is logged on the later submission run.
"""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import Metric, Run

from fxml.data.layout import ID, PREDICTION
from fxml.errors import FxmlError, describe
from fxml.scoring.diagnostics import churn
from fxml.submission.credentials import Credentials

log = logging.getLogger(__name__)
UPLOADED = "uploaded"
# Numerai's score names (``displayName``) for the numbers fxml users compare; others keep their
# own name as ``live_<name>``.
CANONICAL = {"v2_corr20": "corr", "corr20": "corr", "canon_corr": "corr", "corr": "corr",
             "mmc": "mmc", "canon_mmc": "mmc", "tc": "tc", "canon_tc": "tc", "bmc": "bmc",
             "fnc_v4": "fnc", "fncv4": "fnc", "fnc": "fnc"}


def metric_name(display_name: str) -> str:
    """``live_`` plus Numerai's score name in snake case (``v2_corr20`` -> ``live_corr``)."""
    snake = re.sub(r"[^0-9a-z]+", "_", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", display_name).lower())
    snake = snake.strip("_")
    return f"live_{CANONICAL.get(snake, snake)}"


def resolved_round_scores(entries: list[dict[str, Any]]) -> dict[int, dict[str, float]]:
    """``submission_scores`` entries -> {round: {metric: value}}: resolved scores only, the latest
    day of each score in a round (Numerai's final value)."""
    best: dict[tuple[int, str], tuple[int, float]] = {}
    for entry in entries:
        value, number, name = entry.get("value"), entry.get("roundNumber"), entry.get("displayName")
        if entry.get("resolved") is False or value is None or number is None or not name:
            continue
        key = (int(number), metric_name(str(name)))
        day = int(entry.get("day") or 0)
        if key not in best or day >= best[key][0]:
            best[key] = (day, float(value))
    rounds: dict[int, dict[str, float]] = {}
    for (number, name), (_, value) in best.items():
        rounds.setdefault(number, {})[name] = value
    return rounds


def round_payouts(performances: list[dict[str, Any]]) -> dict[int, dict[str, float]]:
    """``round_model_performances_v2`` entries -> {round: {live_payout, live_at_risk,
    live_payout_factor}} for resolved rounds: NMR paid (sum of the settled payouts of the round's
    scores), the stake at risk and the round's payout factor, where the API gives them."""
    rounds: dict[int, dict[str, float]] = {}
    for performance in performances:
        if not performance.get("roundResolved") or performance.get("roundNumber") is None:
            continue
        values: dict[str, float] = {}
        settled = [s.get("payoutSettled") for s in performance.get("submissionScores") or []]
        settled = [float(v) for v in settled if v is not None]
        if settled:
            values["live_payout"] = sum(settled)
        for key, name in (("atRisk", "live_at_risk"), ("roundPayoutFactor", "live_payout_factor")):
            if performance.get(key) is not None:
                values[name] = float(performance[key])
        if values:
            rounds[int(performance["roundNumber"])] = values
    return rounds


def fetch_round_scores(client: Any, model_id: str,
                       credentials: Credentials | None) -> dict[int, dict[str, float]]:
    """Every resolved round of the model: its scores and, where available, its payout."""
    try:
        rounds = resolved_round_scores(client.submission_scores(model_id, resolved=True))
        payouts = (round_payouts(client.round_model_performances_v2(model_id))
                   if hasattr(client, "round_model_performances_v2") else {})
    except Exception as error:  # network and API errors arrive as many types
        text = describe(error)
        raise FxmlError("could not fetch the model's round scores from Numerai ("
                        f"{credentials.redact(text) if credentials else text})") from None
    for number, values in payouts.items():
        rounds.setdefault(number, {}).update(values)
    return rounds


def uploaded_runs(client: mlflow.MlflowClient, experiment: str, numerai_model: str) -> dict[int, Run]:
    """{round: the latest submission run that uploaded a file for the Numerai model}."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return {}
    runs = client.search_runs([found.experiment_id],
                              f"tags.numerai_model = '{numerai_model}' and tags.upload_status = "
                              f"'{UPLOADED}'", order_by=["attributes.start_time ASC"],
                              max_results=50000)
    return {int(run.data.tags["round"]): run for run in runs if run.data.tags.get("round", "").isdigit()}


@dataclass
class LiveUpdate:
    """What one ``live_scores`` call did."""

    rounds: list[int] = field(default_factory=list)  # resolved rounds Numerai returned
    logged: dict[int, list[str]] = field(default_factory=dict)  # round -> runs it was newly logged on
    without_run: list[int] = field(default_factory=list)  # resolved rounds fxml did not upload


def logged_steps(client: mlflow.MlflowClient, run_id: str, key: str) -> set[int]:
    return {metric.step for metric in client.get_metric_history(run_id, key)}


def new_metrics(client: mlflow.MlflowClient, run_id: str, number: int,
                values: dict[str, float]) -> list[Metric]:
    """The values of round ``number`` not yet logged on the run (idempotent re-runs)."""
    return [Metric(key, value, 0, number) for key, value in sorted(values.items())
            if number not in logged_steps(client, run_id, key)]


def submitted_predictions(client: mlflow.MlflowClient, run: Run) -> dict[str, float] | None:
    """The file a submission run uploaded, as {id: prediction} (None if it cannot be read)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            folder = Path(client.download_artifacts(run.info.run_id, "submission", tmp))
            frame = pd.read_csv(next(folder.glob("*.csv")))
        except (StopIteration, OSError, mlflow.exceptions.MlflowException):
            return None
    return dict(zip(frame[ID].astype(str), frame[PREDICTION].astype(float), strict=True))


def log_live_scores(client: mlflow.MlflowClient, experiment: str, numerai_model: str,
                    rounds: dict[int, dict[str, float]], source_runs: bool = True) -> LiveUpdate:
    """Log each resolved round's scores on the run that uploaded it (and its training run)."""
    runs = uploaded_runs(client, experiment, numerai_model)
    update = LiveUpdate(rounds=sorted(rounds))
    previous: tuple[int, Run] | None = None
    for number in sorted(set(rounds) | set(runs)):
        run = runs.get(number)
        if run is None:
            update.without_run.append(number)
            continue
        values = dict(rounds.get(number, {}))
        if previous is not None and number not in logged_steps(client, run.info.run_id, "live_churn"):
            value = churn(submitted_predictions(client, previous[1]), submitted_predictions(client, run))
            if value == value:  # not NaN
                values["live_churn"] = value
        previous = (number, run)
        targets = [run.info.run_id]
        source = run.data.tags.get("model_source_run_id")
        if source_runs and source:
            targets.append(source)
        for run_id in targets:
            metrics = new_metrics(client, run_id, number, values)
            if metrics:
                client.log_batch(run_id, metrics=metrics)
                update.logged.setdefault(number, []).append(run_id)
    update.without_run = [n for n in update.without_run if n in rounds]
    tag_model_versions(client, runs, rounds)
    return update


def tag_model_versions(client: mlflow.MlflowClient, runs: dict[int, Run],
                       rounds: dict[int, dict[str, float]]) -> None:
    """A registered version's tags say which resolved rounds its files scored and their mean
    live CORR, MMC and TC (the per-round values are metrics of its training run)."""
    by_version: dict[tuple[str, str], list[int]] = {}
    for number, run in runs.items():
        name = run.data.tags.get("registered_model_name")
        version = run.data.tags.get("registered_model_version")
        if name and version and number in rounds:
            by_version.setdefault((name, version), []).append(number)
    for (name, version), numbers in by_version.items():
        tags = {"live_rounds": ",".join(str(n) for n in sorted(numbers))}
        for metric in ("live_corr", "live_mmc", "live_tc"):
            values = [rounds[n][metric] for n in numbers if metric in rounds[n]]
            if values:
                tags[f"{metric}_mean"] = f"{sum(values) / len(values):.6f}"
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
