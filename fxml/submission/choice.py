"""Which run a promotion takes, and why: a run named by id, a sweep's best trial, or the best run by
a metric within an experiment, a sweep, a time window and a tag filter. Only FINISHED runs that
logged a model qualify; the reason is printed with the choice."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import mlflow
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException

from fxml.errors import FxmlError

DEFAULT_METRIC = "corr_sharpe"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_AGE = re.compile(r"^(\d+)\s*([hdw])$")
_AGE_UNITS = {"h": "hours", "d": "days", "w": "weeks"}


@dataclass(frozen=True)
class RunSelection:
    """What ``python -m fxml.promote`` was asked to promote (see conf/promote.yaml)."""

    run_id: str | None = None
    sweep: str | None = None
    experiment: str = "fxml"
    metric: str | None = None
    mode: str = "max"
    since: str | None = None
    until: str | None = None
    filter: str | None = None


@dataclass(frozen=True)
class Choice:
    run: Run
    metric: str
    value: float | None
    reason: str


def logged_a_model(run: Run) -> bool:
    outputs = getattr(run, "outputs", None)
    return bool(outputs and outputs.model_outputs)


def promotable(run: Run, what: str) -> Run:
    """The run itself, if it finished and logged a model; otherwise one line saying why not."""
    if run.info.status != "FINISHED":
        raise FxmlError(f"{what} {run.info.run_id} is {run.info.status}, not FINISHED: only a finished "
                        "run is promoted")
    if not logged_a_model(run):
        raise FxmlError(f"{what} {run.info.run_id} logged no model (was it trained with "
                        "tracking.log_model=false?)")
    return run


def choose_run(client: mlflow.MlflowClient, selection: RunSelection) -> Choice:
    for key in ("run_id", "sweep"):
        if getattr(selection, key) is not None and not str(getattr(selection, key)).strip():
            raise FxmlError(f"{key}= is empty (an unset shell variable?): give a value, or leave "
                            f"{key} out")
    for key in ("since", "until"):  # a mistyped moment is reported before anything is looked up
        _moment(getattr(selection, key), key)
    if selection.run_id is not None:
        return _named_run(client, selection.run_id, selection.metric)
    if selection.sweep is not None:
        parent = sweep_parent(client, selection.sweep)
        if selection.metric is None:
            return _sweep_best(client, parent)
        return _ranked(client, selection, [parent.info.experiment_id],
                       f"of sweep {_sweep_label(parent)}",
                       f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    found = client.get_experiment_by_name(selection.experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise FxmlError(f"no experiment '{selection.experiment}' in {mlflow.get_tracking_uri()} "
                        f"(experiments: {', '.join(names) or 'none'})")
    return _ranked(client, selection, [found.experiment_id], f"in experiment '{selection.experiment}'")


def _named_run(client: mlflow.MlflowClient, run_id: str, metric: str | None) -> Choice:
    run_id = run_id.strip()
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise FxmlError(f"run_id={run_id}: no such run in {mlflow.get_tracking_uri()}") from None
    promotable(run, "run")
    metric = metric or DEFAULT_METRIC
    return Choice(run, metric, run.data.metrics.get(metric), "named by run_id")


def sweep_parent(client: mlflow.MlflowClient, sweep: str) -> Run:
    """A sweep's parent run, by its run id or its Optuna study name (the newest, if several)."""
    sweep = sweep.strip()
    if _RUN_ID.match(sweep):
        try:
            run = client.get_run(sweep)
        except MlflowException:
            raise FxmlError(f"sweep={sweep}: no such run in {mlflow.get_tracking_uri()}") from None
        if run.data.tags.get("fxml.role") != "sweep":
            raise FxmlError(f"sweep={sweep} is a run but not a sweep's parent run")
        return run
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    escaped = sweep.replace("'", "\\'")
    found = client.search_runs(experiments, f"tags.`fxml.study` = '{escaped}'",
                               order_by=["attributes.start_time DESC"]) if experiments else []
    if not found:
        raise FxmlError(f"sweep={sweep}: no sweep's parent run has that id or Optuna study name in "
                        f"{mlflow.get_tracking_uri()}")
    return found[0]


def _sweep_label(parent: Run) -> str:
    return parent.data.tags.get("fxml.study") or parent.info.run_id


def _sweep_best(client: mlflow.MlflowClient, parent: Run) -> Choice:
    tags, label = parent.data.tags, _sweep_label(parent)
    best_id = tags.get("best_run_id")
    if not best_id:
        raise FxmlError(f"sweep {label} has recorded no successful trial (parent run "
                        f"{parent.info.run_id} has no best_run_id)")
    try:
        run = client.get_run(best_id)
    except MlflowException:
        raise FxmlError(f"sweep {label}: its best trial's run {best_id} is gone") from None
    promotable(run, f"the best trial of sweep {label}, run")
    objective = tags.get("objective", "the objective")
    value = parent.data.metrics.get("best_value")
    shown = "" if value is None else f" = {value:.6g}"
    reason = f"best trial {tags.get('best_trial', '?')} of sweep {label} by {objective}{shown}"
    return Choice(run, objective, value, reason)


def _ranked(client: mlflow.MlflowClient, selection: RunSelection, experiments: list[str], scope: str,
            condition: str | None = None) -> Choice:
    metric = selection.metric or DEFAULT_METRIC
    since, until = _moment(selection.since, "since"), _moment(selection.until, "until")
    conditions = ["attributes.status = 'FINISHED'", *filter(None, [condition, selection.filter])]
    try:
        runs = _all_runs(client, experiments, " and ".join(conditions))
    except MlflowException as error:
        raise FxmlError(f"filter={selection.filter!r}: {str(error.message).splitlines()[0]}") from None
    window = [run for run in runs if logged_a_model(run)
              and (since is None or run.info.start_time >= since.timestamp() * 1000)
              and (until is None or run.info.start_time < until.timestamp() * 1000)]
    limits = "".join([f" started since {since:%Y-%m-%d %H:%M} UTC" if since else "",
                      f" started before {until:%Y-%m-%d %H:%M} UTC" if until else "",
                      f" matching {selection.filter}" if selection.filter else ""])
    if not window:
        raise FxmlError(f"no finished run with a model {scope}{limits}")
    scored = [run for run in window
              if metric in run.data.metrics and not math.isnan(run.data.metrics[metric])]
    if not scored:
        logged = sorted({name for run in window for name in run.data.metrics
                         if not name.startswith(("era_", "valid_"))})
        shown = ", ".join(logged[:12]) + (", ..." if len(logged) > 12 else "")
        raise FxmlError(f"metric={metric}: no finished run with a model {scope}{limits} logged it "
                        f"(they log: {shown})")
    sign = 1.0 if selection.mode == "max" else -1.0
    best = max(scored, key=lambda run: (sign * run.data.metrics[metric], run.info.start_time))
    value = best.data.metrics[metric]
    highest = "highest" if selection.mode == "max" else "lowest"
    reason = (f"{highest} {metric} = {value:.6g} of {len(scored)} finished run(s) with a model "
              f"{scope}{limits}")
    return Choice(best, metric, value, reason)


def _all_runs(client: mlflow.MlflowClient, experiments: list[str], condition: str) -> list[Run]:
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(experiments, condition, max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def _moment(text: str | None, key: str) -> datetime | None:
    """An ISO date or time (UTC unless it says otherwise), or an age such as 7d, 12h or 2w."""
    if text is None:
        return None
    text = str(text).strip()
    if match := _AGE.match(text):
        return datetime.now(UTC) - timedelta(**{_AGE_UNITS[match[2]]: int(match[1])})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise FxmlError(f"{key}={text}: write a date (2026-11-15), a time (2026-11-15T08:00) or an "
                        "age (12h, 7d, 2w)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
